"""Where a month is marked done: one marker shape (pipeline/targets/marker.py) in DuckDB, Postgres
and BigQuery, with the same values, and a marker table of an earlier version taken over with the
columns it lacks, its rows kept."""

from __future__ import annotations

import datetime
import json

import duckdb

from pipeline import Download, IngestMonth
from pipeline.targets.marker import MARKER_COLUMNS
from pipeline.warehouses.bigquery import client

from conftest import bigquery_dataset, configured
from mirror import data_rows, month

SHAPE = [name for name, _ in MARKER_COLUMNS]
GREEN = "green/green_tripdata_2019-01.csv.gz"


def download_record() -> dict:
    with Download(service="green", month=month("2019-01")).output()["meta"].open() as f:
        return json.load(f)


def expected_row(mirror_files) -> dict:
    record = download_record()
    return {
        "service": "green",
        "month": "2019-01",
        "rows": data_rows(mirror_files[GREEN]),
        "source_sha256": record["sha256"],
        "source_url": record["url"],
    }


def test_duckdb_and_postgres_mark_a_month_with_the_same_columns_and_values(workspace, pg, run, mirror_files):
    with configured({("ingest", "sinks"): "duckdb,postgres"}):
        assert not run(IngestMonth(service="green", month=month("2019-01"))).failures

    with duckdb.connect(str(workspace / "warehouse.duckdb"), read_only=True) as con:
        cursor = con.execute("SELECT * FROM _ingested")
        names = [d[0] for d in cursor.description]
        in_duckdb = [dict(zip(names, row)) for row in cursor.fetchall()]
    with pg.conn.cursor() as cur:
        cur.execute(f'SELECT * FROM "{pg.schema}"._ingested')
        names_pg = [d[0] for d in cur.description]
        in_postgres = [dict(zip(names_pg, row)) for row in cur.fetchall()]

    assert names == names_pg == SHAPE
    for rows in (in_duckdb, in_postgres):
        assert len(rows) == 1 and isinstance(rows[0].pop("marked_at"), datetime.datetime)
        assert rows[0] == expected_row(mirror_files)


def test_bigquery_marks_a_month_with_the_same_columns_and_values(bigquery, gcs, run, mirror_files):
    assert not run(IngestMonth(service="green", month=month("2019-01"))).failures

    table = f"test.{bigquery_dataset()}._ingested"
    assert [field.name for field in client().get_table(table).schema] == SHAPE
    rows = [dict(row.items()) for row in client().list_rows(table)]
    assert len(rows) == 1 and isinstance(rows[0].pop("marked_at"), datetime.datetime)
    assert rows[0] == expected_row(mirror_files)


def test_an_earlier_versions_duckdb_marker_table_gets_the_new_columns_and_keeps_its_rows(workspace, run, mirror_files):
    with duckdb.connect(str(workspace / "warehouse.duckdb")) as con:  # as the version before source_url wrote it
        con.execute(
            "CREATE TABLE _ingested (service VARCHAR, month VARCHAR, rows BIGINT, exposed_at TIMESTAMP, "
            "source_sha256 VARCHAR, PRIMARY KEY (service, month))"
        )
        con.execute("INSERT INTO _ingested VALUES ('green', '2018-12', 7, now(), 'abc')")

    assert not run(IngestMonth(service="green", month=month("2019-01"))).failures

    with duckdb.connect(str(workspace / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT service, month, rows, source_sha256, source_url FROM _ingested ORDER BY month").fetchall()
    expected = expected_row(mirror_files)
    assert rows == [("green", "2018-12", 7, "abc", None), tuple(expected.values())]


def test_an_earlier_versions_postgres_marker_table_gets_the_new_columns_and_keeps_its_rows(pg, run, mirror_files):
    pg.query(
        f'CREATE SCHEMA "{pg.schema}"; CREATE TABLE "{pg.schema}"._ingested (service text NOT NULL, month text NOT NULL, '
        "rows bigint NOT NULL, source_sha256 text, source_url text, loaded_at timestamptz NOT NULL DEFAULT now(), "
        "PRIMARY KEY (service, month)); "
        f"INSERT INTO \"{pg.schema}\"._ingested (service, month, rows) VALUES ('green', '2018-12', 7); SELECT 1"
    )

    assert not run(IngestMonth(service="green", month=month("2019-01"))).failures

    rows = pg.query(
        f'SELECT service, month, rows, source_sha256, source_url, marked_at IS NOT NULL FROM "{pg.schema}"._ingested ORDER BY month'
    )
    assert rows == [("green", "2018-12", 7, None, None, True), (*expected_row(mirror_files).values(), True)]


def test_an_earlier_versions_bigquery_marker_table_gets_the_new_columns(bigquery, gcs, run, mirror_files):
    from google.cloud import bigquery as bq

    dataset = f"test.{bigquery_dataset()}"
    client().create_dataset(dataset)
    old = [
        bq.SchemaField("service", "STRING", mode="REQUIRED"),
        bq.SchemaField("month", "STRING", mode="REQUIRED"),
        bq.SchemaField("rows", "INTEGER"),
        bq.SchemaField("source_sha256", "STRING"),
        bq.SchemaField("exposed_at", "TIMESTAMP"),
    ]
    client().create_table(bq.Table(f"{dataset}._ingested", schema=old))
    bigquery.requests.clear()

    assert not run(IngestMonth(service="green", month=month("2019-01"))).failures

    # The DDL sent (bqemulator applies it to the rows but not to the schema tables.get returns).
    sent = [body.get("configuration", {}).get("query", body) for _, _, body in bigquery.requests if body]  # jobs.insert or jobs.query
    queries = [query["query"] for query in sent if isinstance(query.get("query"), str)]
    table = f"`{dataset}._ingested`"
    assert [q for q in queries if q.startswith("ALTER")] == [
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS source_url STRING",
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS marked_at TIMESTAMP",
    ]
    found = client().query(f"SELECT service, month, rows, source_sha256, source_url FROM {table}").result()
    assert [dict(row.items()) for row in found] == [expected_row(mirror_files)]
