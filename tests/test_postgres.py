"""The Postgres warehouse against a real Postgres server started by the test suite: every service,
exactly-once loads, a connection cut in the middle of the COPY, a table that does not fit, a
database that is down, and the password kept out of everything a user sees."""

from __future__ import annotations

import logging

import luigi
import pyarrow.parquet as pq
import pytest

from pipeline import IngestMonth, IngestZones
from pipeline.catalog import SERVICES
from pipeline.lake import lake_path
from pipeline.warehouses.postgres import (
    ConnectRefused,
    InvalidIdentifier,
    LoadFailed,
    LoadPostgres,
    PostgresError,
    PostgresMarker,
    TableMisfit,
)

import servers
from conftest import PG_PASSWORD, cli, configured, workspace_flags
from mirror import data_rows, month

MONTHS = [("yellow", "2021-01"), ("green", "2019-01"), ("fhv", "2019-02"), ("fhvhv", "2021-06")]


def lake_rows(service: str, month_: str | None) -> list[tuple]:
    """The month's rows as the lake holds them, in the catalog's column order."""
    table = pq.read_table(lake_path(SERVICES[service], month(month_) if month_ else None))
    return [tuple(row.values()) for row in table.to_pylist()]


def pg_rows(pg, service: str, month_: str | None) -> list[tuple]:
    columns = ", ".join(f'"{name}"' for name in SERVICES[service].schema.names)
    where = " WHERE source_month = %s" if month_ else ""
    return pg.query(f'SELECT {columns} FROM "{pg.schema}"."{SERVICES[service].table}"{where}', *([month(month_)] if month_ else []))


def same_rows(a: list[tuple], b: list[tuple]) -> bool:
    return sorted(map(repr, a)) == sorted(map(repr, b))


@pytest.mark.parametrize("service,month_", MONTHS)
def test_a_month_of_each_service_lands_whole_with_its_source_month(pg, run, mirror_files, service, month_):
    result = run(IngestMonth(service=service, month=month(month_)))

    assert not result.failures
    expected = data_rows(mirror_files[f"{service}/{service}_tripdata_{month_}.csv.gz"])
    table = SERVICES[service].table
    assert pg.count(table) == pg.count(table, month_) == expected
    assert pg.markers() == {(service, month_): expected}
    # Value for value what the lake holds, read back by an independent client.
    assert same_rows(pg_rows(pg, service, month_), lake_rows(service, month_))


def test_zones_keep_na_and_n_a_as_strings(pg, run, mirror_files):
    assert not run(IngestZones()).failures

    assert pg.count("taxi_zone_lookup") == data_rows(mirror_files["misc/taxi_zone_lookup.csv"]) == 265
    assert pg.query(
        f'SELECT "LocationID", "Borough", "Zone", service_zone FROM "{pg.schema}".taxi_zone_lookup '
        'WHERE "LocationID" IN (264, 265) ORDER BY 1'
    ) == [(264, "Unknown", "NV", "N/A"), (265, "Unknown", "NA", "N/A")]
    assert pg.markers() == {("zones", ""): 265}
    assert same_rows(pg_rows(pg, "zones", None), lake_rows("zones", None))


def test_the_tables_have_the_catalog_types_and_are_partitioned_by_source_month(pg, run):
    assert not run(IngestMonth(service="yellow", month=month("2021-01"))).failures

    types = dict(
        pg.query(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s AND table_name = 'yellow_tripdata'",
            pg.schema,
        )
    )
    assert types["VendorID"] == "bigint"
    assert types["tpep_pickup_datetime"] == "timestamp without time zone"
    assert types["trip_distance"] == "double precision"
    assert types["store_and_fwd_flag"] == "text"
    assert types["source_month"] == "date"
    assert len(types) == len(SERVICES["yellow"].columns) + 1
    assert pg.query("SELECT pg_get_partkeydef(%s::regclass)", f"{pg.schema}.yellow_tripdata") == [("LIST (source_month)",)]
    # Rows whose pickup lies outside the file's month are real, and stay with their source month.
    early = pg.query(
        f"SELECT count(*) FROM \"{pg.schema}\".yellow_tripdata WHERE source_month = '2021-01-01' AND tpep_pickup_datetime < '2021-01-01'"
    )[0][0]
    assert early > 0


