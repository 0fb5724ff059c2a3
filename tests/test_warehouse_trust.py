"""Every wait of a warehouse is bounded, loads cannot deadlock, and readers never block ingests
(issue 26: #8, #9, #16, #17's Postgres parts), against the real Postgres server the suite starts
and real processes:

- Postgres: reloads of one service by several processes at once, in generated orders, end with
  every month exactly once; readers holding generated kinds of locks make a reload either finish
  or give up within [postgres] lock_timeout with the table named and the old rows intact; a
  connection lost mid-COPY reads as such; lock_timeout is a bound for every value it takes.
- DuckDB: generated interleavings of read-only sessions and ExposeDuckDB runs in other processes
  never wait for a reader and never lose a marker row.
"""

from __future__ import annotations

import math
import multiprocessing
import subprocess
import sys
import threading
import time

import duckdb
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from pipeline import IngestMonth, IngestZones, retry
from pipeline.lake_file import LakeFile
from pipeline.warehouses import duckdb_views, postgres
from pipeline.warehouses.duckdb_views import ExposeDuckDB
from pipeline.warehouses.postgres import LoadPostgres, PostgresError

from conftest import configured
from mirror import RANGE_MONTHS, month

FORK = multiprocessing.get_context("fork")  # children take this test's settings (configured) along
RANGE = [(service, m) for service in ("yellow", "green") for m in RANGE_MONTHS]


class Reload(LoadPostgres):
    """LoadPostgres run by the test itself, outside a luigi worker: no scheduler to report to."""

    def report(self, done, total, what):
        pass


class HeldLoad(Reload):
    """LoadPostgres whose first progress report, made once its COPY has begun, waits for the other
    loads of the test (a barrier): all of them are inside their transactions at once, which is
    when loads that take their locks in different orders deadlock."""

    barrier = None

    def report(self, done, total, what):
        if HeldLoad.barrier is not None and not getattr(self, "_held", False):
            self._held = True
            HeldLoad.barrier.wait(timeout=30)


def reload(service: str, month_: str | None, task_class=Reload) -> None:
    """Load the lake's month (or the zones) into Postgres again, as LoadPostgres runs it."""
    task = task_class(service=service, month=month(month_)) if month_ else task_class(service="zones", month=None)
    task.load(task.input(), task.input().record())


def lake_rows(service: str, month_: str | None) -> int:
    return LakeFile(service=service, month=month(month_) if month_ else None).output().record().rows


def _reload_in_turn(jobs: list[tuple[str, str]], held: bool, errors) -> None:
    for i, (service, m) in enumerate(jobs):
        try:
            reload(service, m, HeldLoad if held and i == 0 else Reload)
        except Exception as e:  # reported to the test, asserted there
            errors.put(f"{service} {m}: {e}")


def reload_in_processes(plans: list[list[tuple[str, str]]], held: bool) -> list[str]:
    """Each plan's reloads, in its order, in a process of its own, all at once; the errors."""
    errors = FORK.Queue()
    HeldLoad.barrier = FORK.Barrier(len(plans)) if held else None
    try:
        workers = [FORK.Process(target=_reload_in_turn, args=(plan, held, errors)) for plan in plans]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)
            assert w.exitcode == 0, f"a reloading process hung or died (exit code {w.exitcode})"
    finally:
        HeldLoad.barrier = None
    found = []
    while not errors.empty():
        found.append(errors.get())
    return found


def assert_each_month_once(pg, months: list[tuple[str, str]]) -> None:
    assert pg.markers() == {(s, m): lake_rows(s, m) for s, m in months} | {("zones", ""): 265}
    for s, m in months:
        assert pg.count(f"{s}_tripdata", m) == lake_rows(s, m)
    partitions = sorted(f"{s}_tripdata_{m.replace('-', '_')}" for s, m in months)
    assert [t for t in pg.tables() if "_tripdata_" in t] == partitions  # and no _loading table left


@pytest.fixture
def range_in_postgres(pg, range_source, run):
    """Yellow and green 2020-01..04 and the zones in the lake and in Postgres."""
    assert not run(*[IngestMonth(service=s, month=month(m)) for s, m in RANGE], IngestZones()).failures
    return pg


# ---- #9: loads ordered so they cannot deadlock ------------------------------------------------


def test_two_reloads_of_one_service_at_once_do_not_deadlock(range_in_postgres):
    pg = range_in_postgres
    # Both inside their COPY at once, then both swap in their month: the issue's `deadlock
    # detected` on DROP TABLE when each held a lock on yellow_tripdata from the start.
    errors = reload_in_processes([[("yellow", "2020-01")], [("yellow", "2020-02")]], held=True)

    assert errors == []
    assert_each_month_once(pg, RANGE)


