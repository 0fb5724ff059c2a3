"""Every value of every row arrives, in the lake file, the DuckDB view and the Postgres table,
checked against the source file as an independent reader sees it (Python's csv module, or
pyarrow on the original Parquet file, cast by the catalog's rules), never against another
output of the pipeline. And the recorded provenance is that of the file as served."""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import math

import duckdb
import pyarrow.parquet as pq
import pytest

from pipeline import Download, IngestMonth, IngestZones
from pipeline.catalog import FLOAT, INT, SERVICES, STRING, TIMESTAMP
from pipeline.lake import lake_path

from conftest import configured, set_source
from mirror import DATA, file_mirror, month


def as_catalog(type_, value):
    """A source value as the catalog's type says it must arrive (None for an empty field)."""
    if value is None or value == "":
        return None
    if type_ == INT:
        number = float(value)
        assert number == math.trunc(number), value  # the pipeline refuses fractions; the samples have none
        return int(number)
    if type_ == FLOAT:
        return float(value)
    if type_ == TIMESTAMP:
        return value if isinstance(value, datetime.datetime) else datetime.datetime.fromisoformat(value)
    assert type_ == STRING
    return str(value)


def truth_of_csv(service: str, data: bytes) -> list[tuple]:
    """The rows of a csv file, read with the csv module, in the catalog's column order."""
    svc = SERVICES[service]
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    by_key = {c.name.lower(): c for c in svc.columns}
    named = [by_key[name.strip().lower()] for name in next(reader)]
    rows = []
    for fields in reader:
        if fields:
            values = {c.name: as_catalog(c.type, text) for c, text in zip(named, fields)}
            rows.append(tuple(values.get(c.name) for c in svc.columns))
    return rows


def truth_of_parquet(service: str, path) -> list[tuple]:
    """The rows of a source Parquet file, read with pyarrow as it is, in the catalog's order."""
    svc = SERVICES[service]
    table = pq.read_table(path)
    by_key = {name.lower(): name for name in table.column_names}
    columns = [
        table.column(by_key[c.name.lower()]).to_pylist() if c.name.lower() in by_key else [None] * table.num_rows for c in svc.columns
    ]
    return [tuple(as_catalog(c.type, v) for c, v in zip(svc.columns, row)) for row in zip(*columns)]


def lake_rows(service: str, m: str | None) -> list[tuple]:
    svc = SERVICES[service]
    table = pq.read_table(lake_path(svc, month(m) if m else None))
    return list(zip(*(table.column(c.name).to_pylist() for c in svc.columns)))