def test_a_second_run_loads_nothing_and_the_month_is_there_once(pg, run, mirror_files):
    expected = data_rows(mirror_files["yellow/yellow_tripdata_2021-01.csv.gz"])
    assert not run(IngestMonth(service="yellow", month=month("2021-01"))).failures

    again = run(IngestMonth(service="yellow", month=month("2021-01")))

    assert again.started == [] and not again.failures
    assert pg.count("yellow_tripdata") == expected


def test_loading_a_month_again_replaces_exactly_that_month(pg, run, mirror_files):
    jan, jul = "2020-01", "2020-07"
    assert not run(IngestMonth(service="yellow", month=month(jan)), IngestMonth(service="yellow", month=month(jul))).failures
    before = pg.query(f'SELECT marked_at FROM "{pg.schema}"._ingested WHERE month = %s', jan)
    # On purpose: forget the month's marker, so the next run loads the month again.
    pg.query(f'DELETE FROM "{pg.schema}"._ingested WHERE month = %s RETURNING 1', jan)

    again = run(IngestMonth(service="yellow", month=month(jan)))

    assert [t for t in again.started if t.startswith("LoadPostgres")] and not again.failures
    assert pg.count("yellow_tripdata", jan) == data_rows(mirror_files[f"yellow/yellow_tripdata_{jan}.csv.gz"])
    assert pg.count("yellow_tripdata", jul) == data_rows(mirror_files[f"yellow/yellow_tripdata_{jul}.csv.gz"])
    assert pg.query(f'SELECT marked_at FROM "{pg.schema}"._ingested WHERE month = %s', jan) > before
    assert pg.tables() == ["_ingested", "yellow_tripdata", "yellow_tripdata_2020_01", "yellow_tripdata_2020_07"]


def test_three_months_of_a_new_table_loaded_by_two_worker_processes_all_arrive(pg, mirror_files):
    # (Whether two loads overlap depends on the scheduler's timing; the race on creating the
    # table is proved by test_first_loads_of_two_services_into_a_new_schema_at_once_both_succeed.)
    tasks = [IngestMonth(service="yellow", month=month(m)) for m in ("2020-01", "2020-07", "2021-01")]

    assert luigi.build(tasks, local_scheduler=True, workers=2, log_level="WARNING")

    for m in ("2020-01", "2020-07", "2021-01"):
        assert pg.count("yellow_tripdata", m) == data_rows(mirror_files[f"yellow/yellow_tripdata_{m}.csv.gz"])


def test_duckdb_and_postgres_sinks_together(pg, run, workspace, mirror_files):
    expected = data_rows(mirror_files["green/green_tripdata_2019-10.csv.gz"])
    with configured({("ingest", "sinks"): "duckdb, postgres"}):
        assert not run(IngestMonth(service="green", month=month("2019-10"))).failures
    import duckdb

    assert duckdb.connect(str(workspace / "warehouse.duckdb")).execute("SELECT count(*) FROM green_tripdata").fetchone()[0] == expected
    assert pg.count("green_tripdata", "2019-10") == expected


def test_a_connection_cut_in_the_middle_of_the_copy_keeps_nothing_and_the_rerun_loads_once(pg, run, mirror_files):
    expected = data_rows(mirror_files["yellow/yellow_tripdata_2021-01.csv.gz"])
    # The month's COPY is megabytes; connecting and checking markers take a few kB.
    proxy = servers.CuttingProxy(pg.server["port"], cut_after=256 * 1024)
    try:
        with configured(pg.settings(port=proxy.port)):
            cut = run(IngestMonth(service="yellow", month=month("2021-01")))
    finally:
        proxy.close()

    assert proxy.cuts == 1
    error = cut.failures["LoadPostgres"]
    assert isinstance(error, PostgresError)
    assert "yellow 2021-01: loading" in str(error) and f"into {pg.schema}.yellow_tripdata" in str(error)
    assert "nothing of it was kept" in str(error)
    assert isinstance(error, LoadFailed)
    assert (error.label, error.table) == ("yellow 2021-01", f"{pg.schema}.yellow_tripdata")
    assert pg.markers() == {}
    # The empty service table from before the load, and no partition or half-loaded table.
    assert pg.tables() == ["_ingested", "yellow_tripdata"]
    assert pg.count("yellow_tripdata") == 0

    rerun = run(IngestMonth(service="yellow", month=month("2021-01")))

    assert not rerun.failures
    assert [t for t in rerun.started if t.startswith("LoadPostgres")]
    assert pg.count("yellow_tripdata") == pg.count("yellow_tripdata", "2021-01") == expected
    assert pg.markers() == {("yellow", "2021-01"): expected}


