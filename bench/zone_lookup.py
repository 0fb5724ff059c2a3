"""Benchmark: locating yellow 2009-2010 trips in the taxi zones, in points per second.

    python bench/zone_lookup.py [--points 2000000]

The points are the real legacy pickups and dropoffs (tests/data/tlc/legacy: the 2009 and 2010
heads and the 997 rows of 2013-01), drawn again and again with up to 300 ft of jitter each, so
that they are spread as taxi trips are (dense in Manhattan, where the zones are small), with
their (0, 0) points kept. Each approach gets the same longitude/latitude arrays and returns a zone
per point; all must agree. Each runs in its own process (its peak RSS its own):

- pipeline: zone_shapes.ZoneIndex, a grid of 500 ft cells answering for the cells inside one
  zone, shapely's exact test for the points in cells a boundary crosses;
- strtree: the same projection, then one shapely STRtree query of every point (the textbook way);
- duckdb: DuckDB's spatial extension, ST_Transform and a spatial join (skipped when the
  extension cannot be loaded offline).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import CACHE, measure, run_child  # noqa: E402

FEET_PER_DEGREE_LAT = 364_000


def points(n: int) -> tuple[np.ndarray, np.ndarray]:
    import tlc_parquet

    lon, lat = [], []
    for table in tlc_parquet.legacy_files().values():
        for lon_name, lat_name in (("Start_Lon", "Start_Lat"), ("End_Lon", "End_Lat"), ("pickup_longitude", "pickup_latitude")):
            if lon_name in table.column_names:
                lon += table.column(lon_name).to_pylist()
                lat += table.column(lat_name).to_pylist()
    base_lon, base_lat = np.array(lon, float), np.array(lat, float)
    rng = np.random.default_rng(2009)
    pick = rng.integers(0, len(base_lon), n)
    jitter = 300 / FEET_PER_DEGREE_LAT
    keep_zero = base_lon[pick] == 0
    out_lon = base_lon[pick] + np.where(keep_zero, 0, rng.uniform(-jitter, jitter, n) * 1.32)  # a degree of longitude is shorter
    out_lat = base_lat[pick] + np.where(keep_zero, 0, rng.uniform(-jitter, jitter, n))
    return out_lon, out_lat


def shapes_table():
    from pipeline.zone_shapes import read_shapes

    return read_shapes(str(Path(__file__).resolve().parent.parent / "tests" / "data" / "tlc" / "zones" / "taxi_zones.zip"), "bench")


def run_pipeline(lon, lat, work: Path):
    import pyarrow.parquet as pq

    from pipeline.zone_shapes import ZoneIndex

    started = time.perf_counter()
    pq.write_table(shapes_table(), work / "shapes.parquet")
    index = ZoneIndex.from_parquet(str(work / "shapes.parquet"))
    built = time.perf_counter()
    zones = np.concatenate([index.locate(lon[i : i + 65536], lat[i : i + 65536]) for i in range(0, len(lon), 65536)])
    return zones, {"index": built - started, "locate": time.perf_counter() - built}


def run_strtree(lon, lat, work: Path):
    import pyproj
    import shapely

    table = shapes_table()
    ids, polygons = table.column("LocationID").to_numpy(), shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    tree = shapely.STRtree(polygons)
    to_feet = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:2263", always_xy=True)
    out = []
    for i in range(0, len(lon), 65536):
        x, y = to_feet.transform(lon[i : i + 65536], lat[i : i + 65536])
        zone = np.full(len(x), 265)
        bad = (lon[i : i + 65536] == 0) | (lat[i : i + 65536] == 0)
        point, hit = tree.query(shapely.points(x, y), predicate="intersects")
        order = np.lexsort((-ids[hit], point))  # per point, the lowest id last: it wins the assignment
        zone[point[order]] = ids[hit][order]
        zone[bad] = 264
        out.append(zone)
    return np.concatenate(out), {}


def run_duckdb(lon, lat, work: Path):
    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    try:
        from duckdb_extensions import import_extension

        import_extension("spatial")
    except ImportError:
        pass
    con.execute("LOAD spatial")
    con.register("shapes", shapes_table())
    con.register("pts", pa.table({"i": np.arange(len(lon)), "lon": lon, "lat": lat}))
    con.execute("CREATE TABLE zones AS SELECT LocationID AS id, ST_GeomFromWKB(geometry) AS geom FROM shapes")
    # An inner join, the points in no zone filled in afterwards: a LEFT spatial join loses some of
    # its unmatched rows (seen here with DuckDB 1.5.5, points in the East River).
    found = con.execute(
        """
        SELECT p.i, min(z.id) AS zone
        FROM (SELECT i, ST_Transform(ST_Point(lon, lat), 'EPSG:4326', 'EPSG:2263', always_xy := true) AS pt FROM pts) p
        JOIN zones z ON ST_Intersects(z.geom, p.pt)
        GROUP BY p.i
        """
    ).fetchnumpy()
    zones = np.full(len(lon), 265, np.int64)
    zones[found["i"]] = found["zone"]
    zones[(lon == 0) | (lat == 0)] = 264
    return zones, {}


APPROACHES = {"pipeline": run_pipeline, "strtree": run_strtree, "duckdb": run_duckdb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=2_000_000)
    parser.add_argument("--only", choices=list(APPROACHES), action="append", help="run only these (repeatable)")
    parser.add_argument("--child", choices=list(APPROACHES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    lon, lat = points(args.points)
    if args.child:
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as work:

            def located():
                zones, steps = APPROACHES[args.child](lon, lat, Path(work))
                np.save(CACHE / f"zones-{args.child}.npy", zones)
                return len(zones), steps

            return measure(located)

    print(f"{args.points:,} points from the real legacy trips, jittered up to 300 ft")
    results = {}
    for name in args.only or list(APPROACHES):
        try:
            results[name] = run_child(__file__, name, ["--points", str(args.points)])
        except SystemExit as e:
            print(f"{name}: not run ({str(e).strip().splitlines()[-1]})")
    answers = {name: np.load(CACHE / f"zones-{name}.npy") for name in results}
    mine = results.get("pipeline")
    print(f"{'approach':<10} {'wall s':>8} {'points/s':>12} {'peak RSS MB':>12}   agrees   vs pipeline (points/s)")
    for name, r in results.items():
        agrees = "yes" if "pipeline" not in answers or (answers[name] == answers["pipeline"]).all() else "NO"
        ratio = f"   pipeline does {r['seconds'] / mine['seconds']:.2f}x its points/s" if mine and name != "pipeline" else ""
        print(f"{name:<10} {r['seconds']:>8.2f} {args.points / r['seconds']:>12,.0f} {r['peak_mb']:>12.0f}   {agrees:<7}{ratio}")
        for step, seconds in r["steps"].items():
            print(f"  {step:<10} {seconds:>6.2f} s" + (f" {args.points / seconds:>12,.0f} points/s" if step == "locate" else ""))
    if any((answers[name] != answers.get("pipeline", answers[name])).any() for name in answers):
        raise SystemExit("the approaches disagree")


if __name__ == "__main__":
    sys.exit(main())
