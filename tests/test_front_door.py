"""What a user reads when a command fails (pipeline/console.py, pipeline/errors.py), run as a user
runs it: a failure the pipeline knows ends, after luigi's summary, in one line per failed month that
says what went wrong and what to do, with no traceback on the console (it is in the log file the
run names); an unforeseen one keeps its traceback; a command-line mistake is one line, exit 2."""

from __future__ import annotations

import os
import re
from pathlib import Path

import luigi
import pytest

import pipeline  # noqa: F401  (the console's hooks, as luigi --module pipeline installs them)

import servers
from conftest import ROOT, cli, workspace_flags

SUMMARY_END = "===== Luigi Execution Summary ====="
LOGGED = re.compile(r"^(\d+) failed \(the tracebacks: (.+\.log)\):$")


def failure(out, workspace: Path) -> tuple[list[str], str]:
    """The lines after luigi's summary, and the log file they name (which must hold them)."""
    tail = out.stderr.rpartition(SUMMARY_END)[2].strip().splitlines()
    header = LOGGED.match(tail[0])
    assert header and int(header[1]) == len(tail) - 1, out.stderr[-3000:]
    log = Path(header[2])
    assert log.parent == workspace / "staging" / "logs"
    text = log.read_text()
    assert all(f"FAILED {line}\n" in text for line in tail[1:]) and "Traceback (most recent call last)" in text
    return tail[1:], text


def url(base: str, service: str, month: str) -> str:
    return f"{base}/{service}/{service}_tripdata_{month}.csv.gz"


# Each failure the pipeline knows, from the source and from the file: (where the source is, under
# the test server; service; month; the last line with {url} for the file's).
KNOWN = {
    "not-published": (
        "releases",
        "yellow",
        "2021-08",
        "yellow 2021-08 ({url}): not published (HTTP 404); check the month (the course's copies hold 2019-01..2021-07), "
        "or --source-kind tlc",
    ),
    "html-page": (
        "html",
        "yellow",
        "2021-01",
        "yellow 2021-01 ({url}): got an HTML/XML page, not the data file (a wrong URL or an error page); "
        "it starts b'<!DOCTYPE html><html><body>Not Found</body></html>'",
    ),
    "truncated-gzip": (
        "broken",
        "green",
        "2019-10",
        "green 2019-10 ({url}): truncated or corrupt gzip (Compressed file ended before the end-of-stream marker was reached); "
        "the download is incomplete",
    ),
    "changed-header": (
        "broken",
        "yellow",
        "2021-01",
        "yellow 2021-01 ({url}): header has column(s) the yellow catalog does not know: 'pickup_location_id'; known: VendorID, "
        "tpep_pickup_datetime, tpep_dropoff_datetime, passenger_count, trip_distance, RatecodeID, store_and_fwd_flag, "
        "PULocationID, DOLocationID, payment_type, fare_amount, extra, mta_tax, tip_amount, tolls_amount, "
        "improvement_surcharge, total_amount, congestion_surcharge, airport_fee, cbd_congestion_fee; the source's layout "
        "changed: the catalog (pipeline/catalog.py) must learn it",
    ),
}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("case", list(KNOWN))
def test_a_known_failure_ends_in_one_line_that_says_what_to_do_and_no_traceback(case, workers, workspace, http_server):
    where, service, month, says = KNOWN[case]
    base = f"{http_server}/{where}"

    out = cli("IngestMonth", "--service", service, "--month", month, "--workers", str(workers), *workspace_flags(workspace, base))

    assert out.returncode == 30, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    lines, _ = failure(out, workspace)
    assert lines == [says.format(url=url(base, service, month))]
    assert out.stderr.rstrip().endswith(lines[-1])