@given(data=st.data())
@hypothesis_settings(max_examples=8)  # each case is several processes loading several months
def test_concurrent_reloads_in_any_order_end_with_every_month_once(range_in_postgres, data):
    pg = range_in_postgres
    services = data.draw(st.sampled_from([("yellow",), ("yellow", "green")]), label="services")
    months = [(s, m) for s, m in RANGE if s in services]
    processes = data.draw(st.integers(2, 3), label="processes")
    # Distinct first months, so the first loads can meet inside their COPY (one of a month
    # already being loaded waits for that load before its own COPY begins).
    firsts = data.draw(st.lists(st.sampled_from(months), min_size=processes, max_size=processes, unique=True), label="first months")
    plans = [[first] + data.draw(st.lists(st.sampled_from(months), max_size=4), label="then") for first in firsts]
    held = data.draw(st.booleans(), label="first loads meet inside their COPY")

    assert reload_in_processes(plans, held) == []
    assert_each_month_once(pg, RANGE)


# ---- #8 and #17: every lock wait under lock_timeout, with the table named ---------------------

READERS = {
    # kind: (what the open transaction read, which reloads must wait for it)
    "service table": ('SELECT count(*) FROM "{schema}".yellow_tripdata', {"yellow"}),
    "the month's partition": ('SELECT count(*) FROM "{schema}".yellow_tripdata_2020_01', {"yellow"}),
    "another month's partition": ('SELECT count(*) FROM "{schema}".yellow_tripdata_2020_02', set()),
    "zones table": ('SELECT count(*) FROM "{schema}".taxi_zone_lookup', {"zones"}),
    "marker table": ('SELECT count(*) FROM "{schema}"._ingested', set()),
}
RELOADS = {"yellow": ("yellow", "2020-01"), "zones": ("zones", None)}
GAVE_UP = {
    "yellow": "so the month could not be swapped in; the earlier load of the month is still there. Run again when they are done",
    "zones": "so the zones could not be replaced; the earlier zones are still there. Run again when they are done",
}
SLACK = 10.0  # seconds beyond lock_timeout for the COPY and the process around it


def reload_with_readers(pg, target: str, kinds: list[str], lock_timeout: str) -> tuple[BaseException | None, float, bool]:
    """Reload ``target`` while a session of each kind holds what it read; (error, seconds, ended
    within lock_timeout + SLACK). The readers end before this returns, in any case."""
    readers = []
    outcome: dict = {}
    try:
        for kind in kinds:
            reader = pg.connect()
            readers.append(reader)
            with reader.cursor() as cur:  # a long report: its transaction keeps what it read
                cur.execute(READERS[kind][0].format(schema=pg.schema))

        def load():
            started = time.monotonic()
            try:
                reload(*RELOADS[target])
            except BaseException as e:  # handed to the test
                outcome["error"] = e
            outcome["seconds"] = time.monotonic() - started

        with configured({("postgres", "lock_timeout"): lock_timeout}):
            loader = threading.Thread(target=load)
            loader.start()
            loader.join(timeout=float(lock_timeout) + SLACK)
            bounded = not loader.is_alive()
    finally:
        for reader in readers:  # lets a reload that waits without a bound end, too
            reader.rollback()
            reader.close()
    loader.join()
    return outcome.get("error"), outcome["seconds"], bounded


def assert_gave_up_naming_the_table(pg, error, target: str, lock_timeout: str) -> None:
    assert isinstance(error, PostgresError), error
    table = "yellow_tripdata" if target == "yellow" else "taxi_zone_lookup"
    assert isinstance(error.__cause__, postgres.LockTimeout)
    assert error.__cause__.table == f"{pg.schema}.{table}"
    assert (
        f"failed, and nothing of it was kept (one transaction): other sessions were using {pg.schema}.{table} "
        f"for more than [postgres] lock_timeout ({float(lock_timeout):g} s), {GAVE_UP[target]}"
    ) in str(error)


def test_a_zones_reload_behind_a_long_reader_gives_up_after_lock_timeout_and_keeps_the_zones(range_in_postgres):
    pg = range_in_postgres
    before = pg.query(f'SELECT * FROM "{pg.schema}".taxi_zone_lookup ORDER BY 1')

    error, seconds, bounded = reload_with_readers(pg, "zones", ["zones table"], "1")

    assert bounded, "the zones' reload waited for the reader beyond [postgres] lock_timeout"
    assert_gave_up_naming_the_table(pg, error, "zones", "1")
    assert pg.query(f'SELECT * FROM "{pg.schema}".taxi_zone_lookup ORDER BY 1') == before
    assert pg.markers()[("zones", "")] == 265


def test_a_lock_timeout_under_half_a_millisecond_still_bounds_the_wait(range_in_postgres):
    # It was sent as '0ms', which Postgres takes as no timeout at all.
    error, seconds, bounded = reload_with_readers(range_in_postgres, "yellow", ["service table"], "0.0004")

    assert bounded
    assert_gave_up_naming_the_table(range_in_postgres, error, "yellow", "0.0004")


