"""The embedded DuckDB warehouse at its edges: a project folder that moves, a lake path DuckDB
would take as a pattern, and a query session that holds the file."""

import shutil
import subprocess
import sys

import duckdb
import pytest

from pipeline import IngestMonth, retry
from pipeline.warehouses import duckdb_views

from conftest import configured
from mirror import data_rows, month


def test_after_the_project_folder_moves_its_views_are_exposed_again(workspace, run, mirror_files):
    green = IngestMonth(service="green", month=month("2019-01"))
    assert not run(green).failures
    moved = workspace.parent / (workspace.name + "-moved")
    shutil.move(workspace, moved)

    with configured(
        {
            ("lake", "root"): str(moved / "lake"),
            ("ingest", "staging"): str(moved / "staging"),
            ("duckdb", "path"): str(moved / "warehouse.duckdb"),
        }
    ):
        assert not IngestMonth(service="green", month=month("2019-01")).complete()
        result = run(IngestMonth(service="green", month=month("2019-01")))
        assert not result.failures
        assert sorted(t.split("_")[0] for t in result.started) == ["ExposeDuckDB", "IngestMonth"]  # nothing redone
        assert IngestMonth(service="green", month=month("2019-01")).complete()
    with duckdb.connect(str(moved / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM green_tripdata").fetchone()[0] == data_rows(
            mirror_files["green/green_tripdata_2019-01.csv.gz"]
        )


def test_a_lake_root_with_a_glob_character_is_refused_by_name(workspace, run):
    root = workspace / "lake[2021]"
    with configured({("lake", "root"): str(root)}):
        error = run(IngestMonth(service="green", month=month("2019-01"))).failures["ExposeDuckDB"]
    assert str(error) == (
        f"[lake] root {root} holds a glob character ([ ]), which DuckDB's read_parquet would "
        "take as a pattern; move the lake to a path without one"
    )


def test_a_session_holding_the_warehouse_is_named_when_the_wait_ends(workspace, monkeypatch):
    path = workspace / "warehouse.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('open', flush=True); time.sleep(60)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "open\n"
        monkeypatch.setattr(retry, "DUCKDB_LOCK_SECONDS", 1.0)
        # Asking whether a month is exposed is the first thing that opens the file.
        with pytest.raises(duckdb_views.WarehouseBusy) as busy:
            duckdb_views.DuckDBMarker(str(path), "green", month("2019-01")).exists()
        error = busy.value
    finally:
        holder.kill()
        holder.wait()
    assert str(error).startswith(f"the DuckDB warehouse {path} has been held by another process for 1 s (")
    assert f"(PID {holder.pid})" in str(error)
    assert (error.path, error.seconds) == (str(path), 1.0) and f"(PID {holder.pid})" in error.holder
    assert str(error).endswith("close that session, and query while ingesting with duckdb.connect(path, read_only=True)")