@pytest.mark.parametrize("workers", [1, 2])
def test_no_network_says_so_in_short_retry_warnings_and_a_last_line_with_what_to_do(workers, workspace):
    base = f"http://127.0.0.1:{servers.free_port()}/releases"  # nothing listens: a refused connection

    out = cli("IngestMonth", "--service", "yellow", "--month", "2021-01", "--workers", str(workers), *workspace_flags(workspace, base))

    assert out.returncode == 30 and "Traceback" not in out.stderr, out.stderr[-3000:]
    where = f"yellow 2021-01 ({url(base, 'yellow', '2021-01')})"
    retries = [line for line in out.stderr.splitlines() if "WARNING pipeline.retry" in line]
    assert retries == [retries[0]] and retries[0].endswith(f"{where}: ConnectionError: [Errno 111] Connection refused; try 2 of 2 in 0.1 s")
    lines, log = failure(out, workspace)
    assert lines == [
        f"{where}: ConnectionError: [Errno 111] Connection refused. Is the network up? A mirror is set with [source] base_url "
        "(--source-base-url); offline, LUIGI_CONFIG_PATH=config/samples.cfg runs on the samples the repo ships (gave up after 2 tries)"
    ]
    assert "Max retries exceeded" in log  # the whole story is in the log file


def test_a_dead_postgres_is_one_line_naming_the_server_and_its_password_nowhere(pg, workspace, http_server):
    dead = servers.free_port()

    out = cli(
        "IngestMonth", "--service", "yellow", "--month", "2021-01", "--ingest-sinks", "postgres", *pg.flags(port=dead),
        *workspace_flags(workspace, f"{http_server}/releases"),
    )  # fmt: skip

    assert out.returncode == 35 and "Traceback" not in out.stderr, out.stderr[-3000:]  # LoadPostgres's complete() cannot ask
    lines, log = failure(out, workspace)
    server = f"{pg.server['user']}@127.0.0.1:{dead}/{pg.server['database']}"
    assert lines == [
        f"yellow 2021-01: cannot connect to Postgres at {server}: IO: [libpq] Failed to connect: connection to server at "
        f'"127.0.0.1", port {dead} failed: Connection refused Is the server running on that host and accepting TCP/IP '
        "connections? (gave up after 2 tries)"
    ]
    assert pg.server["password"] not in out.stderr + log


@pytest.mark.parametrize("workers", [1, 2])
def test_every_failed_month_has_its_line_and_one_log_holds_them_all(workers, workspace, http_server):
    base = f"{http_server}/broken"

    out = cli(
        "IngestRange", "--services", "yellow", "--first", "2021-01", "--last", "2021-02", "--workers", str(workers),
        *workspace_flags(workspace, base),
    )  # fmt: skip

    assert out.returncode == 30 and "Traceback" not in out.stderr, out.stderr[-3000:]
    lines, _ = failure(out, workspace)
    assert sorted(lines) == [
        KNOWN["changed-header"][3].format(url=url(base, "yellow", "2021-01")),
        f"yellow 2021-02 ({workspace}/staging/raw/yellow/yellow_tripdata_2021-02.csv.gz): column passenger_count, data row 2: "
        "value 1.5 is not a whole number that fits int64; the source holds a value the catalog does not accept: see the row named",
    ]


class Unforeseen(luigi.Task):
    """A step with a bug: it fails with an error no module of the pipeline raises on purpose."""

    def run(self):
        raise ZeroDivisionError("a bug in a step")


