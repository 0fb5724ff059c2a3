"""The native BigQuery table (the `bigquery_table` sink), with the official clients against
fake-gcs-server and bqemulator behind the recording proxy.

The loads run on the emulator, from the lake objects fake-gcs-server holds. bqemulator cannot
load into a partition decorator: the proxy sends such a load to a table of its own per partition
(servers.BigQueryRecorder.partition_table), so that what a write-truncate into `$YYYYMM` replaces
is visible per month. Partitioning and clustering are checked as the exact requests sent (the
emulator stores them, and prunes nothing)."""

from __future__ import annotations

import gzip
import hashlib

from google.cloud import bigquery as bq

from pipeline import IngestMonth, IngestZones, Reingest
from pipeline.catalog import SERVICES
from pipeline.warehouses.bigquery import client
from pipeline.warehouses.bigquery_table import NativeTableMarker, ensure_native_table, job_ids

from conftest import bigquery_dataset, configured
from mirror import data_rows, month, replaced
from servers import BigQueryRecorder

MONTHS = ["2021-01", "2020-01"]
# The BigQuery type each column of the catalog must be declared as (written out, not imported).
BQ = {"timestamp[us]": "DATETIME", "int64": "INTEGER", "double": "FLOAT", "string": "STRING"}


def native():
    """The sink on, besides the fixture's settings."""
    return configured({("ingest", "sinks"): "bigquery_table"})


def partition_rows(partition: str, table: str = "yellow_tripdata") -> int:
    """Rows in one partition of the native table, as the emulator holds it."""
    name = BigQueryRecorder.partition_table(table, partition)
    return list(client().query(f"SELECT count(*) AS n FROM `test.{bigquery_dataset()}.{name}`").result())[0]["n"]


def load_job_ids(bigquery) -> list[str]:
    """The job ids of the load jobs submitted, in order (a refused submission included)."""
    return [
        body["jobReference"]["jobId"]
        for method, path, body in bigquery.requests
        if method == "POST" and path.endswith("/jobs") and "load" in body["configuration"]
    ]


def served(mirror, service: str, m: str) -> bytes:
    return (mirror / "releases" / service / f"{service}_tripdata_{m}.csv.gz").read_bytes()


