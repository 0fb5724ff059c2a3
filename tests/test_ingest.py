"""A user's story: serve real months over HTTP, run IngestMonth / IngestZones, look in the lake and
the warehouse."""

import datetime

import duckdb
import luigi
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline import IngestMonth, IngestZones, catalog
from pipeline.convert import ToParquet
from pipeline.lake import lake_path

from mirror import data_rows, month

MONTHS = [
    ("yellow", "2021-01"),
    ("yellow", "2020-01"),
    ("yellow", "2020-07"),
    ("yellow", "2019-03"),
    ("green", "2019-01"),
    ("green", "2019-10"),
    ("fhv", "2019-01"),
    ("fhv", "2019-02"),
    ("fhvhv", "2019-02"),
    ("fhvhv", "2021-06"),
]


def warehouse(workspace):
    return duckdb.connect(str(workspace / "warehouse.duckdb"), read_only=True)


@pytest.mark.parametrize("service,text", MONTHS, ids=lambda v: v)
def test_ingest_month_lands_in_lake_and_warehouse_with_every_row(workspace, run, mirror_files, service, text):
    svc = catalog.SERVICES[service]
    expected = data_rows(mirror_files[catalog.RELEASES.path(svc, month(text))])

    result = run(IngestMonth(service=service, month=month(text)))

    assert result.failures == {}
    path = lake_path(svc, month(text))
    assert path.startswith(str(workspace / "lake" / service / f"month={text}"))
    lake_file = pq.ParquetFile(path)
    assert lake_file.metadata.num_rows == expected
    assert lake_file.schema_arrow.remove_metadata() == svc.schema
    meta = lake_file.metadata.metadata  # the footer's key-value metadata
    assert meta[b"tlc.rows"] == str(expected).encode()
    assert meta[b"tlc.month"] == text.encode() and len(meta[b"tlc.source_sha256"]) == 64
    with warehouse(workspace) as con:
        assert con.execute(f"SELECT count(*) FROM {svc.table} WHERE month = ?", [text]).fetchone()[0] == expected


def test_values_survive_as_written(workspace, run):
    """Empty integer codes are nulls, never zeros; out-of-month pickups are kept."""
    run(IngestMonth(service="yellow", month=month("2020-01")))
    table = pq.read_table(lake_path(catalog.YELLOW, month("2020-01")))
    tail = table.slice(table.num_rows - 500)  # the real file's last 500 rows have no codes
    for name in ("VendorID", "passenger_count", "RatecodeID", "payment_type", "store_and_fwd_flag"):
        assert tail.column(name).null_count == 500
    assert table.column("passenger_count").null_count == 500
    first = table.slice(0, 1).to_pylist()[0]
    assert first["tpep_pickup_datetime"] == datetime.datetime(2020, 1, 1, 0, 28, 15)
    assert (first["VendorID"], first["passenger_count"], first["trip_distance"], first["total_amount"]) == (1, 1, 1.2, 11.27)
    pickups = table.column("tpep_pickup_datetime")
    assert min(pickups.to_pylist()).year == 2019  # real 2019-12-18 rows stay in their source month


def test_second_run_runs_nothing(workspace, run):
    first = run(IngestMonth(service="green", month=month("2019-10")))
    assert len(first.started) == 5  # Download, ToParquet, LakeFile, ExposeDuckDB, IngestMonth
    again = run(IngestMonth(service="green", month=month("2019-10")))
    assert again.started == [] and again.failures == {}


def test_zones_keep_na_strings(workspace, run):
    result = run(IngestZones())
    assert result.failures == {}
    with warehouse(workspace) as con:
        rows = con.execute(
            "SELECT LocationID, Borough, Zone, service_zone FROM taxi_zone_lookup WHERE LocationID >= 264 ORDER BY 1"
        ).fetchall()
        assert rows == [(264, "Unknown", "NV", "N/A"), (265, "Unknown", "NA", "N/A")]
        assert con.execute("SELECT count(*) FROM taxi_zone_lookup").fetchone()[0] == 265


@pytest.mark.parametrize(
    "service,texts",
    [
        ("yellow", ["2019-03", "2020-01", "2020-07", "2021-01"]),  # CRLF and LF; empty codes in 2020-01
        ("fhv", ["2019-01", "2019-02"]),  # TLC 6-column header vs the DTC 7-column mixed-case one
        ("fhvhv", ["2019-02", "2021-06"]),  # the header changed between these
        ("green", ["2019-01", "2019-10"]),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_months_of_a_service_open_as_one_dataset(workspace, run, mirror_files, service, texts):
    svc = catalog.SERVICES[service]
    result = run(*[IngestMonth(service=service, month=month(t)) for t in texts])
    assert result.failures == {}
    dataset = ds.dataset(str(workspace / "lake" / service), format="parquet", partitioning="hive")
    file_schemas = {pq.read_schema(f).remove_metadata() for f in dataset.files}
    assert file_schemas == {svc.schema}
    table = dataset.to_table()  # would raise on a type conflict between months
    expected = sum(data_rows(mirror_files[catalog.RELEASES.path(svc, month(t))]) for t in texts)
    assert table.num_rows == expected
    with warehouse(workspace) as con:
        assert con.execute(f"SELECT count(DISTINCT month), count(*) FROM {svc.table}").fetchone() == (len(texts), expected)


def test_progress_and_status_reach_the_scheduler(workspace):
    """Long steps tell the visualiser what they are doing (through luigi's real scheduler API)."""
    scheduler = luigi.scheduler.Scheduler()
    task = ToParquet(service="yellow", month=month("2021-01"))
    with luigi.worker.Worker(scheduler=scheduler) as worker:
        worker.add(task)
        assert worker.run()
    message = scheduler.get_task_status_message(task.task_id)["statusMessage"]
    assert message == "yellow 2021-01: converted 22,792 rows"
    assert scheduler.get_task_progress_percentage(task.task_id)["progressPercentage"] == 100
    download_id = task.requires()["download"].task_id
    assert scheduler.get_task_status_message(download_id)["statusMessage"] == "yellow 2021-01: downloaded"


def test_month_is_required_for_trip_services_and_refused_for_zones():
    from pipeline import Download

    with pytest.raises(ValueError, match="--month YYYY-MM is required for yellow"):
        Download(service="yellow")
    with pytest.raises(ValueError, match="zones is not monthly"):
        Download(service="zones", month=month("2021-01"))


def test_sinks_setting_chooses_the_warehouses(workspace, run):
    config = luigi.configuration.get_config()
    config.set("ingest", "sinks", "none")
    result = run(IngestMonth(service="fhvhv", month=month("2021-06")))
    assert result.failures == {}
    assert sorted(t.split("_")[0] for t in result.started) == ["Download", "IngestMonth", "LakeFile", "ToParquet"]
    assert not (workspace / "warehouse.duckdb").exists()
    config.set("ingest", "sinks", "duckdb, snowflake")
    with pytest.raises(ValueError, match=r"\[ingest\] sinks: unknown sink\(s\) snowflake; known: duckdb, postgres, bigquery"):
        IngestMonth(service="fhvhv", month=month("2021-06")).requires()
