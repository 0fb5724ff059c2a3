"""The command line as a user meets it: the same command does the same from any directory, a
mistake ends in one line with a documented exit code, and profiles combine."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, cli, workspace_flags

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING|ERROR) [\w.-]+: ")  # config/logging.cfg


def settings_seen_from(cwd, env: dict | None = None) -> dict:
    """The settings a command run in ``cwd`` reads (the same import luigi's --module does)."""
    code = (
        "import json, pipeline, luigi.configuration as c; g = c.get_config(); print(json.dumps({f'{s}.{k}': "
        "g.get(s, k, None) for s, k in [('lake', 'root'), ('ingest', 'staging'), ('duckdb', 'path'), "
        "('core', 'logging_conf_file'), ('core', 'lock_pid_dir'), ('retcode', 'task_failed'), ('ingest', 'sinks'), "
        "('source', 'kind'), ('postgres', 'host')]}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )
    assert out.returncode == 0, out.stderr
    import json

    return json.loads(out.stdout)


def test_the_embedded_default_applies_from_any_directory_with_its_paths_under_the_checkout(tmp_path):
    seen = settings_seen_from(tmp_path)

    assert seen == settings_seen_from(ROOT)
    assert seen["lake.root"] == str(ROOT / "data" / "lake") and seen["ingest.staging"] == str(ROOT / "data" / "staging")
    assert seen["duckdb.path"] == str(ROOT / "data" / "warehouse.duckdb")
    assert seen["core.logging_conf_file"] == str(ROOT / "config" / "logging.cfg")
    assert seen["retcode.task_failed"] == "30"


def test_a_failed_month_run_from_another_directory_exits_30_logs_as_configured_and_writes_nothing_there(workspace, http_server, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    out = cli(
        "IngestMonth", "--service", "yellow", "--month", "2021-08", *workspace_flags(workspace, f"{http_server}/releases"), cwd=elsewhere
    )

    assert out.returncode == 30, out.stderr[-2000:]  # [retcode] read, though luigi.cfg is not here
    assert "yellow 2021-08 (" in out.stderr and "not published (HTTP 404)" in out.stderr
    lines = [line for line in out.stderr.splitlines() if LOG_LINE.match(line)]
    assert lines and not any(" DEBUG " in line for line in out.stderr.splitlines())  # not luigi's DEBUG fallback
    assert list(elsewhere.iterdir()) == []  # no second data/ tree


def test_profiles_combine_in_luigi_config_path_the_later_winning(tmp_path):
    both = os.pathsep.join(["config/postgres.cfg", "config/cron.cfg"])

    seen = settings_seen_from(tmp_path, {"LUIGI_CONFIG_PATH": both})

    assert seen["postgres.host"] == "localhost"  # from postgres.cfg
    assert seen["source.kind"] == "tlc" and seen["ingest.sinks"] == "duckdb"  # cron.cfg, named last, wins
    assert seen["core.lock_pid_dir"] == str(ROOT / "data" / "locks")  # a profile's relative path is under the checkout
    assert settings_seen_from(tmp_path, {"LUIGI_CONFIG_PATH": "config/postgres.cfg"})["ingest.sinks"] == "duckdb, postgres"


def error_lines(out: subprocess.CompletedProcess) -> list[str]:
    """What a user reads: stderr without argparse's usage block and luigi's own warnings."""
    return [line for line in out.stderr.splitlines() if line.strip() and not line.startswith(("usage:", " ")) and "UserWarning" not in line]


@pytest.mark.parametrize(
    "args,code,says",
    [
        (
            ["IngestMonth", "--service", "yellow", "--month", "2021-13"],
            2,
            "luigi: error: argument --month: '2021-13' is not a month: give YYYY-MM, for example 2021-01",
        ),
        (
            ["IngestMonth", "--service", "yellow", "--month", "2021-01-15"],
            2,
            "luigi: error: argument --month: '2021-01-15' is not a month: give YYYY-MM, for example 2021-01",
        ),
        (
            ["IngestMonth", "--service", "zones", "--month", "2021-01"],
            2,
            "luigi: error: argument --service: 'zones' is not one of yellow, green, fhv, fhvhv; "
            "the zone lookup has no month: luigi --module pipeline IngestZones",
        ),
        (
            ["IngestRange", "--services", "yellow,taxis", "--first", "2021-01", "--last", "2021-02"],
            2,
            "luigi: error: argument --services: unknown taxis; known: yellow, green, fhv, fhvhv, zones",
        ),
        (["IngestMonth", "--service", "yellow"], 40, "ERROR luigi-interface: IngestMonth: --month is required (see --help)"),
        (["Download", "--service", "zones", "--month", "2021-01"], 40, "Download: zones is not monthly; drop --month (see --help)"),
        (
            ["IngestRange", "--services", "yellow", "--first", "2021-03", "--last", "2021-02"],
            40,
            "IngestRange: --first 2021-03 is after --last 2021-02 (see --help)",
        ),
    ],
    ids=["month-13", "a-day", "zones-as-a-service", "unknown-service", "no-month", "zones-with-a-month", "range-backwards"],
)
def test_a_command_line_mistake_is_one_line_and_a_documented_exit_code(args, code, says):
    out = cli(*args, "--local-scheduler")

    assert out.returncode == code, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    lines = error_lines(out)
    assert len(lines) == 1 and lines[0].endswith(says), out.stderr


def test_a_profile_that_is_not_there_is_refused_not_skipped(tmp_path):
    out = cli("IngestZones", "--local-scheduler", env={"LUIGI_CONFIG_PATH": "config/no-such.cfg"}, cwd=tmp_path)

    assert out.returncode == 2
    assert f"LUIGI_CONFIG_PATH: no settings file config/no-such.cfg (looked in {tmp_path} and {ROOT})" in out.stderr


def test_no_luigid_to_report_to_says_so_and_how_to_run_without_one(tmp_path):
    from servers import free_port

    quick = tmp_path / "quick-rpc.cfg"
    quick.write_text("[core]\nrpc_retry_wait = 1\n")  # luigi's default waits 30 s between its 3 tries
    port = free_port()

    out = cli("IngestZones", "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port), env={"LUIGI_CONFIG_PATH": str(quick)})

    assert out.returncode == 40
    assert "Traceback" not in out.stderr
    assert out.stderr.rstrip().endswith(
        f"no central scheduler (luigid) answers at http://127.0.0.1:{port}: start one "
        '(README, "The central scheduler"), or add --local-scheduler'
    )


def test_every_output_has_a_readable_name_for_logs(workspace):
    import datetime

    from luigi.task import flatten

    from pipeline import Download, ExposeBigQuery, ExposeDuckDB, LakeFile, LoadPostgres, ToParquet

    month = datetime.date(2021, 1, 1)
    for step in (Download, ToParquet, LakeFile, ExposeDuckDB, LoadPostgres, ExposeBigQuery):
        for target in flatten(step(service="yellow", month=month).output()):
            name = str(target)
            assert " object at 0x" not in name and ("2021-01" in name or "yellow" in name), (step, name)


def test_a_project_folder_without_luigi_cfg_is_refused_by_name(tmp_path):
    out = cli("IngestZones", "--local-scheduler", env={"NYC_TLC_HOME": str(tmp_path)}, cwd=tmp_path)

    assert out.returncode == 2
    assert f"no luigi.cfg in {tmp_path}: run from the project folder" in out.stderr and "Traceback" not in out.stderr