def test_two_months_a_load_job_each_into_its_partition_a_rerun_submits_nothing_a_reingest_replaces_one(
    bigquery, gcs, run, mirror, mirror_files
):
    rows = {m: data_rows(mirror_files[f"yellow/yellow_tripdata_{m}.csv.gz"]) for m in MONTHS}
    with native():
        assert not run(*[IngestMonth(service="yellow", month=month(m)) for m in MONTHS]).failures

        # Created once: monthly partitions by ingestion time (the source month), clustered.
        (created,) = bigquery.creates("yellow_tripdata")
        assert created["timePartitioning"] == {"type": "MONTH"}
        assert created["clustering"] == {"fields": ["tpep_pickup_datetime", "PULocationID"]}
        assert [(f["name"], f["type"]) for f in created["schema"]["fields"]] == [
            (f.name, BQ[str(f.type)]) for f in SERVICES["yellow"].schema
        ]
        # One load job per month, from its lake object into its partition, replacing it.
        loads = bigquery.loads()
        assert sorted(load["destinationTable"]["tableId"] for load in loads) == ["yellow_tripdata$202001", "yellow_tripdata$202101"]
        for load in loads:
            m = load["destinationTable"]["tableId"][-6:]
            m = f"{m[:4]}-{m[4:]}"
            assert load["sourceUris"] == [f"gs://{gcs.name}/lake/yellow/month={m}/yellow_tripdata_{m}.parquet"]
            assert (load["sourceFormat"], load["writeDisposition"]) == ("PARQUET", "WRITE_TRUNCATE")
        # The only queries are the marker MERGEs: nothing scans a table to fill another.
        queries = [
            body["configuration"]["query"]["query"]
            for _, path, body in bigquery.requests
            if path.endswith("/jobs") and "query" in body["configuration"]
        ]
        assert len(queries) == 2 and all(q.startswith(f"MERGE `test.{bigquery_dataset()}._ingested_native` ") for q in queries)
        assert {m: partition_rows(m.replace("-", "")) for m in MONTHS} == rows
        assert NativeTableMarker.marked_rows(None) == {("yellow", m): rows[m] for m in MONTHS}
        assert NativeTableMarker.recorded(None) == {("yellow", m): hashlib.sha256(served(mirror, "yellow", m)).hexdigest() for m in MONTHS}

        bigquery.requests.clear()
        again = run(*[IngestMonth(service="yellow", month=month(m)) for m in MONTHS])
        assert again.started == [] and not again.failures
        assert not [r for r in bigquery.requests if r[0] != "GET"]

        # The TLC re-issues 2020-01 with 100 rows: only that partition is replaced.
        republished = mirror / "releases" / "yellow" / "yellow_tripdata_2020-01.csv.gz"
        shorter = gzip.compress(b"".join(gzip.decompress(republished.read_bytes()).splitlines(keepends=True)[:101]))
        with replaced(republished, shorter):
            result = run(Reingest(services="yellow", first=month("2020-01"), last=month("2020-01")))

    assert not result.failures
    (reload,) = bigquery.loads()
    assert (reload["destinationTable"]["tableId"], reload["writeDisposition"]) == ("yellow_tripdata$202001", "WRITE_TRUNCATE")
    assert partition_rows("202001") == 100 and partition_rows("202101") == rows["2021-01"]
    assert NativeTableMarker.marked_rows(None) == {("yellow", "2020-01"): 100, ("yellow", "2021-01"): rows["2021-01"]}
    assert NativeTableMarker.recorded(None)[("yellow", "2020-01")] == hashlib.sha256(shorter).hexdigest()


def test_a_run_that_died_after_its_load_finds_the_job_and_loads_nothing_twice(bigquery, gcs, run, mirror_files):
    rows = data_rows(mirror_files["yellow/yellow_tripdata_2021-01.csv.gz"])
    with native():
        assert not run(IngestMonth(service="yellow", month=month("2021-01"))).failures
        (first,) = load_job_ids(bigquery)
        # The load finished, and the marker was never written (the process was killed in between).
        client().query(f"DELETE FROM `test.{bigquery_dataset()}._ingested_native` WHERE TRUE").result()
        bigquery.requests.clear()

        again = run(IngestMonth(service="yellow", month=month("2021-01")))

    assert not again.failures and "LoadBigQueryTable" in " ".join(again.started)
    # The same job id was submitted, refused as taken (409), and that job's result used.
    assert load_job_ids(bigquery) == [first]
    assert ("GET", f"/bigquery/v2/projects/test/jobs/{first}", None) in bigquery.requests
    assert partition_rows("202101") == rows
    assert NativeTableMarker.marked_rows(None) == {("yellow", "2021-01"): rows}


def test_a_failed_job_of_that_month_is_followed_by_the_next_id(bigquery, gcs, run, mirror, mirror_files):
    """A job under the month's first id that failed (here: submitted by hand from a file that is
    not there) is not taken for a load: the next id loads the month."""
    bq_client = client()
    bq_client.create_dataset(f"test.{bigquery_dataset()}")
    table = ensure_native_table(bq_client, SERVICES["yellow"])
    sha = hashlib.sha256(served(mirror, "yellow", "2021-01")).hexdigest()
    ids = job_ids(table, SERVICES["yellow"], "2021-01", sha)
    first, second = next(ids), next(ids)
    failed = bq_client.load_table_from_uri(
        f"gs://{gcs.name}/nowhere.parquet",
        f"test.{bigquery_dataset()}.yellow_tripdata$202101",
        job_id=first,
        job_config=bq.LoadJobConfig(source_format="PARQUET", schema=table.schema),
    )
    assert failed.exception() is not None

    with native():
        assert not run(IngestMonth(service="yellow", month=month("2021-01"))).failures

    assert load_job_ids(bigquery) == [first, first, second]  # by hand; refused as taken; the next id
    assert partition_rows("202101") == data_rows(mirror_files["yellow/yellow_tripdata_2021-01.csv.gz"])


