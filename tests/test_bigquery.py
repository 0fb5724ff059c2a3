"""BigQuery over the GCS lake, with the official clients against fake-gcs-server and bqemulator.

bqemulator stores an external table as an empty plain table (see tests/servers.py), so what the
external table is gets checked two ways: the exact tables.insert request the real client sends,
and the cross-month property itself (all months' lake files open as one dataset with the
catalog's schema). Datasets, the marker table, MERGE and tabledata.list run on the emulator."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from google.cloud import bigquery as bq

from pipeline import IngestMonth, IngestZones
from pipeline.catalog import SERVICES
from pipeline.warehouses.bigquery import BigQueryError, BigQueryMarker, InvalidName, NoDataset, TableMisfit, client
from pipeline.warehouses.sink import WrongLake

from conftest import bigquery_dataset, configured
from mirror import data_rows, month

MONTHS = [("yellow", "2021-01"), ("yellow", "2020-01"), ("green", "2019-01")]
# The BigQuery type each Arrow type of the catalog must be declared as (written out, not imported).
BQ = {pa.timestamp("us"): "DATETIME", pa.int64(): "INTEGER", pa.float64(): "FLOAT", pa.string(): "STRING"}


def test_two_services_three_months_tables_created_once_markers_and_a_rerun_does_nothing(bigquery, gcs, run, mirror_files, mirror):
    tasks = [IngestMonth(service=s, month=month(m)) for s, m in MONTHS]

    first = run(*tasks)

    assert not first.failures
    assert sorted(gcs.objects()) == sorted(f"lake/{s}/month={m}/{s}_tripdata_{m}.parquet" for s, m in MONTHS)
    assert client().get_dataset(f"test.{bigquery_dataset()}").location == "US"  # created, in the configured location
    # One create per external table, for all of its months.
    assert len(bigquery.creates("external_yellow_tripdata")) == 1
    assert len(bigquery.creates("external_green_tripdata")) == 1
    yellow = bigquery.creates("external_yellow_tripdata")[0]
    root = f"gs://{gcs.name}/lake"
    assert yellow["externalDataConfiguration"] == {
        "sourceFormat": "PARQUET",
        "sourceUris": [f"{root}/yellow/*"],
        "hivePartitioningOptions": {"mode": "CUSTOM", "sourceUriPrefix": f"{root}/yellow/{{month:STRING}}"},
    }
    assert [(f["name"], f["type"]) for f in yellow["schema"]["fields"]] == [
        (field.name, BQ[field.type]) for field in SERVICES["yellow"].schema
    ]
    # Each marker names the file as served: its sha256.
    assert BigQueryMarker.recorded(None) == {
        (s, m): hashlib.sha256((mirror / "releases" / s / f"{s}_tripdata_{m}.csv.gz").read_bytes()).hexdigest() for s, m in MONTHS
    }
    markers = {(r["service"], r["month"]): r["rows"] for r in client().list_rows(f"test.{bigquery_dataset()}._ingested")}
    assert markers == {(s, m): data_rows(mirror_files[f"{s}/{s}_tripdata_{m}.csv.gz"]) for s, m in MONTHS}

    bigquery.requests.clear()
    again = run(*tasks)

    assert again.started == [] and not again.failures
    assert bigquery.creates() == []
    assert not [r for r in bigquery.requests if r[0] != "GET"]  # deciding that costs reads only


def test_all_months_of_the_lake_read_as_one_table_with_the_declared_schema(bigquery, gcs, run, mirror_files):
    """What the external table relies on, proved on the bucket's own files: every month opens
    as one dataset, with exactly the columns and types the table declares, plus the month key."""
    months = ["2019-03", "2020-01", "2020-07", "2021-01"]
    assert not run(*[IngestMonth(service="yellow", month=month(m)) for m in months]).failures
    declared = bigquery.creates("external_yellow_tripdata")[0]["schema"]["fields"]
    files = gcs.server["root"] / gcs.name / "lake" / "yellow"  # fake-gcs-server keeps objects as files

    lake = pads.dataset(files, format="parquet", partitioning=pads.partitioning(pa.schema([("month", pa.string())]), flavor="hive"))

    assert [(f.name, BQ[f.type]) for f in lake.schema if f.name != "month"] == [(f["name"], f["type"]) for f in declared]
    assert lake.count_rows() == sum(data_rows(mirror_files[f"yellow/yellow_tripdata_{m}.csv.gz"]) for m in months)
    per_month = lake.to_table(columns=["month"]).group_by("month").aggregate([([], "count_all")])
    assert dict(zip(per_month["month"].to_pylist(), per_month["count_all"].to_pylist())) == {
        m: data_rows(mirror_files[f"yellow/yellow_tripdata_{m}.csv.gz"]) for m in months
    }


def test_zones_get_an_external_table_without_partitions(bigquery, gcs, run):
    assert not run(IngestZones()).failures

    (zones,) = bigquery.creates("external_taxi_zone_lookup")
    assert zones["externalDataConfiguration"] == {"sourceFormat": "PARQUET", "sourceUris": [f"gs://{gcs.name}/lake/zones/*.parquet"]}
    assert BigQueryMarker("zones", None).exists()


def test_an_existing_table_of_that_name_that_is_not_ours_is_refused_and_left_alone(bigquery, run):
    bq_client = client()
    bq_client.create_dataset(f"test.{bigquery_dataset()}")
    bq_client.create_table(bq.Table(f"test.{bigquery_dataset()}.external_green_tripdata", schema=[bq.SchemaField("VendorID", "STRING")]))
    bigquery.requests.clear()

    result = run(IngestMonth(service="green", month=month("2019-01")))

    message = str(result.failures["ExposeBigQuery"])
    assert message.startswith(
        f"table test.{bigquery_dataset()}.external_green_tripdata exists but is not the green "
        "external table the pipeline wants: it is a TABLE table, not an EXTERNAL one."
    )
    assert bigquery.creates("external_green_tripdata") == []
    assert [f.name for f in bq_client.get_table(f"test.{bigquery_dataset()}.external_green_tripdata").schema] == ["VendorID"]
    assert not BigQueryMarker("green", month("2019-01")).exists()


def test_an_external_table_over_other_files_or_types_is_refused(bigquery, gcs, run):
    bq_client = client()
    bq_client.create_dataset(f"test.{bigquery_dataset()}")
    other = bq.Table(
        f"test.{bigquery_dataset()}.external_green_tripdata",
        schema=[bq.SchemaField(f.name, "STRING" if f.name == "VendorID" else BQ[f.type]) for f in SERVICES["green"].schema],
    )
    config = bq.ExternalConfig("PARQUET")
    config.source_uris = [f"gs://{gcs.name}/elsewhere/*.parquet"]
    other.external_data_configuration = config
    bq_client.create_table(other)

    result = run(IngestMonth(service="green", month=month("2019-01")))

    error = result.failures["ExposeBigQuery"]
    message = str(error)
    assert f"it reads ['gs://{gcs.name}/elsewhere/*.parquet'], not ['gs://{gcs.name}/lake/green/*']" in message
    assert "its hive partitioning is None, not ('CUSTOM', " in message
    assert "column VendorID is STRING, the catalog says INTEGER" in message
    assert isinstance(error, TableMisfit)
    assert (error.table, error.service, error.setting) == (
        f"test.{bigquery_dataset()}.external_green_tripdata",
        "green",
        "[bigquery] dataset",
    )
    assert "column VendorID is STRING, the catalog says INTEGER" in error.problems


def test_a_missing_dataset_is_an_error_when_creating_it_is_off(bigquery, run):
    with configured({("bigquery", "create_dataset"): "false"}):
        result = run(IngestMonth(service="green", month=month("2019-01")))

    error = result.failures["ExposeBigQuery"]
    assert str(error) == f"dataset test.{bigquery_dataset()} does not exist; create it in US, or set [bigquery] create_dataset = true"
    assert isinstance(error, NoDataset) and (error.dataset, error.location) == (f"test.{bigquery_dataset()}", "US")
    assert bigquery.creates() == []


def test_the_bigquery_sink_needs_a_gcs_lake(bigquery, workspace, run):
    """Refused by name before anything runs (the flow's requires): no step starts, nothing is
    asked of BigQuery."""
    with configured({("lake", "root"): str(workspace / "lake")}):
        result = run(IngestMonth(service="green", month=month("2019-01")), broken_ok=True)

    assert result.started == [] and bigquery.creates() == []
    [(_, error)] = result.broken
    assert "the bigquery sink reads the lake from GCS, and [lake] root is " in str(error)
    assert isinstance(error, WrongLake)
    assert (error.sink, error.reads, error.root) == ("bigquery", "gcs", str(workspace / "lake"))


def test_a_bad_dataset_name_is_refused(bigquery):
    with configured({("bigquery", "dataset"): "nyc-tlc; DROP"}):
        with pytest.raises(BigQueryError, match="is not a valid dataset name") as refused:
            BigQueryMarker("green", month("2019-01")).exists()
    assert isinstance(refused.value, InvalidName)
    assert (refused.value.setting, refused.value.value) == ("dataset", "nyc-tlc; DROP")