def test_an_existing_table_that_does_not_fit_is_refused_and_left_alone(pg, run):
    pg.query(
        f'CREATE SCHEMA "{pg.schema}"; CREATE TABLE "{pg.schema}".green_tripdata '
        '("VendorID" bigint, lpep_pickup_datetime text, passenger_count bigint); '
        f"INSERT INTO \"{pg.schema}\".green_tripdata VALUES (1, 'x', 2); SELECT 1"
    )

    result = run(IngestMonth(service="green", month=month("2019-01")))

    message = str(result.failures["LoadPostgres"])
    assert f"table {pg.schema}.green_tripdata at postgres@127.0.0.1:{pg.server['port']}/postgres exists" in message
    assert "column lpep_pickup_datetime is text, the catalog says timestamp without time zone" in message
    assert "column trip_distance (double precision) is missing" in message
    assert "it is partitioned by nothing, the pipeline needs LIST (source_month)" in message
    error = result.failures["LoadPostgres"]
    assert isinstance(error, TableMisfit)
    assert (error.table, error.service, error.setting) == (f"{pg.schema}.green_tripdata", "green", "[postgres] schema")
    assert error.at == f"postgres@127.0.0.1:{pg.server['port']}/postgres"
    assert "column lpep_pickup_datetime is text, the catalog says timestamp without time zone" in error.problems
    assert "column trip_distance (double precision) is missing" in error.problems
    assert pg.query(f'SELECT * FROM "{pg.schema}".green_tripdata') == [(1, "x", 2)]
    assert pg.markers() == {}


def test_a_database_that_is_down_is_retried_then_named_in_a_clear_error(pg, workspace, http_server, caplog):
    dead = servers.free_port()
    caplog.set_level(logging.WARNING, logger="pipeline")
    with configured(pg.settings(port=dead)):
        with pytest.raises(PostgresError) as error:
            PostgresMarker("yellow", month("2021-01")).exists()

    assert str(error.value).startswith(f"cannot connect to Postgres at postgres@127.0.0.1:{dead}/postgres: ")
    assert "Connection refused" in str(error.value) and "(gave up after 2 tries)" in str(error.value)
    assert error.value.server == f"postgres@127.0.0.1:{dead}/postgres" and "Connection refused" in error.value.reason
    assert error.value.tries == 2
    assert [r.message for r in caplog.records if "; try 2 of 2 in " in r.message]  # one retry logged

    # Through the CLI: a scheduling error, its exit code, the server named, the password nowhere.
    flags = workspace_flags(workspace, f"{http_server}/releases")
    cmd = cli("IngestMonth", "--service", "yellow", "--month", "2021-01", *flags, "--ingest-sinks", "postgres", *pg.flags(port=dead))
    assert cmd.returncode == 35, cmd.stderr[-2000:]
    assert f"cannot connect to Postgres at postgres@127.0.0.1:{dead}/postgres" in cmd.stderr
    assert PG_PASSWORD not in cmd.stdout + cmd.stderr


def test_the_cli_loads_with_the_password_from_pgpassword_and_shows_it_nowhere(pg, workspace, http_server, mirror_files):
    flags = [*workspace_flags(workspace, f"{http_server}/releases"), "--ingest-sinks", "postgres", *pg.flags()]

    first = cli("IngestMonth", "--service", "fhv", "--month", "2019-01", *flags)
    second = cli("IngestMonth", "--service", "fhv", "--month", "2019-01", *flags)

    assert first.returncode == 0, first.stderr[-2000:]
    assert f"into {pg.schema}.fhv_tripdata at postgres@127.0.0.1:{pg.server['port']}/postgres" in first.stderr
    assert "LoadPostgres(service=fhv, month=2019-01)" in first.stderr
    assert second.returncode == 0 and "Did not run any tasks" in second.stderr
    assert pg.count("fhv_tripdata") == data_rows(mirror_files["fhv/fhv_tripdata_2019-01.csv.gz"])
    assert PG_PASSWORD not in first.stdout + first.stderr + second.stdout + second.stderr


