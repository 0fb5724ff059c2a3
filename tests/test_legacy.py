"""Yellow 2009-2010: the TLC's legacy layouts, with coordinates where later months have zone ids,
land in the same schema as every other month, each point located in the TLC's own zone shapes.

The rows are real (tests/data/tlc/legacy), written with the TLC's legacy physical types
(tests/tlc_parquet.py); the zone shapes are the genuine shapefile. Zones are checked against
known places and, for every row, against an exact STRtree query of the shapes read here with
pyshp directly, not through the pipeline."""

from __future__ import annotations

import datetime
import functools
import hashlib
import io
import os
import zipfile

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyproj
import pytest
import shapefile
import shapely

from pipeline import IngestMonth, catalog
from pipeline.catalog import SERVICES, ConversionError, SchemaMismatch
from pipeline.convert import convert, convert_parquet
from pipeline.lake import lake_path, parquet_record, shapes_path
from pipeline.zone_shapes import ShapesError, ZoneIndex, read_shapes

import tlc_parquet
from conftest import configured
from mirror import month

ZIP = tlc_parquet.DATA / "zones" / "taxi_zones.zip"
MONTHS = [f"{m:02d}" for m in range(1, 13)]
# Today's codes for the old words, written out here (not read from the catalog).
VENDOR = {"CMT": 1, "VTS": 2, "DDS": None}
PAYMENT = {
    "cash": 2,
    "cas": 2,
    "csh": 2,
    "credit": 1,
    "cre": 1,
    "crd": 1,
    "no charge": 3,
    "noc": 3,
    "dispute": 4,
    "dis": 4,
    "unk": 5,
    "na": 5,
}


