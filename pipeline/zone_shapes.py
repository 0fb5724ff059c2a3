"""The taxi zone shapes (catalog.ZONE_SHAPES): source -> checked -> lake, and the index that
says which zone a longitude and latitude are in (what the legacy yellow months need).

ZoneShapes downloads the TLC's `misc/taxi_zones.zip`, checks it (every member's CRC, the
shapefile's four parts, the zone count, the CRS, each id once) and keeps it in the lake as
`zone_shapes/taxi_zones.parquet`: LocationID, zone, borough, and each zone's polygon as WKB in
the shapes' own CRS (EPSG:2263, feet), with the source's record in the footer like every lake
file.

ZoneIndex locates arrays of points: pyproj projects WGS84 degrees to the shapes' feet; a grid of
CELL_FEET cells over the zones answers at once for every cell that lies inside one zone, and
shapely's exact test runs only for the points in cells that a boundary crosses, against the zones
that cross that cell (bench/zone_lookup.py measures it against an STRtree query of every point).
"""

from __future__ import annotations

import ctypes
import io
import logging
import os
import posixpath
import tempfile
import zipfile

import luigi
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import catalog, download, redaction, settings
from pipeline.errors import PipelineError
from pipeline.lake import LakeTarget, footer, lake_target, shapes_path
from pipeline.scheduling import Scheduled

# shapely, pyproj and pyshp (`shapefile`) are imported inside the functions that use them, for
# their cost alone: only a legacy month needs them, and every command imports this module
# (through convert), where they would add about 60 ms to its start.

logger = logging.getLogger("pipeline.zone_shapes")

# The grid: cells of COARSE_FEET, each that a zone boundary crosses split in four, GRID_LEVELS
# times, down to CELL_FEET. Trips start and end in the streets, which are the zones' boundaries,
# so the fine cells must be small for most points to fall in a cell inside one zone; splitting
# only where a boundary runs keeps the build to about a second.
COARSE_FEET = 4000.0
GRID_LEVELS = 5
CELL_FEET = COARSE_FEET / 2**GRID_LEVELS  # 125 ft
PAIR_CHUNK = 16384
SCHEMA = pa.schema([("LocationID", pa.int64()), ("zone", pa.string()), ("borough", pa.string()), ("geometry", pa.binary())])


class ShapesError(PipelineError, ValueError):
    """The zone shapes are not what the catalog says they are; the message says what and where."""


def read_shapes(path: str, where: str) -> pa.Table:
    """The checked zones of the zip at ``path``, in SCHEMA."""
    import pyproj  # imported here for its cost (see the module's imports), as are the two below
    import shapefile
    import shapely

    shapes = catalog.ZONE_SHAPES
    try:
        archive = zipfile.ZipFile(path)
        damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as e:
        raise ShapesError(f"{where}: not a whole zip file ({e})") from None
    if damaged:
        raise ShapesError(f"{where}: member {damaged} is damaged (its CRC does not match)")
    stem = posixpath.splitext(shapes.shapefile)[0]
    members = {posixpath.basename(name): name for name in archive.namelist()}
    found = {ext: members.get(f"{stem}.{ext}") for ext in ("shp", "shx", "dbf", "prj")}
    lacking = [f"{stem}.{ext}" for ext, name in found.items() if name is None]
    if lacking:
        raise ShapesError(f"{where}: the zip lacks {', '.join(lacking)}; it has {', '.join(sorted(members))}")
    parts = {ext: name for ext, name in found.items() if name is not None}
    crs = pyproj.CRS.from_wkt(archive.read(parts["prj"]).decode("latin-1"))
    if not crs.equals(pyproj.CRS(shapes.crs)):
        raise ShapesError(f"{where}: the shapes are in {crs.name}, not {shapes.crs}")
    reader = shapefile.Reader(**{ext: io.BytesIO(archive.read(parts[ext])) for ext in ("shp", "shx", "dbf")})
    fields = [field.name for field in reader.fields[1:]]
    lacking = [name for name in (shapes.id_field, *shapes.fields) if name not in fields]
    if lacking:
        raise ShapesError(f"{where}: the shapes lack the field(s) {', '.join(lacking)}; they have {', '.join(fields)}")
    records = reader.records()
    ids = [record[shapes.id_field] for record in records]
    if len(records) != shapes.records or sorted(ids) != list(range(1, shapes.records + 1)):
        raise ShapesError(f"{where}: {len(records)} zones with {len(set(ids))} distinct {shapes.id_field}s; expected 1 to {shapes.records}")
    polygons = [shapely.geometry.shape(shape.__geo_interface__) for shape in reader.shapes()]
    bad = [ids[i] for i, polygon in enumerate(polygons) if polygon.geom_type not in ("Polygon", "MultiPolygon") or polygon.is_empty]
    if bad:
        raise ShapesError(f"{where}: zone(s) {bad[:10]} have no polygon")
    return pa.table(
        [ids, [r["zone"] for r in records], [r["borough"] for r in records], [shapely.to_wkb(polygon) for polygon in polygons]],
        schema=SCHEMA,
    )


