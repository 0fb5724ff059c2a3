"""The fixtures: the mirrors (tests/mirror.py) and the real HTTP server that serves them, the
emulators, luigid and Postgres (tests/servers.py), an isolated lake/staging/warehouse per test,
and the helpers that run the pipeline in-process and on the command line."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional

import luigi
import luigi.configuration
import psycopg2
import pytest
from hypothesis import HealthCheck, settings
from luigi.execution_summary import LuigiStatusCode

import pipeline  # noqa: F401  (reads the settings files, once, before any fixture sets a value)
from pipeline import settings as pipeline_settings

import mirror as mirrors
import servers
import tlc_parquet

ROOT = Path(__file__).resolve().parent.parent

# Generated cases (hypothesis): CI runs a fixed, repeatable set ("ci"); HYPOTHESIS_PROFILE=long runs
# many more, newly drawn each time (README, "Development"). No deadline: the cases run real steps.
settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "long", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def mirror_files() -> dict[str, bytes]:
    return mirrors.files()


@pytest.fixture(scope="session")
def mirror(tmp_path_factory, mirror_files) -> Path:
    """The mirrors (tests/mirror.py), built once for the session."""
    return mirrors.build(tmp_path_factory.mktemp("mirror"), mirror_files)


@pytest.fixture(scope="session")
def http_server(mirror):
    """A real HTTP server on 127.0.0.1 serving the mirror; yields its base URL."""
    with servers.http_mirror(mirror) as url:
        yield url


def configured(values: dict[tuple[str, str], str]):
    """Set luigi configuration values (as luigi.cfg would) for the block, then restore them."""
    return pipeline_settings.overridden(values)


@contextlib.contextmanager
def own_workspace(work: Path, base_url: str) -> Iterator[None]:
    """A lake and staging area of their own under ``work``, the source at ``base_url``, no
    warehouse: for a module's fixture (the workspace fixture is made for each test)."""
    values = {
        ("core", "no_configure_logging"): "true",
        ("source", "base_url"): base_url,
        ("lake", "root"): str(work / "lake"),
        ("ingest", "staging"): str(work / "staging"),
        ("ingest", "sinks"): "none",
    }
    with configured(values):
        luigi.task_register.Register.clear_instance_cache()
        yield


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


@pytest.fixture
def tlc(workspace, http_server, mirror_files):
    """The workspace, downloading from the mirror in the TLC's own layout (tests/tlc_parquet.py);
    yields that mirror's files (path -> bytes)."""
    with configured({("source", "kind"): "tlc", ("source", "base_url"): f"{http_server}/tlc"}):
        yield tlc_parquet.build(mirror_files)


@pytest.fixture
def range_source(workspace, http_server):
    """The workspace, downloading from the mirror of consecutive months (mirror.RANGE_MONTHS)."""
    set_source(f"{http_server}/range")
    return workspace


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
def s3_server(tmp_path_factory):
    """moto's S3 server for the session, behind a proxy that can cut and garble uploads; DuckDB's
    httpfs extension installed from its wheel (offline)."""
    from duckdb_extensions import import_extension

    import_extension("httpfs")
    with servers.moto_s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


def bucket_name_for(request, prefix: str = "t-") -> str:
    """A bucket (or container) name of the test's own (S3's and Azure's rules: lower case, digits,
    hyphens, at most 63). A long name is cut and ends in a hash of the whole test id, so the
    parametrized cases of one long test name still get one bucket each."""
    name = (prefix + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())).strip("-")
    if len(name) <= 60:
        return name
    return name[:51].strip("-") + "-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8]