@functools.cache
def exact_query():
    """(lon, lat) arrays -> zone ids by an exact query of every point against the shapefile."""
    archive = zipfile.ZipFile(ZIP)
    part = {ext: io.BytesIO(archive.read(f"taxi_zones/taxi_zones.{ext}")) for ext in ("shp", "shx", "dbf")}
    reader = shapefile.Reader(**part)
    ids = np.array([record["OBJECTID"] for record in reader.records()])
    polygons = np.array([shapely.geometry.shape(s.__geo_interface__) for s in reader.shapes()])
    tree = shapely.STRtree(polygons)
    to_feet = pyproj.Transformer.from_crs(4326, 2263, always_xy=True)

    def zones(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        lon, lat = np.asarray(lon, float), np.asarray(lat, float)
        out = np.full(len(lon), 265)
        out[~np.isfinite(lon) | ~np.isfinite(lat) | (lon == 0) | (lat == 0) | (abs(lon) > 180) | (abs(lat) > 90)] = 264
        x, y = to_feet.transform(lon, lat)
        point, zone = tree.query(shapely.points(x, y), predicate="intersects")
        for p, z in zip(point, ids[zone]):
            if out[p] != 264:  # a point on the line between zones is in the lower id's
                out[p] = z if out[p] == 265 else min(out[p], z)
        return out

    return zones


def legacy_source(name: str) -> pa.Table:
    return tlc_parquet.legacy_files()[name]


def floats(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(float)


def test_yellow_2009_01_gets_zone_ids_and_todays_codes_in_the_schema_of_every_month(tlc, run, workspace):
    result = run(IngestMonth(service="yellow", month=month("2009-01")))

    assert not result.failures
    assert any(task.startswith("ZoneShapes") for task in result.started)
    source = legacy_source("yellow_tripdata_2009-01.parquet")
    lake = pq.read_table(lake_path(SERVICES["yellow"], month("2009-01")))
    assert lake.schema.remove_metadata() == SERVICES["yellow"].schema
    assert lake.num_rows == source.num_rows == 48
    got = lake.to_pylist()
    # The first row of January 2009: picked up in the Lower East Side, dropped in Brooklyn Heights.
    assert (got[0]["PULocationID"], got[0]["DOLocationID"]) == (148, 33)
    assert lake.column("PULocationID").to_pylist() == exact_query()(floats(source, "Start_Lon"), floats(source, "Start_Lat")).tolist()
    assert lake.column("DOLocationID").to_pylist() == exact_query()(floats(source, "End_Lon"), floats(source, "End_Lat")).tolist()
    assert 264 in lake.column("PULocationID").to_pylist()  # the (0, 0) rows of 2009-02 and 2009-08
    for row, old in zip(got, source.to_pylist()):
        assert row["VendorID"] == VENDOR[old["vendor_name"]]
        assert row["payment_type"] == PAYMENT[old["Payment_Type"].strip().lower()]
        assert row["tpep_pickup_datetime"] == datetime.datetime.fromisoformat(old["Trip_Pickup_DateTime"])
        assert row["tpep_dropoff_datetime"] == datetime.datetime.fromisoformat(old["Trip_Dropoff_DateTime"])
        assert row["store_and_fwd_flag"] == {None: None, 0.0: "N", 1.0: "Y"}[old["store_and_forward"]]
        assert (row["passenger_count"], row["trip_distance"], row["RatecodeID"]) == (old["Passenger_Count"], old["Trip_Distance"], None)
        assert (row["fare_amount"], row["extra"], row["mta_tax"], row["tip_amount"], row["tolls_amount"], row["total_amount"]) == (
            old["Fare_Amt"],
            old["surcharge"],
            old["mta_tax"],
            old["Tip_Amt"],
            old["Tolls_Amt"],
            old["Total_Amt"],
        )
        assert row["improvement_surcharge"] is None and row["airport_fee"] is None
    # The shapes are in the lake, recording the file they came from.
    record = parquet_record(shapes_path(catalog.ZONE_SHAPES))
    assert (record.rows, record.source_sha256) == (263, hashlib.sha256(ZIP.read_bytes()).hexdigest())
    with duckdb.connect(str(workspace / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM yellow_tripdata WHERE month = '2009-01'").fetchone()[0] == 48


def test_yellow_2010_layout_known_places_the_rate_code_as_text_and_the_stray_index_column(tlc, run):
    assert not run(IngestMonth(service="yellow", month=month("2010-01"))).failures

    source = legacy_source("yellow_tripdata_2010-01.parquet")
    lake = pq.read_table(lake_path(SERVICES["yellow"], month("2010-01")))
    assert lake.schema.remove_metadata() == SERVICES["yellow"].schema and lake.num_rows == source.num_rows
    pickups = lake.column("PULocationID").to_pylist()
    assert pickups == exact_query()(floats(source, "pickup_longitude"), floats(source, "pickup_latitude")).tolist()
    assert (
        lake.column("DOLocationID").to_pylist()
        == exact_query()(floats(source, "dropoff_longitude"), floats(source, "dropoff_latitude")).tolist()
    )
    assert pickups[0] == 141  # January 2010's first row: Lenox Hill West
    old = source.to_pylist()
    jfk = next(i for i, row in enumerate(old) if (row["pickup_longitude"], row["pickup_latitude"]) == (-73.78331, 40.648765))
    assert pickups[jfk] == 132
    zeros = [i for i, row in enumerate(old) if row["pickup_longitude"] == 0]
    assert len(zeros) >= 15 and all(pickups[i] == 264 for i in zeros)
    assert lake.column("RatecodeID").to_pylist() == [int(row["rate_code"]) if row["rate_code"].strip() else None for row in old]
    assert lake.column("payment_type").to_pylist() == [PAYMENT[row["payment_type"].strip().lower()] for row in old]
    flags = {"": None, "0": "N", "1": "Y", "N": "N", "Y": "Y"}
    assert lake.column("store_and_fwd_flag").to_pylist() == [flags[row["store_and_fwd_flag"]] for row in old]
    assert lake.column("VendorID").to_pylist() == [VENDOR[row["vendor_id"]] for row in old]


def test_the_grid_index_agrees_with_an_exact_query_at_every_kind_of_point(tmp_path):
    index = ZoneIndex.from_parquet(str(shapes_parquet(tmp_path)))
    rng = np.random.default_rng(7)
    # Points over the whole city and beyond, points on zone boundaries (the polygons' own
    # vertices, in degrees), the lookup's known places, and points with no usable coordinate.
    lon = rng.uniform(-74.3, -73.6, 200_000)
    lat = rng.uniform(40.45, 40.95, 200_000)
    archive = zipfile.ZipFile(ZIP)
    reader = shapefile.Reader(**{ext: io.BytesIO(archive.read(f"taxi_zones/taxi_zones.{ext}")) for ext in ("shp", "shx", "dbf")})
    vertices = np.array([xy for shape in reader.shapes()[::7] for xy in shape.points[::25]])
    vlon, vlat = pyproj.Transformer.from_crs(2263, 4326, always_xy=True).transform(vertices[:, 0], vertices[:, 1])
    known = ([-73.991957, -73.78331, -73.874374, 0.0, np.nan, -73.99, 200.0], [40.721567, 40.648765, 40.774048, 0.0, 40.7, np.nan, 40.7])
    lon, lat = np.concatenate([lon, vlon, known[0]]), np.concatenate([lat, vlat, known[1]])

    found = index.locate(lon, lat)

    assert found[-7:].tolist() == [148, 132, 138, 264, 264, 264, 264]
    assert (found == exact_query()(lon, lat)).all()
    assert {264, 265} <= set(found.tolist()) and len(set(found.tolist())) > 200


def shapes_parquet(tmp_path):
    path = tmp_path / "shapes.parquet"
    pq.write_table(read_shapes(str(ZIP), "test"), path)
    return path


def test_damaged_shapes_are_refused_and_neither_they_nor_the_month_are_kept(tlc, run, tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "trip-data").mkdir(parents=True)
    (mirror / "misc").mkdir()
    (mirror / "trip-data" / "yellow_tripdata_2009-01.parquet").write_bytes(tlc["trip-data/yellow_tripdata_2009-01.parquet"])
    damaged = bytearray(ZIP.read_bytes())
    damaged[300_000] ^= 0xFF  # inside the .shp member's compressed data
    (mirror / "misc" / "taxi_zones.zip").write_bytes(bytes(damaged))

    with configured({("source", "base_url"): mirror.as_uri()}):
        result = run(IngestMonth(service="yellow", month=month("2009-01")))

    error = result.failures["ZoneShapes"]
    assert isinstance(error, ShapesError)
    assert (
        str(error)
        == f"zone_shapes ({mirror.as_uri()}/misc/taxi_zones.zip): member taxi_zones/taxi_zones.shp is damaged (its CRC does not match)"
    )
    assert not os.path.exists(shapes_path(catalog.ZONE_SHAPES))
    assert not IngestMonth(service="yellow", month=month("2009-01")).complete()


def test_shapes_with_another_crs_or_zone_count_are_refused(tmp_path):
    wgs84 = pyproj.CRS.from_epsg(4326).to_wkt("WKT1_ESRI").encode()
    with pytest.raises(ShapesError, match=r"^here: the shapes are in WGS 84, not EPSG:2263$"):
        read_shapes(rezipped(tmp_path, replace={"prj": wgs84}), "here")
    with pytest.raises(ShapesError, match="the zip lacks taxi_zones.shx"):
        read_shapes(rezipped(tmp_path, drop="shx"), "here")


def rezipped(tmp_path, replace: dict[str, bytes] | None = None, drop: str = "") -> str:
    """The genuine zip again, with the members of the extensions in ``replace`` replaced and the one
    of extension ``drop`` left out."""
    replace = replace or {}
    out = tmp_path / f"{'-'.join(replace)}-without-{drop}.zip"
    with zipfile.ZipFile(ZIP) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            ext = name.rsplit(".", 1)[-1]
            if ext != drop:
                dst.writestr(name, replace.get(ext, src.read(name)))
    return str(out)


def test_an_unknown_word_for_a_code_is_refused_naming_column_row_and_value(tmp_path):
    source = legacy_source("yellow_tripdata_2009-01.parquet")
    words = source.column("Payment_Type").to_pylist()
    words[5] = "Bitcoin"
    table = source.set_column(source.schema.get_field_index("Payment_Type"), "Payment_Type", pa.array(words))
    pq.write_table(table, tmp_path / "in.parquet")
    zones = ZoneIndex.from_parquet(str(shapes_parquet(tmp_path)))

    with pytest.raises(ConversionError) as error:
        convert_parquet(
            str(tmp_path / "in.parquet"),
            ",".join(table.column_names),
            str(tmp_path / "out.parquet"),
            SERVICES["yellow"],
            "here",
            {},
            zones=zones,
        )

    assert str(error.value).startswith("here: column Payment_Type, data row 6: 'Bitcoin' is not a known payment_type (known: credit, ")


def test_the_legacy_layout_in_a_csv_file_is_refused_clearly(tmp_path):
    header, rows = tlc_parquet.legacy_rows("yellow_tripdata_2009-01.csv")
    path = tmp_path / "yellow_tripdata_2009-01.csv"
    path.write_text("\n".join(",".join(row) for row in [header, *rows]) + "\n")

    with pytest.raises(SchemaMismatch, match=r"^here: the legacy yellow layout is read from the TLC's Parquet files only"):
        convert(str(path), ",".join(header), str(tmp_path / "out.parquet"), SERVICES["yellow"], "here", {})