def test_an_unforeseen_failure_keeps_its_traceback_and_is_named_in_the_last_line(workspace):
    out = cli(
        "Unforeseen", "--module", "test_front_door", "--local-scheduler", "--ingest-staging", str(workspace / "staging"),
        env={"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])},
    )  # fmt: skip

    assert out.returncode == 30, out.stderr[-3000:]
    assert "Traceback (most recent call last)" in out.stderr and "ZeroDivisionError: a bug in a step" in out.stderr
    lines, _ = failure(out, workspace)
    assert lines == [
        "Unforeseen(): a bug in a step (builtins.ZeroDivisionError: not a failure the pipeline expects; the traceback is above)"
    ]


def test_a_run_that_fails_nothing_prints_nothing_after_the_summary_and_writes_no_log(workspace, http_server):
    out = cli("IngestMonth", "--service", "yellow", "--month", "2021-01", *workspace_flags(workspace, f"{http_server}/releases"))

    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.rstrip().endswith(SUMMARY_END)
    assert not (workspace / "staging" / "logs").exists()


# Command-line mistakes luigi catches: one line, exit code 2, before anything runs.
@pytest.mark.parametrize(
    "args,says",
    [
        (["IngestMonht"], "luigi: error: no task IngestMonht; did you mean IngestMonth? (luigi --module pipeline lists the tasks)"),
        (["IngestZone"], "luigi: error: no task IngestZone; did you mean IngestZones? (luigi --module pipeline lists the tasks)"),
        (["Frobnicate"], "luigi: error: no task Frobnicate (luigi --module pipeline lists the tasks)"),
        (
            ["IngestMonth", "--service", "yellow", "--month", "2021-01", "--servce", "green"],
            "luigi: error: unrecognized arguments: --servce green; did you mean --service?",
        ),
        (["IngestZones", "--no-such-flag"], "luigi: error: unrecognized arguments: --no-such-flag (see --help)"),
    ],
    ids=["unknown-task", "unknown-task-near", "unknown-task-far", "unknown-flag-near", "unknown-flag"],
)
def test_a_command_line_mistake_is_one_line_exit_2_before_anything_runs(args, says, tmp_path):
    staging = tmp_path / "staging"

    out = cli(*args, "--local-scheduler", "--ingest-staging", str(staging), "--source-base-url", "http://127.0.0.1:9/nothing")

    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.splitlines() == [says]
    assert not staging.exists()  # nothing ran


def profile(tmp_path, text: str) -> dict:
    (tmp_path / "profile.cfg").write_text(text)
    return {"LUIGI_CONFIG_PATH": str(tmp_path / "profile.cfg")}


@pytest.mark.parametrize(
    "flags,settings,says",
    [
        (["--source-attempts", "two"], "", "invalid literal for int() with base 10: 'two'"),
        (
            [],
            "[source]\nattempts = two\n",
            "luigi: error: --source-attempts ([source] attempts): invalid literal for int() with base 10: 'two'",
        ),
        ([], "[source]\ntimeout = soon\n", "luigi: error: --source-timeout ([source] timeout): could not convert string to float: 'soon'"),
    ],
    ids=["flag", "settings-file-int", "settings-file-float"],
)
def test_a_setting_luigi_cannot_read_is_one_line_exit_2_before_anything_runs(flags, settings, says, tmp_path):
    staging = tmp_path / "staging"

    out = cli("IngestZones", *flags, "--local-scheduler", "--ingest-staging", str(staging), env=profile(tmp_path, settings))

    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("luigi: error: ") and lines[0].endswith(says), out.stderr
    assert not staging.exists()  # nothing ran


@pytest.mark.parametrize(
    "flags,settings,says",
    [
        (["--source-attempts", "0"], "", "luigi: error: argument --source-attempts: '0': 0 is below 1, the least it can be"),
        ([], "[source]\nattempts = 0\n", "luigi: error: --source-attempts ([source] attempts): 0 is below 1, the least it can be"),
    ],
    ids=["flag", "settings-file"],
)
def test_a_settings_value_out_of_range_is_refused_before_anything_runs(flags, settings, says, tmp_path):
    staging = tmp_path / "staging"

    out = cli("IngestZones", *flags, "--local-scheduler", "--ingest-staging", str(staging), env=profile(tmp_path, settings))

    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.splitlines() == [says]
    assert not staging.exists()  # nothing ran


def test_no_task_lists_the_tasks_a_user_runs_one_line_each():
    out = cli()

    assert out.returncode == 2
    first, *tasks = out.stderr.splitlines()
    assert first == "luigi: error: no task given; the tasks (--help after one lists its flags):"
    assert [line.split()[0] for line in tasks] == ["IngestMonth", "IngestZones", "IngestRange", "IngestRecent", "Reingest", "Republished"]
    assert tasks[0] == (
        "  IngestMonth   Download a month of one service, convert it to Parquet, put it in the lake, "
        "expose it in every configured warehouse"
    )
