"""The TLC's own Parquet files as the source ([source] kind = tlc), served over the real HTTP test
server: every month drifts in physical types and spellings, and all land in one schema per service."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import IngestMonth, IngestZones
from pipeline.catalog import SERVICES
from pipeline.convert import ConversionError, convert_parquet
from pipeline.lake import lake_path

import tlc_parquet
from conftest import configured
from mirror import data_rows, month


def lake_table(service: str, m: str | None):
    return pq.read_table(lake_path(SERVICES[service], month(m) if m else None))


def test_releases_and_tlc_months_land_in_one_schema_with_their_row_counts(workspace, http_server, run, mirror_files, tlc):
    with configured({("source", "kind"): "releases", ("source", "base_url"): f"{http_server}/releases"}):
        assert not run(IngestMonth(service="yellow", month=month("2021-01"))).failures
    months = ["2021-02", "2023-03", "2025-01"]

    result = run(*[IngestMonth(service="yellow", month=month(m)) for m in months])

    assert not result.failures
    expected = {
        "2021-01": data_rows(mirror_files["yellow/yellow_tripdata_2021-01.csv.gz"]),
        **{m: tlc_parquet.rows(tlc, f"yellow_tripdata_{m}.parquet") for m in months},
    }
    schemas = {m: pq.read_schema(lake_path(SERVICES["yellow"], month(m))).remove_metadata() for m in expected}
    assert all(schema == SERVICES["yellow"].schema for schema in schemas.values())
    assert {m: pq.ParquetFile(lake_path(SERVICES["yellow"], month(m))).metadata.num_rows for m in expected} == expected
    with duckdb.connect(str(workspace / "warehouse.duckdb"), read_only=True) as con:
        assert dict(con.execute("SELECT month, count(*) FROM yellow_tripdata GROUP BY 1").fetchall()) == expected


def test_drifting_types_and_spellings_keep_their_values(tlc, run):
    assert not run(*[IngestMonth(service="yellow", month=month(m)) for m in ("2021-02", "2023-03", "2025-01", "2020-10")]).failures

    feb, mar, jan25, oct20 = (lake_table("yellow", m) for m in ("2021-02", "2023-03", "2025-01", "2020-10"))
    # passenger_count DOUBLE (2021) and INT64 (2023) both become int64 with the same values.
    assert feb.column("passenger_count").to_pylist()[:3] == [1, 1, 1]
    assert mar.column("VendorID").type == SERVICES["yellow"].schema.field("VendorID").type
    # Airport_fee (2023+) is airport_fee; cbd_congestion_fee only exists from 2025.
    assert mar.column("airport_fee").to_pylist()[:2] == [1.25, 0.0]
    assert set(jan25.column("cbd_congestion_fee").to_pylist()) == {0.75}
    assert mar.column("cbd_congestion_fee").null_count == mar.num_rows
    # An all-null INT32 airport_fee is an all-null float64 column, like every other month's.
    assert oct20.column("airport_fee").null_count == oct20.num_rows
    # Empty integer codes at the end of the month stay nulls, not zeros.
    assert mar.column("VendorID").null_count == 500


def test_fhv_keeps_a_pickup_in_3019_and_its_mixed_case_names(tlc, run):
    assert not run(IngestMonth(service="fhv", month=month("2019-02"))).failures

    table = lake_table("fhv", "2019-02")
    assert table.schema == SERVICES["fhv"].schema.with_metadata(table.schema.metadata)
    assert max(table.column("dropoff_datetime").to_pylist()).year == 3019
    assert table.column("PULocationID").to_pylist()[0] == 264  # DOUBLE in the file, int64 here


def test_fhvhv_24_columns_and_green_share_the_csv_months_schema(tlc, workspace, http_server, run, mirror_files):
    assert not run(IngestMonth(service="fhvhv", month=month("2021-06")), IngestMonth(service="green", month=month("2024-01"))).failures
    with configured({("source", "kind"): "releases", ("source", "base_url"): f"{http_server}/releases"}):
        assert not run(IngestMonth(service="fhvhv", month=month("2019-02")), IngestMonth(service="green", month=month("2019-01"))).failures

    for service, parquet_month, csv_month in (("fhvhv", "2021-06", "2019-02"), ("green", "2024-01", "2019-01")):
        a, b = lake_table(service, parquet_month), lake_table(service, csv_month)
        assert a.schema.remove_metadata() == b.schema.remove_metadata() == SERVICES[service].schema
    hv = lake_table("fhvhv", "2021-06")
    assert hv.num_rows == data_rows(mirror_files["fhvhv/fhvhv_tripdata_2021-06.csv.gz"])
    assert hv.column("trip_miles").null_count == 0 and hv.column("hvfhs_license_num").to_pylist()[0] == "HV0003"
    assert hv.column("Affiliated_base_number").null_count == hv.num_rows  # a csv.gz-only column


def test_the_tlc_zone_lookup_keeps_its_2024_names(tlc, run):
    assert not run(IngestZones()).failures

    zones = lake_table("zones", None).to_pylist()
    assert zones[-2:] == [
        {"LocationID": 264, "Borough": "Unknown", "Zone": "N/A", "service_zone": "N/A"},
        {"LocationID": 265, "Borough": "N/A", "Zone": "Outside of NYC", "service_zone": "N/A"},
    ]


def test_a_lossy_cast_fails_naming_file_column_and_value(tlc, run):
    result = run(IngestMonth(service="yellow", month=month("2022-05")))

    message = str(result.failures["ToParquet"])
    assert isinstance(result.failures["ToParquet"], ConversionError)
    assert "yellow 2022-05 (" in message and "yellow_tripdata_2022-05.parquet" in message
    assert "column passenger_count, data row 2: value 1.5 is not a whole number that fits int64" in message
    assert not IngestMonth(service="yellow", month=month("2022-05")).complete()


def test_a_truncated_parquet_file_is_not_taken(tlc, http_server, run):
    # The broken mirror holds the first 60% of a real month, served with its full length.
    with configured({("source", "base_url"): f"{http_server}/broken"}):
        cut = run(IngestMonth(service="yellow", month=month("2021-02")))

    message = str(cut.failures["Download"])
    assert message.startswith("yellow 2021-02 (") and "yellow_tripdata_2021-02.parquet): truncated or corrupt Parquet" in message
    assert not IngestMonth(service="yellow", month=month("2021-02")).complete()


@pytest.mark.parametrize(
    "column,values,type_,says",
    [
        ("tpep_pickup_datetime", [1_609_459_200_000_000_500], pa.timestamp("ns"), "timestamp[ns] into timestamp[us]"),
        ("VendorID", [2**63 + 5], pa.uint64(), "uint64 into int64"),
    ],
)
def test_a_cast_that_would_lose_information_is_refused(tmp_path, column, values, type_, says):
    src, dst = tmp_path / "month.parquet", tmp_path / "out.parquet"
    # A whole yellow file (every column, nulls), with the tested column in the tested type.
    table = {field.name: pa.nulls(1, field.type) for field in SERVICES["yellow"].schema}
    pq.write_table(pa.table({**table, column: pa.array(values, type_)}), src)
    header = ",".join(pq.read_schema(src).names)

    with pytest.raises(ConversionError) as error:
        convert_parquet(str(src), header, str(dst), SERVICES["yellow"], "yellow 2021-01 (month.parquet)", {})

    assert str(error.value).startswith(f"yellow 2021-01 (month.parquet): column {column}, data rows 1-1: cannot make {says}")


def test_text_columns_keep_every_value_whatever_the_file_stores_them_as(tmp_path):
    """Text travels from the file to the writer as dictionaries (convert.TEXT): each of the
    file's row groups holds its own dictionary, a month may store a text column as integers,
    and the lake file reads back as the catalog's plain strings, value for value."""
    src, dst = tmp_path / "month.parquet", tmp_path / "out.parquet"
    svc = SERVICES["fhvhv"]
    flags = ["N", None, "N", ""] * 3 + ["Y", "N", "Y", " "] * 3  # the second half: another dictionary
    table = {field.name: pa.nulls(len(flags), field.type) for field in svc.schema}
    table["shared_request_flag"] = pa.array(flags)
    table["hvfhs_license_num"] = pa.array(range(len(flags)))  # text the file stores as integers
    pq.write_table(pa.table(table), src, row_group_size=len(flags) // 2)
    assert pq.ParquetFile(src).num_row_groups == 2

    rows = convert_parquet(str(src), ",".join(pq.read_schema(src).names), str(dst), svc, "fhvhv 2021-01 (month.parquet)", {})

    written = pq.read_table(dst)
    assert rows == len(flags) and written.schema.remove_metadata() == svc.schema
    assert written["shared_request_flag"].to_pylist() == flags
    assert written["hvfhs_license_num"].to_pylist() == [str(n) for n in range(len(flags))]
    assert written["access_a_ride_flag"].null_count == len(flags)