@given(
    target=st.sampled_from(sorted(RELOADS)),
    kinds=st.lists(st.sampled_from(sorted(READERS)), unique=True, max_size=3),
    lock_timeout=st.sampled_from(["0.2", "0.5", "1"]),
)
@hypothesis_settings(max_examples=12)  # a blocked case waits its lock_timeout
def test_a_reload_beside_readers_finishes_or_gives_up_in_time_with_the_old_rows_intact(range_in_postgres, target, kinds, lock_timeout):
    pg = range_in_postgres
    service, month_ = RELOADS[target]
    table = "yellow_tripdata" if target == "yellow" else "taxi_zone_lookup"
    before = (pg.count(table, month_), pg.markers(), pg.tables())

    error, seconds, bounded = reload_with_readers(pg, target, kinds, lock_timeout)

    assert bounded, f"waited beyond lock_timeout + {SLACK} s"
    if any(target in READERS[kind][1] for kind in kinds):
        assert_gave_up_naming_the_table(pg, error, target, lock_timeout)
    else:
        assert error is None, error
    assert (pg.count(table, month_), pg.markers(), pg.tables()) == before  # old rows, or the same rows again
    assert pg.count(table, month_) == lake_rows(service, month_)


@given(seconds=st.floats(max_value=0) | st.just(math.nan) | st.floats(min_value=2**31 / 1000, exclude_min=True))
def test_a_lock_timeout_that_bounds_nothing_is_refused_by_name(seconds):
    with configured({("postgres", "lock_timeout"): repr(seconds)}):
        with pytest.raises(PostgresError) as refused:
            postgres.lock_timeout_ms()
    assert str(refused.value).startswith(f"[postgres] lock_timeout = {seconds:g}: must be more than 0 and at most 2.14748e+06 seconds")
    assert isinstance(refused.value, postgres.LockTimeoutRefused)
    assert (refused.value.seconds, refused.value.most) == (pytest.approx(seconds, nan_ok=True), (2**31 - 1) / 1000)


@given(seconds=st.floats(min_value=0, max_value=(2**31 - 1) / 1000, exclude_min=True))
def test_a_lock_timeout_is_sent_in_whole_milliseconds_never_rounded_down_to_none(seconds):
    with configured({("postgres", "lock_timeout"): repr(seconds)}):
        sent = postgres.lock_timeout_ms()
    assert 1 <= sent <= 2**31 - 1
    assert sent / 1000 >= seconds or sent == 2**31 - 1


# ---- #17: a server gone mid-COPY reads as a lost connection -----------------------------------


class GoneMidCopy(Reload):
    """LoadPostgres whose server ends its session once the COPY has begun, as a restart (pg_ctl
    stop -m fast) ends every session: with pg_terminate_backend, from another session."""

    def report(self, done, total, what):
        if not getattr(self, "_ended", False):
            self._ended = True
            with GoneMidCopy.admin.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'nyc-tlc-luigi'")


def test_a_server_gone_mid_copy_reads_as_a_lost_connection_and_the_rerun_loads_once(range_in_postgres):
    pg = range_in_postgres
    pg.query(f"DELETE FROM \"{pg.schema}\"._ingested WHERE service = 'yellow' AND month = '2020-03' RETURNING 1")
    before = pg.count("yellow_tripdata", "2020-03")
    GoneMidCopy.admin = pg.conn

    with pytest.raises(PostgresError) as lost:
        reload("yellow", "2020-03", GoneMidCopy)

    server = f"postgres@127.0.0.1:{pg.server['port']}/postgres"
    assert isinstance(lost.value.__cause__, postgres.ConnectionLost)
    assert str(lost.value).startswith(f"yellow 2020-03: loading {LakeFile(service='yellow', month=month('2020-03')).output().path} into ")
    assert f"failed, and nothing of it was kept (one transaction): the connection to Postgres at {server} was lost " in str(lost.value)
    assert str(lost.value).endswith("; the server rolls it back, and a re-run loads it once")
    assert isinstance(lost.value, postgres.LoadFailed)
    assert (lost.value.label, lost.value.table, lost.value.server) == ("yellow 2020-03", f"{pg.schema}.yellow_tripdata", server)
    assert lost.value.lake_file == LakeFile(service="yellow", month=month("2020-03")).output().path
    assert lost.value.__cause__.server == server
    assert pg.count("yellow_tripdata", "2020-03") == before and ("yellow", "2020-03") not in pg.markers()

    reload("yellow", "2020-03")

    assert_each_month_once(pg, RANGE)


# ---- #16: readers never block an ingest (DuckDB) ----------------------------------------------