class ZoneShapes(Scheduled, luigi.Task):
    """The TLC's taxi zone shapes, downloaded, checked, and kept in the lake."""

    def output(self) -> LakeTarget:
        return lake_target(shapes_path(catalog.ZONE_SHAPES))

    def on_failure(self, exception: BaseException) -> str:
        """luigi's explanation for luigid, scrubbed as DatasetTask's is."""
        return redaction.scrub(super().on_failure(exception))

    def run(self):
        url = f"{download.base_url()}/{catalog.ZONE_SHAPES.path}"
        where = f"{catalog.ZONE_SHAPES.name} ({redaction.redact(url)})"
        logger.info("%s: downloading", where)
        self.tell(f"downloading {redaction.redact(url)}")
        os.makedirs(settings.ingest().staging, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=settings.ingest().staging, prefix="shapes-") as tmp:
            raw = os.path.join(tmp, posixpath.basename(catalog.ZONE_SHAPES.path))
            source = download.fetch_file(url, raw, where)
            table = read_shapes(raw, where)
            record = {"rows": table.num_rows, "source_url": source.url, "source_sha256": source.sha256, "source_size": source.size}
            out = os.path.join(tmp, "shapes.parquet")
            pq.write_table(table.replace_schema_metadata(footer(record)), out)
            self.output().put(out)
        logger.info("%s: %d zones in the lake at %s", where, table.num_rows, self.output().path)
        self.tell(f"{table.num_rows} zones in the lake")