def test_a_table_dropped_and_marked_undone_by_hand_is_loaded_again_not_taken_from_old_jobs(bigquery, gcs, run, mirror_files):
    with native():
        assert not run(IngestMonth(service="yellow", month=month("2021-01"))).failures
        bq_client = client()
        bq_client.delete_table(f"test.{bigquery_dataset()}.yellow_tripdata")
        bq_client.delete_table(f"test.{bigquery_dataset()}.{BigQueryRecorder.partition_table('yellow_tripdata', '202101')}")
        bq_client.query(f"DELETE FROM `test.{bigquery_dataset()}._ingested_native` WHERE TRUE").result()
        bigquery.requests.clear()

        assert not run(IngestMonth(service="yellow", month=month("2021-01"))).failures

    assert len(bigquery.creates("yellow_tripdata")) == 1 and len(bigquery.loads()) == 1
    assert partition_rows("202101") == data_rows(mirror_files["yellow/yellow_tripdata_2021-01.csv.gz"])


def test_the_zones_are_one_plain_table_replaced_whole(bigquery, gcs, run, mirror_files):
    with native():
        assert not run(IngestZones()).failures

    (created,) = bigquery.creates("taxi_zone_lookup")
    assert "timePartitioning" not in created and "clustering" not in created
    (load,) = bigquery.loads()
    assert (load["destinationTable"]["tableId"], load["writeDisposition"]) == ("taxi_zone_lookup", "WRITE_TRUNCATE")
    counted = list(client().query(f"SELECT count(*) AS n FROM `test.{bigquery_dataset()}.taxi_zone_lookup`").result())[0]["n"]
    assert counted == data_rows(mirror_files["misc/taxi_zone_lookup.csv"]) == NativeTableMarker.marked_rows(None)[("zones", "")]


def test_an_existing_table_that_does_not_fit_is_refused_with_what_differs(bigquery, gcs, run):
    bq_client = client()
    bq_client.create_dataset(f"test.{bigquery_dataset()}")
    other = bq.Table(
        f"test.{bigquery_dataset()}.green_tripdata", schema=[bq.SchemaField(f.name, BQ[str(f.type)]) for f in SERVICES["green"].schema]
    )
    other.time_partitioning = bq.TimePartitioning(type_="DAY", field="lpep_pickup_datetime")
    bq_client.create_table(other)
    bigquery.requests.clear()

    with native():
        result = run(IngestMonth(service="green", month=month("2019-01")))

    assert str(result.failures["LoadBigQueryTable"]) == (
        f"table test.{bigquery_dataset()}.green_tripdata exists but is not the green table the pipeline wants: "
        "its partitioning (type, column) is ('DAY', 'lpep_pickup_datetime'), not ('MONTH', None); "
        "it is clustered by None, not ['lpep_pickup_datetime', 'PULocationID']. "
        "Drop or rename it, or set [bigquery] dataset to another dataset."
    )
    error = result.failures["LoadBigQueryTable"]
    assert (error.table, error.service, error.setting) == (f"test.{bigquery_dataset()}.green_tripdata", "green", "[bigquery] dataset")
    assert error.problems == [
        "its partitioning (type, column) is ('DAY', 'lpep_pickup_datetime'), not ('MONTH', None)",
        "it is clustered by None, not ['lpep_pickup_datetime', 'PULocationID']",
    ]
    assert bigquery.loads() == [] and not NativeTableMarker("green", month("2019-01")).exists()
