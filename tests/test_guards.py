"""Every integrity guard fires: each fault is injected the way it happens for real, and the step
fails saying what and where, with nothing marked done."""

from __future__ import annotations

import shutil

from pipeline import IngestMonth, LakeFile
from pipeline.warehouses.duckdb_views import DuckDBMarker, ExposeDuckDB
from pipeline.warehouses.postgres import LoadPostgres, PostgresError, PostgresMarker

from conftest import configured
from mirror import data_rows, month

YELLOW = "yellow/yellow_tripdata_2021-01.csv.gz"


def test_a_view_that_counts_otherwise_than_the_lake_file_marks_nothing(workspace, run, mirror_files):
    # Someone copies a file into the month's folder by hand: the view reads both.
    assert not run(LakeFile(service="yellow", month=month("2021-01"))).failures
    lake_file = LakeFile(service="yellow", month=month("2021-01")).output().path
    shutil.copyfile(lake_file, lake_file.replace(".parquet", "-copy.parquet"))

    error = run(ExposeDuckDB(service="yellow", month=month("2021-01"))).failures["ExposeDuckDB"]

    rows = data_rows(mirror_files[YELLOW])
    assert str(error) == (
        f"yellow 2021-01: view yellow_tripdata in {workspace / 'warehouse.duckdb'} shows {2 * rows} rows, "
        f"the lake file {lake_file} holds {rows}"
    )
    assert not DuckDBMarker(str(workspace / "warehouse.duckdb"), "yellow", month("2021-01")).exists()


def test_a_load_that_lands_another_count_than_the_lake_records_keeps_nothing(gcs, pg, run, mirror_files):
    # An object replaced by hand keeps its old metadata: the lake records more rows than it holds.
    with configured({("ingest", "sinks"): "none"}):
        assert not run(IngestMonth(service="yellow", month=month("2021-01"))).failures
    blob = next(b for name, b in gcs.objects().items() if name.endswith("yellow_tripdata_2021-01.parquet"))
    rows = data_rows(mirror_files[YELLOW])
    blob.metadata = {**blob.metadata, "rows": str(rows + 1)}
    blob.patch()

    error = run(LoadPostgres(service="yellow", month=month("2021-01"))).failures["LoadPostgres"]

    assert isinstance(error, PostgresError)
    assert str(error).startswith(f"yellow 2021-01: loading {blob_url(gcs, blob)} into ")
    assert str(error).endswith(
        f"failed, and nothing of it was kept (one transaction): {pg.schema}.yellow_tripdata holds "
        f"{rows} rows for 2021-01 after COPY reported {rows}; the lake file records {rows + 1}"
    )
    assert not PostgresMarker("yellow", month("2021-01")).exists()
    assert "yellow_tripdata_2021_01" not in pg.tables()


def blob_url(gcs, blob) -> str:
    return f"gs://{gcs.name}/{blob.name}"
