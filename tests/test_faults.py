"""Bad input gets a clear error and loses nothing: the step fails with a message that says what
and where, no output is left that looks complete, and a re-run against good input finishes."""

import datetime
import os
import re
import signal
import time
from pathlib import Path

import pytest

from pipeline import Download, IngestMonth, ToParquet, catalog
from pipeline.convert import ConversionError
from pipeline.download import MonthNotPublished, SourceError
from conftest import cli, cli_popen, set_source, workspace_flags


def month(text):
    return datetime.date.fromisoformat(text + "-01")


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


def assert_nothing_complete(workspace, *tasks):
    for task in tasks:
        assert not task.complete(), task
    assert files_under(workspace / "staging") == []  # no partial file left behind either
    assert files_under(workspace / "lake") == []


def test_unpublished_month_is_a_clear_404_not_retried(workspace, run, http_server):
    task = Download(service="yellow", month=month("2021-08"))
    result = run(task)
    error = result.failures["Download"]
    assert isinstance(error, MonthNotPublished)
    assert str(error) == (f"yellow 2021-08 ({http_server}/releases/yellow/yellow_tripdata_2021-08.csv.gz): "
                          "not published (HTTP 404)")
    assert_nothing_complete(workspace, task)


@pytest.mark.parametrize("route,service,text,message", [
    ("html", "yellow", "2021-01", "got an HTML/XML page, not the data file"),
    # the first 24,610 bytes of the real green 2019-10 release asset, served whole with 200
    ("broken", "green", "2019-10", "truncated or corrupt gzip (Truncated compressed stream)"),
    ("broken", "yellow", "2021-01", "header has column(s) the yellow catalog does not know: 'pickup_location_id'"),
    ("down", "green", "2019-01", "server error HTTP 503 (gave up after 3 tries)"),
    ("short", "yellow", "2021-01", "IncompleteRead"),
], ids=["html-page", "truncated-gzip", "changed-header", "server-down", "connection-dropped"])
def test_bad_download_fails_naming_month_and_url_and_leaves_nothing(workspace, run, http_server, route, service, text, message):
    set_source(f"{http_server}/{route}")
    url = f"{http_server}/{route}/{catalog.RELEASES.path(catalog.SERVICES[service], month(text))}"
    task = IngestMonth(service=service, month=month(text))
    error = run(task).failures["Download"]
    assert isinstance(error, (SourceError, catalog.SchemaMismatch))
    assert str(error).startswith(f"{service} {text} ({url}): ")
    assert message in str(error)
    assert_nothing_complete(workspace, task, Download(service=service, month=month(text)))


def test_server_errors_are_retried_then_succeed(workspace, run, http_server):
    set_source(f"{http_server}/flaky")
    result = run(Download(service="fhvhv", month=month("2021-06")))
    assert result.failures == {}
    assert Download(service="fhvhv", month=month("2021-06")).complete()


def test_fractional_integer_code_fails_conversion_naming_column_row_and_file(workspace, run, http_server):
    set_source(f"{http_server}/broken")
    task = ToParquet(service="yellow", month=month("2021-02"))
    error = run(task).failures["ToParquet"]
    assert isinstance(error, ConversionError)
    assert "yellow 2021-02 (" in str(error) and "yellow_tripdata_2021-02.csv.gz" in str(error)
    assert "column passenger_count, data row 2: value 1.5 is not a whole number that fits int64" in str(error)
    assert not task.complete()
    assert Download(service="yellow", month=month("2021-02")).complete()  # the download itself was fine
    assert files_under(workspace / "staging" / "parquet") == []


def test_killed_mid_download_leaves_nothing_complete_and_rerun_finishes(workspace, http_server):
    flags = workspace_flags(workspace, f"{http_server}/slow")
    raw_dir = workspace / "staging" / "raw" / "yellow"
    proc = cli_popen("Download", "--service", "yellow", "--month", "2021-01", *flags)
    try:
        deadline = time.monotonic() + 20
        while not any(p.stat().st_size > 0 for p in raw_dir.glob("*-luigi-tmp-*")):
            assert proc.poll() is None and time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert not Download(service="yellow", month=month("2021-01")).complete()
    assert not (raw_dir / "yellow_tripdata_2021-01.csv.gz").exists()
    (left,) = raw_dir.glob("*-luigi-tmp-*")  # the killed run's partial file
    an_hour_ago = time.time() - 3600
    os.utime(left, (an_hour_ago, an_hour_ago))
    in_progress = raw_dir / "yellow_tripdata_2021-01.csv.gz-luigi-tmp-0000000001"  # another run's, being written
    in_progress.write_bytes(b"partial")

    done = cli("IngestMonth", "--service", "yellow", "--month", "2021-01",
               *workspace_flags(workspace, f"{http_server}/releases"))
    assert done.returncode == 0, done.stderr
    assert Download(service="yellow", month=month("2021-01")).complete()
    assert IngestMonth(service="yellow", month=month("2021-01")).complete()
    assert not left.exists() and in_progress.exists()  # the stale one swept, the live one left alone
    assert f"removed {left}, left by a run that was killed" in done.stderr


def test_cli_failed_run_exits_non_zero_with_the_message(workspace, http_server):
    out = cli("IngestMonth", "--service", "yellow", "--month", "2021-08", *workspace_flags(workspace, f"{http_server}/releases"))
    assert out.returncode == 30  # [retcode] task_failed in luigi.cfg
    assert "yellow 2021-08 (" in out.stderr and "not published (HTTP 404)" in out.stderr


def test_cli_main_command_then_a_second_run_runs_nothing(workspace, http_server):
    import duckdb

    flags = workspace_flags(workspace, f"{http_server}/releases")
    first = cli("IngestMonth", "--service", "yellow", "--month", "2021-01", *flags)
    assert first.returncode == 0, first.stderr
    assert "yellow 2021-01: downloading" in first.stderr and "wrote 22,792 rows" in first.stderr
    with duckdb.connect(str(workspace / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM yellow_tripdata").fetchone()[0] == 22792
    second = cli("IngestMonth", "--service", "yellow", "--month", "2021-01", *flags)
    assert second.returncode == 0
    assert "Did not run any tasks" in second.stderr
    assert "1 complete ones were encountered" in second.stderr


def test_cli_help_lists_the_parameters_and_help_all_the_settings():
    out = cli("IngestMonth", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    choices = re.search(r"--service SERVICE The TLC trip service\. Choices: \{([^}]*)\}", text)
    assert choices and set(choices.group(1).split(", ")) == {"yellow", "green", "fhv", "fhvhv"}
    assert "--month MONTH YYYY-MM: the month of the published file." in text
    out = cli("IngestMonth", "--help-all")
    assert out.returncode == 0
    for flag in ("--source-base-url", "--source-attempts", "--lake-root", "--duckdb-path", "--ingest-sinks"):
        assert flag in out.stdout