READER = """
import duckdb, sys, time
con = duckdb.connect(sys.argv[1], read_only=True)
before = con.execute("SELECT count(*) FROM _ingested").fetchone()[0]
print("open", flush=True)
time.sleep(float(sys.argv[2]))
# The session still reads the file it opened, whole, whatever was swapped in meanwhile.
assert con.execute("SELECT count(*) FROM _ingested").fetchone()[0] == before
print("read", flush=True)
"""


def hold_read_only(path, seconds: float) -> subprocess.Popen:
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline() == "open\n"
    return reader


def exposed(path) -> set[tuple[str, str]]:
    with duckdb.connect(str(path), read_only=True) as con:
        return set(con.execute("SELECT service, month FROM _ingested").fetchall())


@pytest.fixture
def range_in_lake(range_source, run, monkeypatch):
    """The range's months in the lake, the first exposed in DuckDB (the warehouse file exists);
    the bound on waits short, so a wait for a reader fails the test quickly."""
    with configured({("ingest", "sinks"): "none"}):
        assert not run(*[IngestMonth(service=s, month=month(m)) for s, m in RANGE]).failures
    assert not run(ExposeDuckDB(service="yellow", month=month("2020-01"))).failures
    monkeypatch.setattr(retry, "DUCKDB_LOCK_SECONDS", 3.0)
    return range_source / "warehouse.duckdb"


def test_a_read_only_session_does_not_block_the_ingest(range_in_lake, run):
    reader = hold_read_only(range_in_lake, 8)
    try:
        started = time.monotonic()
        result = run(IngestMonth(service="yellow", month=month("2020-02")))
        took = time.monotonic() - started
        assert not result.failures, result.failures
        assert took < retry.DUCKDB_LOCK_SECONDS
        assert reader.poll() is None  # the session was open the whole time
        assert exposed(range_in_lake) == {("yellow", "2020-01"), ("yellow", "2020-02")}
    finally:
        out, _ = reader.communicate(timeout=30)
    assert out == "read\n" and reader.returncode == 0


def _expose(service: str, m: str, outcome) -> None:
    started = time.monotonic()
    try:
        ExposeDuckDB(service=service, month=month(m)).run()
        outcome.put((service, m, "", time.monotonic() - started))
    except Exception as e:  # reported to the test
        outcome.put((service, m, str(e), time.monotonic() - started))


@given(data=st.data())
@hypothesis_settings(max_examples=6)  # each case runs processes that sleep
def test_read_only_sessions_and_exposes_in_any_interleaving_never_wait_for_a_reader_nor_lose_a_marker(range_in_lake, data):
    path = range_in_lake
    months = data.draw(st.lists(st.sampled_from(RANGE), min_size=2, max_size=4, unique=True), label="months exposed")
    # Readers that stay longer than an ingest may wait: one that blocked an ingest would fail it.
    holds = data.draw(st.lists(st.sampled_from([0.5, 4.0]), max_size=3), label="readers' seconds")
    steps = data.draw(st.permutations([("expose", sm) for sm in months] + [("read", s) for s in holds]), label="order")
    before = exposed(path)
    outcome = FORK.Queue()
    writers, readers = [], []
    try:
        for kind, what in steps:
            if kind == "read":
                readers.append(hold_read_only(path, what))
            else:
                writers.append(FORK.Process(target=_expose, args=(*what, outcome)))
                writers[-1].start()
            time.sleep(data.draw(st.sampled_from([0, 0.05, 0.3]), label="pause"))
        for w in writers:
            w.join(timeout=60)
            assert w.exitcode == 0
        results = [outcome.get(timeout=5) for _ in writers]
    finally:
        for r in readers:
            out, _ = r.communicate(timeout=60)
            assert out == "read\n" and r.returncode == 0
    assert [(s, m, error) for s, m, error, _ in results if error] == []
    assert all(seconds < retry.DUCKDB_LOCK_SECONDS for *_, seconds in results)
    assert exposed(path) == before | set(months)  # no writer lost another's marker row


def test_an_ingest_waits_for_another_writing_one_at_most_the_bound_and_names_it(range_in_lake):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.truncate(0); f.write(str(os.getpid())); f.flush(); print('held', flush=True); time.sleep(60)",
            f"{range_in_lake}.lock",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        started = time.monotonic()
        with pytest.raises(duckdb_views.WarehouseBusy) as busy:
            ExposeDuckDB(service="yellow", month=month("2020-03")).run()
        assert time.monotonic() - started < retry.DUCKDB_LOCK_SECONDS + 2
    finally:
        holder.kill()
        holder.wait()
    assert str(busy.value) == (
        f"the DuckDB warehouse {range_in_lake} has been held by another process for 3 s (another ingest writes it: "
        f"{range_in_lake}.lock names PID {holder.pid}); run again when that ingest has ended"
    )
    assert exposed(range_in_lake) == {("yellow", "2020-01")}
