"""Running it like production: a real luigid with the repo's profile, its JSON API and task
history, two worker processes sharing one range, and the exit codes cron sees."""

from __future__ import annotations

import json
import re
import sqlite3
import time
import urllib.parse
import urllib.request

import duckdb

from conftest import ROOT, cli, cli_popen, workspace_flags
from mirror import COURSE_MONTHS, RANGE_MONTHS, data_rows


def api(luigid: dict, method: str, **data) -> dict:
    query = urllib.parse.urlencode({"data": json.dumps(data)}) if data else ""
    with urllib.request.urlopen(f"{luigid['url']}/api/{method}?{query}", timeout=10) as answer:
        return json.load(answer)["response"]


def central(workspace, base_url: str, luigid: dict) -> list[str]:
    """The workspace's flags, reporting to luigid instead of a local scheduler."""
    flags = [f for f in workspace_flags(workspace, base_url) if f != "--local-scheduler"]
    return [*flags, "--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid["port"])]


def test_a_month_against_luigid_every_step_done_in_its_graph_and_history(pg, workspace, http_server, luigid):
    flags = central(workspace, f"{http_server}/releases", luigid)

    done = cli("IngestMonth", "--service", "green", "--month", "2019-10", *flags, "--ingest-sinks", "duckdb,postgres", *pg.flags())

    assert done.returncode == 0, done.stderr[-3000:]
    ingest = next(
        task_id
        for task_id, task in api(luigid, "task_list", status="DONE").items()
        if task["name"] == "IngestMonth"
        and task["params"] == {"service": "green", "month": "2019-10", "source_sha256": "", "recount": "False"}
    )
    graph = api(luigid, "dep_graph", task_id=ingest)
    assert sorted((task["name"], task["status"]) for task in graph.values()) == [
        ("Download", "DONE"),
        ("ExposeDuckDB", "DONE"),
        ("IngestMonth", "DONE"),
        ("LakeFile", "DONE"),
        ("LoadPostgres", "DONE"),
        ("ToParquet", "DONE"),
    ]
    assert graph[ingest]["deps"] and all(
        graph[dep]["name"] in ("LakeFile", "ExposeDuckDB", "LoadPostgres") for dep in graph[ingest]["deps"]
    )
    # The task history the profile records (the embedded database).
    with sqlite3.connect(luigid["dir"] / "data" / "luigid" / "task-history.db") as db:
        recorded = {
            name
            for (name,) in db.execute(
                "SELECT DISTINCT t.name FROM tasks t JOIN task_events e ON e.task_id = t.id WHERE e.event_name = 'DONE'"
            )
        }
    assert {"Download", "ToParquet", "LakeFile", "ExposeDuckDB", "LoadPostgres", "IngestMonth"} <= recorded


def test_the_course_backfill_in_one_command_against_luigid_and_again_with_nothing_to_do(workspace, http_server, luigid):
    command = [
        "IngestRange",
        "--services",
        "yellow,green,zones",
        "--first",
        "2019-01",
        "--last",
        "2021-07",
        *central(workspace, f"{http_server}/course", luigid),
        "--workers",
        "2",
    ]

    first = cli(*command)

    assert first.returncode == 0, first.stderr[-3000:]
    assert len(COURSE_MONTHS) == 31
    with duckdb.connect(str(workspace / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM _ingested").fetchone()[0] == 2 * 31 + 1
        assert con.execute("SELECT count(DISTINCT month) FROM yellow_tripdata").fetchone()[0] == 31
    done = api(luigid, "task_list", status="DONE")
    assert sum(task["name"] == "IngestMonth" for task in done.values()) == 62

    again = cli(*command)

    assert again.returncode == 0 and "Did not run any tasks" in again.stderr, again.stderr[-3000:]


def test_two_workers_share_one_range_and_ingest_every_month_once(pg, workspace, http_server, luigid, mirror_files):
    flags = [
        *central(workspace, f"{http_server}/range", luigid),
        "--ingest-sinks",
        "duckdb,postgres",
        *pg.flags(),
        "--no-lock",
    ]  # two workers on one machine; on two machines each has its own lock
    command = ["IngestRange", "--services", "yellow,green", "--first", "2020-01", "--last", "2020-04", *flags]
    logs = [workspace / f"worker{n}.log" for n in (1, 2)]
    workers = [cli_popen(*command, output=open(log, "w")) for log in logs]

    codes = [w.wait(timeout=180) for w in workers]

    output = "".join(log.read_text() for log in logs)
    # 10 is [retcode] already_running: a worker saw some of its tasks being run by the other one.
    assert set(codes) <= {0, 10}, output[-3000:]
    assert "failed" not in output.split("Luigi Execution Summary")[-2]
    for service, sample in (("yellow", "yellow/yellow_tripdata_2020-01.csv.gz"), ("green", "green/green_tripdata_2019-01.csv.gz")):
        for m in RANGE_MONTHS:
            assert pg.count(f"{service}_tripdata", m) == data_rows(mirror_files[sample])
            assert output.count(f"{service} {m}: putting ") == 1  # each lake file written once
            assert len(re.findall(rf"{service} {m}: loading \S+ into the postgres warehouse", output)) == 1  # loaded once
    with duckdb.connect(str(workspace / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM _ingested").fetchone()[0] == 8
    assert all("running   IngestMonth" in log.read_text() or "running   LakeFile" in log.read_text() for log in logs), (
        "both workers should have taken part"
    )


def test_cron_exit_codes_done_failed_and_already_running(workspace, http_server, luigid):
    cron = {"LUIGI_CONFIG_PATH": str(ROOT / "config" / "cron.cfg")}
    # The profile reads the TLC's Parquet files; the test mirrors here have the releases' layout.
    lock = ["--lock-pid-dir", str(workspace / "locks"), "--source-kind", "releases"]
    recent = ["IngestRecent", "--services", "green", "--until", "2020-06", "--months", "3"]

    fine = cli(*recent, *central(workspace, f"{http_server}/range", luigid), *lock, env=cron)
    assert fine.returncode == 0, fine.stderr[-3000:]
    assert "green 2020-05..2020-06: not published at the source yet (2 month(s))" in fine.stderr  # the newest published month is 2020-04

    failed = cli(*recent, *central(workspace, f"{http_server}/html", luigid), *lock, env=cron)
    assert failed.returncode == 30, failed.stderr[-3000:]

    # A run still going (its download stalls) and the same command started again.
    slow_lock = workspace / "slow-locks"
    slow_flags = [*central(workspace, f"{http_server}/slow", luigid), "--lock-pid-dir", str(slow_lock), "--source-kind", "releases"]
    slow_cmd = ["IngestMonth", "--service", "yellow", "--month", "2021-01", *slow_flags]
    first = cli_popen(*slow_cmd, env=cron)
    try:
        deadline = time.monotonic() + 30
        while not list(slow_lock.glob("*.pid")):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.05)
        second = cli(*slow_cmd, env=cron)
    finally:
        first.kill()
        first.wait(timeout=10)
    assert second.returncode == 10, second.stderr[-3000:]
    assert "already running" in (second.stdout + second.stderr).lower() or "Pid(s)" in second.stderr
