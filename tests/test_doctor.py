"""`python -m pipeline.doctor` against the real servers the suite starts: a good configuration
passes every check; each way of failing fails its own check, with the fix, and exit 1; nothing is
created or left behind; no secret is printed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import catalog, doctor

from conftest import PG_PASSWORD, ROOT, configured
from servers import free_port


def diagnose(capsys, *flags: str) -> tuple[int, dict[str, str], str]:
    """Run the doctor in-process; its exit code, its check lines by name, and all it printed."""
    code = doctor.main(list(flags))
    out = capsys.readouterr().out
    lines = {line[6:].split(":", 1)[0]: line for line in out.splitlines() if line[:4] in ("ok  ", "FAIL")}
    return code, lines, out


def failed(line: str, *words: str) -> bool:
    return line.startswith("FAIL  ") and ". Fix: " in line and all(word in line for word in words)


def test_a_good_configuration_passes_every_check_and_leaves_nothing_behind(workspace, pg, luigid, capsys):
    with configured({("ingest", "sinks"): "duckdb,postgres"}):
        code, lines, out = diagnose(capsys, "--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid["port"]))

    assert code == 0, out
    assert set(lines) == {"settings", "source", "lake", "duckdb", "postgres", "scheduler"}
    assert all(line.startswith("ok  ") for line in lines.values())
    assert out.splitlines()[-1] == "all 6 checks passed"
    assert "schema " + pg.schema + " does not exist yet; the first run creates it" in lines["postgres"]
    assert not (workspace / "lake").exists() and not (workspace / "warehouse.duckdb").exists()  # probed, then removed
    assert pg.query("SELECT count(*) FROM pg_namespace WHERE nspname = %s", pg.schema) == [(0,)]  # nothing created


@pytest.mark.parametrize("where", ["a path the server has nothing at", "a closed port"])
def test_a_source_that_does_not_answer_fails(workspace, http_server, where, capsys):
    base = f"{http_server}/releases/nothing" if where.startswith("a path") else f"http://127.0.0.1:{free_port()}"

    code, lines, _ = diagnose(capsys, "--local-scheduler", "--source-base-url", base)

    assert code == 1
    expected = "not there (HTTP 404, or no such file)" if where.startswith("a path") else "Connection refused"
    assert failed(lines["source"], f"{base}/misc/taxi_zone_lookup.csv", expected, "[source] base_url")
    assert lines["lake"].startswith("ok  ")


def test_a_lake_root_that_cannot_be_written_fails_even_for_root(workspace, capsys):
    (workspace / "a-file").write_text("not a folder")  # a folder under a file: refused to root too

    code, lines, _ = diagnose(capsys, "--local-scheduler", "--lake-root", str(workspace / "a-file" / "lake"))

    assert code == 1
    assert failed(lines["lake"], f"cannot write a file under {workspace / 'a-file' / 'lake'}: Not a directory", "--lake-root")


def test_each_replica_lake_is_probed_as_the_lake_is(workspace, capsys):
    (workspace / "a-file").write_text("not a folder")
    good, bad = workspace / "replica", workspace / "a-file" / "replica"

    code, lines, out = diagnose(capsys, "--local-scheduler", "--lake-replicas", f"{good},{bad}")

    assert code == 1, out
    assert lines["lake"] == f"ok    lake: {workspace / 'lake'}: a file written, read back and deleted"
    assert lines["replica 1"] == f"ok    replica 1: {good}: a file written, read back and deleted"
    assert failed(lines["replica 2"], f"cannot write a file under {bad}: Not a directory")


def test_a_gcs_lake_is_probed_with_an_object_and_a_missing_bucket_fails(gcs, capsys):
    code, lines, out = diagnose(capsys, "--local-scheduler")
    assert code == 0, out
    assert lines["lake"] == f"ok    lake: {gcs.lake}: an object written, read back and deleted"
    assert gcs.objects() == {}

    code, lines, _ = diagnose(capsys, "--local-scheduler", "--lake-root", "gs://no-such-bucket/lake")
    assert code == 1
    assert failed(lines["lake"], "gs://no-such-bucket/lake", "NotFound", "check that the bucket exists")


def test_an_unknown_lake_scheme_fails_with_the_fix(workspace, capsys):
    code, lines, _ = diagnose(capsys, "--local-scheduler", "--lake-root", "hdfs://nn/lake")

    assert code == 1 and list(lines) == ["settings"]  # the other checks would read it too
    assert failed(lines["settings"], "[lake] root 'hdfs://nn/lake': hdfs:// is not a lake this pipeline writes", "or the command line")


@pytest.mark.parametrize("mistake", ["a wrong password", "a wrong port"])
def test_postgres_that_refuses_or_is_not_there_fails(pg, mistake, monkeypatch, capsys):
    if mistake == "a wrong password":
        monkeypatch.setenv("PGPASSWORD", "not-the-password")
        flags = []
    else:
        flags = ["--postgres-port", str(free_port())]

    code, lines, out = diagnose(capsys, "--local-scheduler", *flags)

    assert code == 1
    assert failed(lines["postgres"], "cannot connect to Postgres", "PGPASSWORD or ~/.pgpass")
    assert ("password authentication failed" if mistake == "a wrong password" else "Connection refused") in lines["postgres"]
    assert "not-the-password" not in out and PG_PASSWORD not in out


def test_postgres_tables_that_exist_are_checked_against_the_catalog_without_a_write(pg, capsys):
    from pipeline.warehouses import postgres

    with contextlib.closing(postgres.connect()) as conn:
        postgres.Warehouse(catalog.YELLOW).ensure(conn)  # as the first load makes it
    code, lines, out = diagnose(capsys, "--local-scheduler")
    assert code == 0, out
    assert f"{pg.schema}.yellow_tripdata fit the catalog" in lines["postgres"]

    pg.query(f'CREATE TABLE "{pg.schema}".green_tripdata (x integer); SELECT 1')  # by hand
    before = pg.tables()
    code, lines, _ = diagnose(capsys, "--local-scheduler")
    assert code == 1
    assert failed(lines["postgres"], f"table {pg.schema}.green_tripdata", "exists but does not fit", "[postgres] schema")
    assert pg.tables() == before


def test_a_duckdb_file_held_by_a_writer_fails(workspace, capsys):
    path = workspace / "warehouse.duckdb"
    writer = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('open', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline() == "open\n"
        code, lines, _ = diagnose(capsys, "--local-scheduler")
    finally:
        writer.kill()
        writer.wait()

    assert code == 1
    assert failed(lines["duckdb"], f"{path} is held by another process writing it", "close that session")
    code, lines, _ = diagnose(capsys, "--local-scheduler")
    assert code == 0 and lines["duckdb"] == f"ok    duckdb: {path}: opens"


def test_a_missing_bigquery_dataset_fails_only_when_it_may_not_be_created(bigquery, capsys):
    from pipeline import settings

    code, lines, out = diagnose(capsys, "--local-scheduler")
    assert code == 0, out
    assert "does not exist yet; the first run creates it in US" in lines["bigquery"]

    code, lines, _ = diagnose(capsys, "--local-scheduler", "--bigquery-create-dataset", "false")
    assert code == 1
    assert failed(lines["bigquery"], f"dataset test.{settings.bigquery().dataset} does not exist", "create_dataset = true")


def test_an_existing_bigquery_table_that_does_not_fit_fails(bigquery, capsys):
    from google.cloud import bigquery as bq

    from pipeline.warehouses.bigquery import client

    bq_client = client()
    dataset = bq_client.create_dataset(f"test.{doctor.settings.bigquery().dataset}")
    bq_client.create_table(
        bq.Table(f"{dataset.project}.{dataset.dataset_id}.external_yellow_tripdata", schema=[bq.SchemaField("x", "INTEGER")])
    )

    code, lines, _ = diagnose(capsys, "--local-scheduler")

    assert code == 1
    assert failed(lines["bigquery"], "table external_yellow_tripdata: it is a TABLE table, not an EXTERNAL one", "[bigquery] dataset")


def test_luigid_is_checked_when_a_command_would_use_it(workspace, luigid, capsys):
    code, lines, _ = diagnose(capsys, "--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid["port"]))
    assert code == 0 and lines["scheduler"] == f"ok    scheduler: luigid at http://127.0.0.1:{luigid['port']} answers"

    closed = free_port()
    code, lines, _ = diagnose(capsys, "--scheduler-host", "127.0.0.1", "--scheduler-port", str(closed))
    assert code == 1
    assert failed(lines["scheduler"], f"luigid at http://127.0.0.1:{closed} does not answer", "--local-scheduler")

    with configured({("core", "local_scheduler"): "true"}):  # the commands' default: luigid unused
        code, lines, _ = diagnose(capsys, "--scheduler-port", str(closed))
    assert code == 0 and lines["scheduler"] == "ok    scheduler: not used: the commands run with --local-scheduler"


SECRET = st.text(st.sampled_from("abcXYZ0189-_.~!$&'()*+,;=:%@/?# "), min_size=4, max_size=20)


@given(user=SECRET.filter(lambda s: ":" not in s), password=SECRET, pg_password=SECRET)
def test_no_secret_is_printed(pg, http_server, user, password, pg_password, capsys):
    """A base_url's user and password (quoted as a URL holds them) and PGPASSWORD, whatever they
    are, on checks that pass and checks that fail."""
    base = http_server.replace("://", f"://{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}@")
    os.environ["PGPASSWORD"] = pg_password
    try:
        for where, port in ((f"{base}/releases", pg.server["port"]), (f"{base}/releases/nothing", free_port())):
            code, lines, out = diagnose(capsys, "--local-scheduler", "--source-base-url", where, "--postgres-port", str(port))
            for secret in {password, urllib.parse.quote(password, safe=""), pg_password, f"{user}:"}:
                assert secret not in out
            assert "://***" in lines["source"]
    finally:
        os.environ["PGPASSWORD"] = PG_PASSWORD


def test_as_a_user_runs_it_the_settings_files_and_each_values_origin(tmp_path, http_server, postgres_server):
    profile = tmp_path / "mine.cfg"
    profile.write_text(f"[lake]\nroot = {tmp_path / 'lake'}\n[ingest]\nsinks = duckdb,postgres\n[duckdb]\npath = {tmp_path / 'w.duckdb'}\n")
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(profile), "PGPASSWORD": PG_PASSWORD, "PGPORT": str(postgres_server["port"])}
    flags = ["--local-scheduler", "--source-base-url", http_server.replace("://", "://me:hunter2-secret@") + "/releases"]
    flags += ["--ingest-staging", str(tmp_path / "staging"), "--postgres-host", postgres_server["host"]]
    flags += ["--postgres-user", postgres_server["user"], "--postgres-database", postgres_server["database"]]

    out = subprocess.run([sys.executable, "-m", "pipeline.doctor", *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"ok    settings: read luigi.cfg, then {profile} (the later winning)"
    assert f"        [lake] root = {tmp_path / 'lake'}  ({profile})" in lines
    assert f"        [ingest] staging = {tmp_path / 'staging'}  (command line)" in lines
    assert "        [source] kind = releases  (luigi.cfg)" in lines
    assert "        [core] scheduler_host = localhost  (default)" in lines
    assert f"        [postgres] port =   (luigi.cfg, empty: PGPORT from the environment, {postgres_server['port']})" in lines
    assert "        [postgres] password: from PGPASSWORD (not shown)" in lines
    assert f"        [source] base_url = {http_server.replace('://', '://***@')}/releases  (command line)" in lines
    assert lines[-1] == "all 6 checks passed"
    assert "hunter2-secret" not in out.stdout + out.stderr and PG_PASSWORD not in out.stdout + out.stderr
