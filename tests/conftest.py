"""Real parts for the tests: a mirror of the releases built from the verbatim TLC samples in
tests/data/tlc, a real HTTP server on 127.0.0.1 that serves it (with routes that misbehave the
ways real downloads do), and an isolated lake/staging/warehouse per test."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import os
import re
import shutil
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import luigi
import luigi.configuration
import psycopg2
import pytest

import pipeline  # noqa: F401  (reads the settings files, once, before any fixture sets a value)

import servers
import tlc_parquet

DATA = Path(__file__).parent / "data" / "tlc"
S3 = DATA / "s3_2020-09_first1024B"
ROOT = Path(__file__).resolve().parent.parent


def complete_lines(data: bytes) -> bytes:
    """The 1 KiB captures end mid-row: keep whole lines only."""
    return data[: data.rfind(b"\n") + 1]


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# path in the mirror -> the csv bytes it serves (gzipped for .csv.gz); built once per session.
def _mirror_files() -> dict[str, bytes]:
    read = lambda name: (DATA / name).read_bytes()  # noqa: E731
    # fhv as the DTC copies publish 2019 (7 columns, mixed case; see tests/data/tlc/SOURCES.md):
    # the real TLC rows of 2019-02 with the re-issue's Affiliated_base_number column added.
    fhv_rows = complete_lines(read("s3_2020-09_first1024B/fhv_tripdata_2019-02.first1024B.csv")).splitlines()[1:]
    fhv_dtc = (
        b"\r\n".join(
            [b"dispatching_base_num,pickup_datetime,dropOff_datetime,PUlocationID,DOlocationID,SR_Flag,Affiliated_base_number"]
            + [row + b"," + row.split(b",")[0] for row in fhv_rows]
        )
        + b"\r\n"
    )
    return {
        # The stored sample is LF; the published file is CRLF (SOURCES.md): restore it.
        "yellow/yellow_tripdata_2021-01.csv.gz": crlf(read("yellow_tripdata_2021-01.head.csv")),
        "yellow/yellow_tripdata_2020-01.csv.gz": read("yellow_tripdata_2020-01.head499_tail500.csv"),
        "yellow/yellow_tripdata_2020-07.csv.gz": read("yellow_tripdata_2020-07.head.csv"),
        "yellow/yellow_tripdata_2019-03.csv.gz": complete_lines(read("s3_2020-09_first1024B/yellow_tripdata_2019-03.first1024B.csv")),
        "green/green_tripdata_2019-01.csv.gz": read("green_tripdata_2019-01.head.csv"),
        "green/green_tripdata_2019-10.csv.gz": read("green_tripdata_2019-10.head.csv"),
        "fhv/fhv_tripdata_2019-01.csv.gz": complete_lines(read("s3_2020-09_first1024B/fhv_tripdata_2019-01.first1024B.csv")),
        "fhv/fhv_tripdata_2019-02.csv.gz": fhv_dtc,
        "fhvhv/fhvhv_tripdata_2019-02.csv.gz": complete_lines(read("s3_2020-09_first1024B/fhvhv_tripdata_2019-02.first1024B.csv")),
        "fhvhv/fhvhv_tripdata_2021-06.csv.gz": read("fhvhv_tripdata_2021-06.head.csv"),
        "misc/taxi_zone_lookup.csv": read("taxi_zone_lookup.csv"),
    }


RANGE_MONTHS = ("2020-01", "2020-02", "2020-03", "2020-04")
COURSE_MONTHS = tuple(f"{y}-{m:02d}" for y in (2019, 2020, 2021) for m in range(1, 13) if f"{y}-{m:02d}" <= "2021-07")


def data_rows(csv_bytes: bytes) -> int:
    return len([line for line in csv_bytes.splitlines()[1:] if line.strip()])


@pytest.fixture(scope="session")
def mirror_files() -> dict[str, bytes]:
    return _mirror_files()


def _consecutive_months(root: Path, months: tuple[str, ...], yellow_sample: str, mirror_files: dict[str, bytes]) -> None:
    """A releases-layout mirror at ``root``: yellow (``yellow_sample``'s rows) and green (the
    green 2019-01 sample's) for each of ``months``, and the zone lookup."""
    for service, sample in (("yellow", yellow_sample), ("green", "green/green_tripdata_2019-01.csv.gz")):
        for m in months:
            path = root / service / f"{service}_tripdata_{m}.csv.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(gzip.compress(mirror_files[sample]))
    (root / "misc").mkdir()
    (root / "misc" / "taxi_zone_lookup.csv").write_bytes(mirror_files["misc/taxi_zone_lookup.csv"])


@pytest.fixture(scope="session")
def mirror(tmp_path_factory, mirror_files) -> Path:
    """A directory laid out like the releases: {service}/{file}.csv.gz and misc/taxi_zone_lookup.csv."""
    root = tmp_path_factory.mktemp("mirror")
    for rel, content in mirror_files.items():
        path = root / "releases" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(content) if rel.endswith(".gz") else content)
    # A run of consecutive months for backfills: yellow and green 2020-01 to 2020-04 (each month
    # the real rows of one sample month), and the zones; 2020-05 onwards is "not published yet".
    _consecutive_months(root / "range", RANGE_MONTHS, "yellow/yellow_tripdata_2020-01.csv.gz", mirror_files)
    # Every month the course's releases hold for yellow and green (2019-01 to 2021-07), each a
    # small real sample, for the whole backfill of the course in one command.
    _consecutive_months(root / "course", COURSE_MONTHS, "yellow/yellow_tripdata_2019-03.csv.gz", mirror_files)
    # The TLC's own layout: Parquet files with each month's physical types (tests/tlc_parquet.py).
    for rel, content in tlc_parquet.build(mirror_files).items():
        path = root / "tlc" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    # The broken mirror: what real downloads go wrong with.
    broken = root / "broken"
    (broken / "trip-data").mkdir(parents=True)
    whole = (root / "tlc" / "trip-data" / "yellow_tripdata_2021-02.parquet").read_bytes()
    (broken / "trip-data" / "yellow_tripdata_2021-02.parquet").write_bytes(whole[: len(whole) * 6 // 10])
    (broken / "green").mkdir()
    shutil.copy(DATA / "green_tripdata_2019-10.truncated.csv.gz", broken / "green" / "green_tripdata_2019-10.csv.gz")
    (broken / "yellow").mkdir()
    yellow = mirror_files["yellow/yellow_tripdata_2021-01.csv.gz"]
    changed = yellow.replace(b"PULocationID", b"pickup_location_id", 1)
    (broken / "yellow" / "yellow_tripdata_2021-01.csv.gz").write_bytes(gzip.compress(changed))
    header, first, *rest = yellow.splitlines(keepends=True)
    fractional = first.replace(b"00:36:12,1,", b"00:36:12,1.5,", 1)  # passenger_count 1.5
    assert fractional != first
    (broken / "yellow" / "yellow_tripdata_2021-02.csv.gz").write_bytes(gzip.compress(header + first + fractional + b"".join(rest)))
    # Only the pickup time of each real row: a file that is not a whole yellow month.
    pickups = b"".join(
        b'"tpep_pickup_datetime"\r\n' if i == 0 else line.split(b",")[1] + b"\r\n" for i, line in enumerate(yellow.splitlines())
    )
    (broken / "yellow" / "yellow_tripdata_2021-03.csv.gz").write_bytes(gzip.compress(pickups))
    # The header and no row.
    (broken / "green").joinpath("green_tripdata_2019-01.csv.gz").write_bytes(
        gzip.compress(mirror_files["green/green_tripdata_2019-01.csv.gz"].splitlines(keepends=True)[0])
    )
    return root


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the mirror; a first path segment picks a misbehaviour:
    /releases/...  the files as they are      /broken/...  bad files
    /range/...     consecutive months, for backfills
    /course/...    every month of yellow and green the releases hold (small samples)
    /tlc/...       the TLC's Parquet layout (trip-data/, misc/)
    /html/...      an HTML error page with 200
    /flaky/...     503 on the first request for a path, then the file
    /down/...      always 503
    /short/...     announces the full length, sends half, closes
    /slow/...      sends half, then stalls (for killing a download midway)
    /trickle/...   announces the full length, then one byte every 0.2 s (never stalls a read)
    /dribble/...   chunked transfer: the first byte alone, then the rest (a valid file whose
                   first chunk is shorter than its magic)
    /onthefly/...  gzips the body on the fly (Content-Encoding: gzip) when the client accepts it
    /cut/...       the first 263 lines only, with no Content-Length (a text file cut short)
    /loop/...      redirects to itself
    """

    hits: dict[str, int] = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        mode, _, rest = self.path.lstrip("/").partition("/")
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if mode in ("releases", "broken", "range", "course", "tlc"):
            return super().do_GET()
        file = Path(self.directory) / "releases" / rest
        if mode == "html":
            return self._send(200, b"<!DOCTYPE html><html><body>Not Found</body></html>", "text/html")
        if mode == "down" or (mode == "flaky" and self.hits[self.path] == 1):
            return self._send(503, b"busy", "text/plain")
        if mode == "loop":
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if not file.exists():
            return self._send(404, b"Not Found", "text/plain")
        body = file.read_bytes()
        if mode == "flaky":
            return self._send(200, body, "application/octet-stream")
        if mode == "onthefly":
            if "gzip" not in self.headers.get("Accept-Encoding", ""):
                return self._send(200, body, "text/csv")
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            zipped = gzip.compress(body)
            self.send_header("Content-Length", str(len(zipped)))
            self.end_headers()
            return self.wfile.write(zipped)
        if mode == "dribble":
            self.protocol_version = "HTTP/1.1"
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (body[:1], body[1:], b""):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                time.sleep(0.2)
            self.close_connection = True
            return
        if mode in ("trickle", "cut"):
            self.send_response(200)
            if mode == "cut":
                body = b"".join(body.splitlines(keepends=True)[:263])
            else:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            pieces = [body] if mode == "cut" else [body[i : i + 1] for i in range(min(len(body), 200))]
            for piece in pieces:
                self.wfile.write(piece)
                self.wfile.flush()
                time.sleep(0.2)
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        if mode == "slow":
            time.sleep(60)
        self.close_connection = True

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


@pytest.fixture(scope="session")
def http_server(mirror):
    """A real HTTP server on 127.0.0.1 serving the mirror; yields its base URL."""
    handler = lambda *a, **kw: _Handler(*a, directory=str(mirror), **kw)  # noqa: E731
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@contextlib.contextmanager
def configured(values: dict[tuple[str, str], str]):
    """Set luigi configuration values (as luigi.cfg would) for the block, then restore them."""
    config = luigi.configuration.get_config()
    saved = {k: config.get(*k, None) for k in values}
    for (section, key), value in values.items():
        if not config.has_section(section):
            config.add_section(section)
        config.set(section, key, value)
    try:
        yield
    finally:
        for (section, key), value in saved.items():
            if value is None:
                config.remove_option(section, key)
            else:
                config.set(section, key, value)


@pytest.fixture
def workspace(tmp_path, http_server):
    """An isolated lake, staging area and warehouse, and the source set to the test server."""
    with configured(
        {
            # Leave Python logging to pytest (luigi's fileConfig would drop pytest's capture handler).
            ("core", "no_configure_logging"): "true",
            ("source", "base_url"): f"{http_server}/releases",
            ("source", "attempts"): "3",
            ("source", "backoff"): "0.05",
            ("source", "timeout"): "5",
            ("lake", "root"): str(tmp_path / "lake"),
            ("ingest", "staging"): str(tmp_path / "staging"),
            ("ingest", "sinks"): "duckdb",
            ("duckdb", "path"): str(tmp_path / "warehouse.duckdb"),
        }
    ):
        yield tmp_path


# The test server's password: it must reach libpq through PGPASSWORD only, and never show
# anywhere else (the tests look for it in logs and messages).
PG_PASSWORD = "pg-secret-7f3a9c"


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """fake-gcs-server for the session, behind a proxy that can cut uploads (see servers.py)."""
    with servers.fake_gcs_server(tmp_path_factory.mktemp("gcs")) as server:
        yield server


class Bucket:
    def __init__(self, client, bucket, server: dict):
        self.client, self.bucket, self.server = client, bucket, server
        self.name = bucket.name
        self.lake = f"gs://{bucket.name}/lake"

    def objects(self) -> dict[str, object]:
        return {blob.name: blob for blob in self.client.list_blobs(self.name)}


@pytest.fixture
def gcs(workspace, gcs_server, request, monkeypatch):
    """The lake in a bucket of this test's own on the emulator, reached with the official client
    the way users point it at an emulator (STORAGE_EMULATOR_HOST)."""
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server["url"])
    client = storage.Client(project="test")
    name = ("t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()))[:60].strip("-")
    bucket = client.create_bucket(name)
    with configured(
        {("lake", "root"): f"gs://{name}/lake", ("gcs", "project"): "test", ("gcs", "retry_deadline"): "3", ("ingest", "sinks"): "none"}
    ):
        yield Bucket(client, bucket, gcs_server)
    gcs_server["proxy"].reset(cut_after=None)


@pytest.fixture(scope="session")
def bq_server(gcs_server, tmp_path_factory):
    """bqemulator for the session, behind the recording proxy (see servers.BigQueryRecorder)."""
    with servers.bqemulator(gcs_server["root"], tmp_path_factory.mktemp("bqemu")) as url:
        recorder = servers.BigQueryRecorder(url)
        yield recorder
        recorder.close()


@pytest.fixture
def bigquery(gcs, bq_server, request, monkeypatch):
    """The bigquery sink on, over the test's GCS lake, in a dataset of the test's own, with the
    official client pointed at the emulator the way users do it (BIGQUERY_EMULATOR_HOST)."""
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", bq_server.url)
    dataset = ("t_" + re.sub(r"\W+", "_", request.node.name.lower()))[:60]
    bq_server.requests.clear()
    with configured(
        {
            ("bigquery", "project"): "test",
            ("bigquery", "dataset"): dataset,
            ("bigquery", "location"): "US",
            ("bigquery", "create_dataset"): "true",
            ("ingest", "sinks"): "bigquery",
        }
    ):
        yield bq_server


@pytest.fixture
def luigid(tmp_path):
    """A real central scheduler on 127.0.0.1 with the repo's config/luigid.cfg profile (task
    history, state file), run from a scratch directory where the profile's data/ paths land.
    One per test: task ids repeat across tests, and a scheduler remembers them."""
    work = tmp_path / "luigid"
    (work / "data" / "luigid").mkdir(parents=True)
    port = servers.free_port()
    log = open(work / "luigid.out", "wb")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("luigid")),
            "--address",
            "127.0.0.1",
            "--port",
            str(port),
            "--logdir",
            str(work / "data" / "luigid"),
        ],
        cwd=work,
        env={**os.environ, "LUIGI_CONFIG_PATH": str(ROOT / "config" / "luigid.cfg")},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        servers._wait_http(f"{url}/api/task_list", proc, 30, "luigid")
        yield {"port": port, "url": url, "dir": work}
    finally:
        servers._stop(proc)
        log.close()


@pytest.fixture(scope="session")
def postgres_server():
    """A real Postgres server for the session (password authentication on 127.0.0.1)."""
    with servers.postgres_server(PG_PASSWORD) as server:
        yield server


class Postgres:
    """The test's view of the Postgres warehouse: its own schema on the session's server, and
    an independent client (psycopg2) to check what the pipeline wrote."""

    def __init__(self, server: dict, schema: str):
        self.server, self.schema = server, schema
        self.conn = self.connect()
        self.conn.autocommit = True

    def connect(self) -> psycopg2.extensions.connection:
        """A connection of the test's own, as any other client of the server would open it."""
        return psycopg2.connect(
            host=self.server["host"],
            port=self.server["port"],
            user=self.server["user"],
            dbname=self.server["database"],
            password=self.server["password"],
        )

    def settings(self, port: Optional[int] = None) -> dict[tuple[str, str], str]:
        return {
            ("postgres", "host"): self.server["host"],
            ("postgres", "port"): str(port or self.server["port"]),
            ("postgres", "user"): self.server["user"],
            ("postgres", "database"): self.server["database"],
            ("postgres", "schema"): self.schema,
            ("postgres", "attempts"): "2",
            ("postgres", "backoff"): "0.05",
            ("postgres", "connect_timeout"): "5",
        }

    def flags(self, port: Optional[int] = None) -> list[str]:
        return [arg for (section, key), value in self.settings(port).items() for arg in (f"--{section}-{key.replace('_', '-')}", value)]

    def query(self, sql: str, *params) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def count(self, table: str, month: Optional[str] = None) -> int:
        where = " WHERE source_month = %s" if month else ""
        return self.query(f'SELECT count(*) FROM "{self.schema}"."{table}"{where}', *([month + "-01"] if month else []))[0][0]

    def tables(self) -> list[str]:
        return [r[0] for r in self.query("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", self.schema)]

    def markers(self) -> dict[tuple[str, str], int]:
        if "_ingested" not in self.tables():
            return {}
        return {(s, m): n for s, m, n in self.query(f'SELECT service, month, rows FROM "{self.schema}"._ingested')}


@pytest.fixture
def pg(workspace, postgres_server, request, monkeypatch):
    """The Postgres sink on, in a schema of this test's own on the session's server; the
    password in PGPASSWORD, as a user would give it."""
    schema = "t_" + re.sub(r"\W", "_", request.node.name.lower())[:50]
    monkeypatch.setenv("PGPASSWORD", PG_PASSWORD)
    db = Postgres(postgres_server, schema)
    db.query(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE; SELECT 1')
    with configured({**db.settings(), ("ingest", "sinks"): "postgres"}):
        yield db
    db.conn.close()


def set_source(base_url: str) -> None:
    luigi.configuration.get_config().set("source", "base_url", base_url)


class RunResult:
    def __init__(self):
        self.started: list[str] = []
        self.failures: dict[str, BaseException] = {}


@pytest.fixture
def run():
    """Run tasks with luigi's own scheduler and worker, in-process; record what started and
    the exception of every failed task."""

    def _run(*tasks) -> RunResult:
        result = RunResult()

        def on_start(task):
            result.started.append(task.task_id)

        def on_failure(task, exception):
            result.failures[task.task_family] = exception

        # A fresh process's view, as each CLI run has: luigi caches task instances (and a
        # range's requires()) per process.
        luigi.task_register.Register.clear_instance_cache()
        luigi.Task.event_handler(luigi.Event.START)(on_start)
        luigi.Task.event_handler(luigi.Event.FAILURE)(on_failure)
        try:
            luigi.build(list(tasks), local_scheduler=True, log_level="WARNING")
        finally:
            luigi.Task._event_callbacks[luigi.Task][luigi.Event.START].discard(on_start)
            luigi.Task._event_callbacks[luigi.Task][luigi.Event.FAILURE].discard(on_failure)
        return result

    return _run


LUIGI = [str(Path(sys.executable).with_name("luigi")), "--module", "pipeline"]


def cli(*args: str, env: Optional[dict] = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`luigi --module pipeline ...` as a user runs it, from the repo root unless ``cwd`` says."""
    return subprocess.run([*LUIGI, *args], cwd=cwd, capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})})


def cli_popen(*args: str, env: Optional[dict] = None, output=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([*LUIGI, *args], cwd=ROOT, stdout=output, stderr=output, env={**os.environ, **(env or {})})


def workspace_flags(workspace: Path, base_url: str) -> list[str]:
    return [
        "--local-scheduler",
        "--source-base-url",
        base_url,
        "--lake-root",
        str(workspace / "lake"),
        "--ingest-staging",
        str(workspace / "staging"),
        "--duckdb-path",
        str(workspace / "warehouse.duckdb"),
        "--source-backoff",
        "0.05",
        "--source-attempts",
        "2",
    ]