def _return_freed_heap() -> None:
    """Give the C library's freed heap back to the system. The index's build allocates and frees
    about 25 MB of numpy and GEOS scratch through malloc, which glibc keeps for reuse; the month's
    conversion after it allocates through Arrow's pool instead, so that memory would only add to
    the month's peak (bench/parquet_step.py --service yellow-2009). glibc's malloc_trim; nothing
    where the C library has none."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


class ZoneIndex:
    """Which zone (the lookup's LocationID) each of many (longitude, latitude) points is in."""

    def __init__(self, ids: np.ndarray, polygons: np.ndarray):
        import pyproj  # imported here for its cost (see the module's imports), as is shapely
        import shapely

        self._to_feet = pyproj.Transformer.from_crs("EPSG:4326", catalog.ZONE_SHAPES.crs, always_xy=True)
        self.ids, self.polygons = ids, polygons
        shapely.prepare(polygons)
        tree = shapely.STRtree(polygons)
        self.x0, self.y0, x1, y1 = shapely.total_bounds(polygons)
        span = 2**GRID_LEVELS  # fine cells to a coarse cell's side
        coarse_x, coarse_y = int((x1 - self.x0) // COARSE_FEET) + 1, int((y1 - self.y0) // COARSE_FEET) + 1  # coarse cells a side
        grid_x, grid_y = np.meshgrid(np.arange(coarse_x), np.arange(coarse_y))
        cx, cy = grid_x.ravel(), grid_y.ravel()
        self.nx, self.ny = coarse_x * span, coarse_y * span
        whole = np.zeros((self.ny, self.nx), np.int32)
        # Coarse cells first; a cell inside one zone answers for all its fine cells, a cell a
        # boundary crosses is split in four, down to CELL_FEET, where it lists the zones it
        # touches. A child can only touch the zones its parent touches, and the exact tests are
        # asked of the prepared polygons (an STRtree query with a predicate prepares the boxes).
        cell, zone = tree.query(
            shapely.box(
                self.x0 + cx * COARSE_FEET, self.y0 + cy * COARSE_FEET, self.x0 + (cx + 1) * COARSE_FEET, self.y0 + (cy + 1) * COARSE_FEET
            )
        )
        for level in range(GRID_LEVELS + 1):
            size, cells_span = COARSE_FEET / 2**level, span // 2**level
            hit = self._each_pair(shapely.intersects, zone, cx[cell], cy[cell], size)
            cell, zone = cell[hit], zone[hit]
            touching = np.bincount(cell, minlength=len(cx))
            alone = touching[cell] == 1
            inside = alone.copy()
            inside[alone] = self._each_pair(shapely.contains, zone[alone], cx[cell[alone]], cy[cell[alone]], size)
            rows = cy[cell[inside], None] * cells_span + np.arange(cells_span)
            columns = cx[cell[inside], None] * cells_span + np.arange(cells_span)
            whole[rows[:, :, None], columns[:, None, :]] = ids[zone[inside], None, None]
            if level == GRID_LEVELS:
                break
            crossed = touching > 0
            crossed[cell[inside]] = False
            rank = np.cumsum(crossed) - 1
            parents, keep = np.flatnonzero(crossed), crossed[cell]
            cx = np.concatenate([2 * cx[parents] + q // 2 for q in range(4)])
            cy = np.concatenate([2 * cy[parents] + q % 2 for q in range(4)])
            cell = np.concatenate([q * len(parents) + rank[cell[keep]] for q in range(4)])
            zone = np.tile(zone[keep], 4)
        edge = ~inside
        fine = (cy[cell[edge]] * self.nx + cx[cell[edge]]).astype(np.int64)
        order = np.lexsort((ids[zone[edge]], fine))  # by cell, then id: the lowest id wins a tie
        self.touch_cell, self.touch_zone = fine[order], zone[edge][order]
        self.whole = whole.ravel()
        self.count = np.bincount(self.touch_cell, minlength=self.nx * self.ny).astype(np.int32)
        self.first = (np.cumsum(self.count, dtype=np.int64) - self.count).astype(np.int32)
        _return_freed_heap()

    def _each_pair(self, predicate, zone: np.ndarray, cx: np.ndarray, cy: np.ndarray, size: float) -> np.ndarray:
        """predicate(polygon, cell) for each (zone, cell) pair, the cells' boxes made PAIR_CHUNK at
        a time (all of a level's at once would be the build's peak of memory)."""
        import shapely  # imported here for its cost (see the module's imports)

        out = np.empty(len(zone), bool)
        for i in range(0, len(zone), PAIR_CHUNK):
            x, y = self.x0 + cx[i : i + PAIR_CHUNK] * size, self.y0 + cy[i : i + PAIR_CHUNK] * size
            out[i : i + PAIR_CHUNK] = predicate(self.polygons[zone[i : i + PAIR_CHUNK]], shapely.box(x, y, x + size, y + size))
        return out

    @classmethod
    def from_parquet(cls, path: str) -> ZoneIndex:
        import shapely  # imported here for its cost (see the module's imports)

        table = pq.read_table(path)
        return cls(table.column("LocationID").to_numpy(), shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False)))

    def locate(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """The zone of each point, as int64: catalog.UNKNOWN_ZONE where there is no usable
        coordinate (NaN, 0, off the globe), catalog.OUTSIDE_ZONE where the point is in no zone. A
        point on the line between two zones is in the one with the lower id."""
        import shapely  # imported here for its cost (see the module's imports)

        usable = np.isfinite(lon) & np.isfinite(lat) & (lon != 0) & (lat != 0) & (np.abs(lon) <= 180) & (np.abs(lat) <= 90)
        out = np.full(len(lon), catalog.UNKNOWN_ZONE, np.int64)
        out[usable] = catalog.OUTSIDE_ZONE
        at = np.flatnonzero(usable)
        x, y = self._to_feet.transform(lon[at], lat[at])
        ix, iy = np.floor((x - self.x0) / CELL_FEET).astype(np.int64), np.floor((y - self.y0) / CELL_FEET).astype(np.int64)
        on_grid = (ix >= 0) & (ix < self.nx) & (iy >= 0) & (iy < self.ny)
        at, x, y, cell = at[on_grid], x[on_grid], y[on_grid], (iy * self.nx + ix)[on_grid]
        whole = self.whole[cell]
        out[at[whole > 0]] = whole[whole > 0]
        # The rest: each point against each zone its cell touches, in one vectorised test.
        edge = np.flatnonzero((whole == 0) & (self.count[cell] > 0))
        counts = self.count[cell[edge]]
        point = np.repeat(edge, counts)
        pair = np.repeat(self.first[cell[edge]] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        zone = self.touch_zone[pair]
        hit = shapely.intersects_xy(self.polygons[zone], x[point], y[point])
        point, zone = point[hit], zone[hit]
        first = np.unique(point, return_index=True)[1]  # a point's pairs are in id order
        out[at[point[first]]] = self.ids[zone[first]]
        return out