@pytest.fixture
def aws(workspace, s3_server, monkeypatch):
    """Credentials for the S3 server only in the SDK's chain (AWS_* variables), no user's ~/.aws
    in the way; yields a client of that chain (boto3's default session would keep the credentials
    it first found, another test's)."""
    import boto3

    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server["url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server["key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server["secret"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(workspace / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(workspace / "no-aws-credentials"))
    with configured({("s3", "part_size_mib"): "5", ("s3", "attempts"): "2", ("s3", "timeout"): "5"}):
        yield boto3.session.Session().client("s3")


@pytest.fixture
def s3(workspace, s3_server, aws, request):
    """The lake in a bucket of this test's own, credentials only in the SDK's chain (aws); yields
    the test's view of it (tests/stores.py)."""
    from stores import S3Lake

    name = bucket_name_for(request)
    aws.create_bucket(Bucket=name)
    with configured({("lake", "root"): f"s3://{name}/lake", ("ingest", "sinks"): "none"}):
        yield S3Lake(name, s3_server, aws)
    s3_server["proxy"].reset(cut_after=None)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """Azurite for the session, behind a proxy that can cut and garble uploads; DuckDB's azure
    extension installed from its wheel (offline)."""
    from duckdb_extensions import import_extension

    import_extension("azure")
    with servers.azurite_server(tmp_path_factory.mktemp("azurite")) as server:
        yield server


@pytest.fixture
def az(workspace, azurite, request, monkeypatch):
    """The lake in a container of this test's own; credentials only in the SDK's chain (the
    connection string variable), no other AZURE_* variable in the way; yields the test's view of
    it (tests/stores.py)."""
    from stores import AzureLake

    for name in [k for k in os.environ if k.startswith("AZURE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite["connection_string"])
    container = AzureLake(bucket_name_for(request), azurite)  # a container's rules are a bucket's
    container.client.create_container()
    with configured(
        {
            ("lake", "root"): container.lake,
            ("azure", "block_size_mib"): "1",
            ("azure", "attempts"): "2",
            ("azure", "timeout"): "5",
            ("ingest", "sinks"): "none",
        }
    ):
        yield container
    azurite["proxy"].reset(cut_after=None)


def s3_calls(into: list):
    """Record the name of every S3 operation the pipeline's client sends (observed, not changed)."""
    from pipeline.targets import s3 as s3_target

    def hook(model, **kwargs):
        into.append(model.name)

    s3_target.client().meta.events.register("before-call.s3", hook)
    return hook


@pytest.fixture(scope="session")
def bq_server(gcs_server, tmp_path_factory):
    """bqemulator for the session, behind the recording proxy (see servers.BigQueryRecorder)."""
    work = tmp_path_factory.mktemp("bqemu")
    with servers.bqemulator(gcs_server["root"], work) as url:
        recorder = servers.BigQueryRecorder(url, gcs_server["root"], work)
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


def bigquery_dataset() -> str:
    """The dataset the `bigquery` fixture configured for this test."""
    from pipeline import settings

    return settings.bigquery().dataset


@pytest.fixture
def luigid(tmp_path):
    """A real central scheduler on 127.0.0.1 with the repo's config/luigid.cfg profile (task
    history, state file), run from a scratch directory where the profile's data/ paths land.
    One per test: task ids repeat across tests, and a scheduler remembers them."""
    work = tmp_path / "luigid"
    (work / "data" / "luigid").mkdir(parents=True)
    with servers.luigid(work, work / "data" / "luigid", {"LUIGI_CONFIG_PATH": str(ROOT / "config" / "luigid.cfg")}) as scheduler:
        yield scheduler


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
        self.failures: dict[str, BaseException] = {}  # the first failure of each task family
        self.every_failure: list[tuple[str, BaseException]] = []  # (task id, error), all of them
        self.broken: list[tuple[str, BaseException]] = []  # complete() or requires() raised: never scheduled
        self.status = None  # luigi's own verdict (LuigiStatusCode)


@pytest.fixture
def run():
    """Run tasks with luigi's own scheduler and worker, in-process; record what started, every
    failed task's exception, and luigi's own verdict. A task that could not even be scheduled (its
    complete() or requires() raised) fails the test, unless ``broken_ok``: otherwise it would look
    exactly like a task with nothing to do."""

    def _run(*tasks, broken_ok: bool = False) -> RunResult:
        result = RunResult()

        def on_start(task):
            result.started.append(task.task_id)

        def on_failure(task, exception):
            result.every_failure.append((task.task_id, exception))
            result.failures.setdefault(task.task_family, exception)

        def on_broken(task, exception):  # requires() raised
            result.broken.append((task.task_id, exception))

        def on_missing(task):  # luigi tells a complete() that raised only by this event, without the error
            try:
                task.complete()
            except Exception as error:
                result.broken.append((task.task_id, error))

        # A fresh process's view, as each CLI run has: luigi caches task instances (and a
        # range's requires()) per process.
        luigi.task_register.Register.clear_instance_cache()
        handlers = {
            luigi.Event.START: on_start,
            luigi.Event.FAILURE: on_failure,
            luigi.Event.BROKEN_TASK: on_broken,
            luigi.Event.DEPENDENCY_MISSING: on_missing,
        }
        for event, handler in handlers.items():
            luigi.Task.event_handler(event)(handler)
        try:
            outcome = luigi.build(list(tasks), local_scheduler=True, log_level="WARNING", detailed_summary=True)
        finally:
            for event, handler in handlers.items():
                luigi.Task._event_callbacks[luigi.Task][event].discard(handler)
        result.status = outcome.status
        scheduling_failed = outcome.status in (LuigiStatusCode.SCHEDULING_FAILED, LuigiStatusCode.FAILED_AND_SCHEDULING_FAILED)
        if (scheduling_failed or result.broken) and not broken_ok:
            pytest.fail(f"luigi could not schedule: {result.broken or outcome.summary_text}")
        if outcome.status in (LuigiStatusCode.FAILED, LuigiStatusCode.FAILED_AND_SCHEDULING_FAILED) and not result.every_failure:
            pytest.fail(f"luigi reports a failure the test did not see: {outcome.summary_text}")
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