def duckdb_rows(workspace, service: str, m: str | None) -> list[tuple]:
    svc = SERVICES[service]
    names = ", ".join(f'"{c.name}"' for c in svc.columns)
    where, params = ("WHERE month = ?", [m]) if m else ("", [])
    with duckdb.connect(str(workspace / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(f'SELECT {names} FROM "{svc.table}" {where}', params).fetchall()


def postgres_rows(pg, service: str, m: str | None) -> list[tuple]:
    svc = SERVICES[service]
    names = ", ".join(f'"{c.name}"' for c in svc.columns)
    where, params = ("WHERE source_month = %s", [m + "-01"]) if m else ("", [])
    return pg.query(f'SELECT {names} FROM "{pg.schema}"."{svc.table}" {where}', *params)


def assert_same_rows(got: list[tuple], truth: list[tuple], where: str, ordered: bool = True) -> None:
    if not ordered:  # a table has no order of its own
        got, truth = sorted(got, key=repr), sorted(truth, key=repr)
    assert len(got) == len(truth), where
    for i, (row, want) in enumerate(zip(got, truth)):
        assert row == want, f"{where}, row {i + 1}: {row} != {want}"


CSV_MONTHS = [("yellow", "2021-01"), ("green", "2019-10"), ("fhv", "2019-02"), ("fhvhv", "2021-06"), ("zones", None)]


@pytest.mark.parametrize("service,m", CSV_MONTHS, ids=[s for s, _ in CSV_MONTHS])
def test_every_value_of_a_csv_month_arrives_in_the_lake_duckdb_and_postgres(workspace, pg, run, mirror_files, service, m):
    source = mirror_files["misc/taxi_zone_lookup.csv" if m is None else f"{service}/{service}_tripdata_{m}.csv.gz"]
    with configured({("ingest", "sinks"): "duckdb,postgres"}):
        assert not run(IngestZones() if m is None else IngestMonth(service=service, month=month(m))).failures
    truth = truth_of_csv(service, source)

    assert_same_rows(lake_rows(service, m), truth, "lake file")
    assert_same_rows(duckdb_rows(workspace, service, m), truth, "DuckDB view")
    assert_same_rows(postgres_rows(pg, service, m), truth, "Postgres table", ordered=False)


def test_every_value_of_a_genuine_tlc_parquet_month_arrives_in_the_lake_duckdb_and_postgres(workspace, pg, run):
    genuine = DATA / "parquet" / "green_tripdata_2020-04.parquet"
    base = file_mirror(workspace, f"trip-data/{genuine.name}", genuine.read_bytes())
    with configured({("ingest", "sinks"): "duckdb,postgres", ("source", "kind"): "tlc", ("source", "base_url"): base}):
        assert not run(IngestMonth(service="green", month=month("2020-04"))).failures
    truth = truth_of_parquet("green", genuine)

    assert len(truth) == 35644  # the TLC's own count for the file
    assert_same_rows(lake_rows("green", "2020-04"), truth, "lake file")
    assert_same_rows(duckdb_rows(workspace, "green", "2020-04"), truth, "DuckDB view")
    assert_same_rows(postgres_rows(pg, "green", "2020-04"), truth, "Postgres table", ordered=False)


def test_the_recorded_sha256_and_size_are_those_of_the_file_as_served(workspace, run, mirror, http_server):
    set_source(f"{http_server}/releases")
    assert not run(IngestMonth(service="yellow", month=month("2021-01"))).failures
    served = (mirror / "releases" / "yellow" / "yellow_tripdata_2021-01.csv.gz").read_bytes()

    with Download(service="yellow", month=month("2021-01")).output()["meta"].open() as f:
        record = json.load(f)
    lake = SERVICES["yellow"]
    footer = {k.decode(): v.decode() for k, v in pq.read_schema(lake_path(lake, month("2021-01"))).metadata.items()}

    assert record["sha256"] == hashlib.sha256(served).hexdigest() and record["size"] == len(served)
    assert footer["tlc.source_sha256"] == record["sha256"] and footer["tlc.source_size"] == str(len(served))
    assert footer["tlc.source_url"] == f"{http_server}/releases/yellow/yellow_tripdata_2021-01.csv.gz"


def test_a_month_written_in_many_row_groups_keeps_every_value(workspace, run, mirror_files):
    # Small groups, so that the flush every real month takes (256k rows a group) runs here too.
    with configured({("parquet", "row_group_rows"): "1000"}):
        assert not run(IngestMonth(service="yellow", month=month("2021-01"))).failures

    groups = pq.ParquetFile(lake_path(SERVICES["yellow"], month("2021-01"))).metadata.num_row_groups
    assert groups >= 22792 // 2000
    assert_same_rows(
        lake_rows("yellow", "2021-01"), truth_of_csv("yellow", mirror_files["yellow/yellow_tripdata_2021-01.csv.gz"]), "lake file"
    )


TLC_MONTHS = [
    ("yellow", "2021-02"),
    ("yellow", "2020-10"),
    ("yellow", "2023-03"),
    ("yellow", "2025-01"),
    ("green", "2024-01"),
    ("fhv", "2019-02"),
    ("fhvhv", "2021-06"),
]


@pytest.mark.parametrize("service,m", TLC_MONTHS, ids=[f"{s}-{m}" for s, m in TLC_MONTHS])
def test_every_value_of_each_eras_tlc_parquet_month_arrives_in_the_lake_duckdb_and_postgres(
    workspace, pg, run, mirror, http_server, service, m
):
    # Each era's physical types and spellings (tests/tlc_parquet.py), served as the TLC serves them.
    with configured({("ingest", "sinks"): "duckdb,postgres", ("source", "kind"): "tlc", ("source", "base_url"): f"{http_server}/tlc"}):
        assert not run(IngestMonth(service=service, month=month(m))).failures
    truth = truth_of_parquet(service, mirror / "tlc" / "trip-data" / f"{service}_tripdata_{m}.parquet")

    assert_same_rows(lake_rows(service, m), truth, "lake file")
    assert_same_rows(duckdb_rows(workspace, service, m), truth, "DuckDB view")
    assert_same_rows(postgres_rows(pg, service, m), truth, "Postgres table", ordered=False)


def test_every_value_of_the_tlc_zone_lookup_arrives(workspace, pg, run, mirror, http_server):
    with configured({("ingest", "sinks"): "duckdb,postgres", ("source", "kind"): "tlc", ("source", "base_url"): f"{http_server}/tlc"}):
        assert not run(IngestZones()).failures
    truth = truth_of_csv("zones", (mirror / "tlc" / "misc" / "taxi+_zone_lookup.csv").read_bytes())

    assert_same_rows(lake_rows("zones", None), truth, "lake file")
    assert_same_rows(duckdb_rows(workspace, "zones", None), truth, "DuckDB view")
    assert_same_rows(postgres_rows(pg, "zones", None), truth, "Postgres table", ordered=False)