def test_the_password_is_no_task_parameter_and_a_bad_schema_name_is_refused(pg):
    assert sorted(LoadPostgres.get_param_names()) == ["month", "recount", "service", "source_sha256"]
    with configured({("postgres", "schema"): 'x"; DROP TABLE y; --'}):
        with pytest.raises(PostgresError, match="is not a valid Postgres identifier") as refused:
            PostgresMarker("yellow", month("2021-01")).exists()
    assert isinstance(refused.value, InvalidIdentifier)
    assert (refused.value.what, refused.value.name) == ("[postgres] schema", 'x"; DROP TABLE y; --')


def test_a_wrong_password_fails_at_once_with_a_clear_error(pg, caplog, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "not-the-password")
    caplog.set_level(logging.WARNING, logger="pipeline")
    with configured({("postgres", "attempts"): "5", ("postgres", "backoff"): "2"}):
        with pytest.raises(PostgresError) as error:
            PostgresMarker("yellow", month("2021-01")).exists()

    assert str(error.value) == (
        f"cannot connect to Postgres at postgres@127.0.0.1:{pg.server['port']}/postgres: "
        'IO: [libpq] Failed to connect: connection to server at "127.0.0.1", port '
        f"{pg.server['port']} failed: FATAL: password authentication failed for user "
        '"postgres" (not retried: check [postgres] user and database, and PGPASSWORD '
        "or ~/.pgpass)"
    )
    assert isinstance(error.value, ConnectRefused)
    assert error.value.server == f"postgres@127.0.0.1:{pg.server['port']}/postgres"
    assert "password authentication failed" in error.value.reason
    assert not [r for r in caplog.records if "try 2 of" in r.getMessage()]
    assert "not-the-password" not in str(error.value)


def test_first_loads_of_two_services_into_a_new_schema_at_once_both_succeed(pg):
    import threading

    from pipeline.warehouses.postgres import Warehouse, connect

    failures = []
    for trial in range(8):
        schema = f"{pg.schema[:40]}_{trial}"
        pg.query(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE; SELECT 1')
        start = threading.Barrier(2)

        def first_load(service):
            conn = connect()
            try:
                start.wait()
                Warehouse(SERVICES[service]).ensure(conn)
            except Exception as e:  # recorded, asserted below
                failures.append(f"trial {trial} {service}: {e}")
            finally:
                conn.close()

        with configured({("postgres", "schema"): schema}):
            threads = [threading.Thread(target=first_load, args=(s,)) for s in ("yellow", "green")]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert sorted(r[0] for r in pg.query("SELECT tablename FROM pg_tables WHERE schemaname = %s", schema)) == [
            "_ingested",
            "green_tripdata",
            "yellow_tripdata",
        ]
        pg.query(f'DROP SCHEMA "{schema}" CASCADE; SELECT 1')
    assert failures == []


def test_a_reload_behind_a_long_reader_gives_up_after_lock_timeout_and_keeps_the_old_month(pg, run, mirror_files):
    assert not run(IngestMonth(service="green", month=month("2019-01"))).failures
    rows = pg.count("green_tripdata", "2019-01")
    pg.query(f"DELETE FROM \"{pg.schema}\"._ingested WHERE service = 'green'; SELECT 1")  # asked to load again
    reader = pg.connect()
    try:
        with reader.cursor() as cur:  # a long report: its transaction holds the table
            cur.execute(f'SELECT count(*) FROM "{pg.schema}".green_tripdata')
        with configured({("postgres", "lock_timeout"): "1"}):
            error = run(LoadPostgres(service="green", month=month("2019-01"))).failures["LoadPostgres"]
        message = str(error)
        assert message.startswith(
            f"green 2019-01: loading {lake_path(SERVICES['green'], month('2019-01'))} into "
            f"{pg.schema}.green_tripdata at postgres@127.0.0.1:{pg.server['port']}/postgres failed"
        )
        assert (
            f"other sessions were using {pg.schema}.green_tripdata for more than [postgres] lock_timeout (1 s), so "
            "the month could not be swapped in; the earlier load of the month is still there"
        ) in message
    finally:
        reader.rollback()
        reader.close()
    assert pg.count("green_tripdata", "2019-01") == rows
    assert pg.tables() == ["_ingested", "green_tripdata", "green_tripdata_2019_01"]

    again = run(LoadPostgres(service="green", month=month("2019-01")))  # the reader is gone
    assert not again.failures and pg.markers() == {("green", "2019-01"): rows}
