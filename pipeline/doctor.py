"""The doctor: checks a configuration before the first run, and says how to fix what fails.

    python -m pipeline.doctor [--local-scheduler] [--section-key VALUE ...]

It takes the same settings a pipeline command would (luigi.cfg, LUIGI_CONFIG_PATH, and the same
`--section-key` flags) and checks, one line each, passed or failed with the fix:
- settings: the files read, in order, and where each value that matters comes from (a file,
  the default, the command line, or libpq's environment);
- source: the zone lookup, which every source publishes, answers one body-less request;
- lake: a small object is written, read back and deleted under `[lake] root` (local, gs://, s3:// or az://),
  and under each replica lake of `[lake] replicas` (`replica 1`, ...);
- each warehouse of `[ingest] sinks`: it opens or connects with the credentials a run would use,
  its schema or dataset exists or can be created, and an existing table fits the catalog
  (nothing created, nothing written);
- scheduler: luigid answers /api/task_list, unless commands run with --local-scheduler.
The exit code is 1 when any check fails, else 0. No secret is printed: every line passes
`redaction.scrub`. Each server is asked once, with no retries: a doctor that waits two minutes
for a dead source is no help.

A plain module rather than a luigi task: a task would need a scheduler (the very thing it checks,
when luigid is down), would end in luigi's summary, which buries the checklist, and would map its
exit code through [retcode]; there is no `Doctor` task.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import dataclasses
import os
import secrets
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional

import luigi
import luigi.configuration
import luigi.interface
import requests

from pipeline import catalog, download, luigi_internals, retry, settings
from pipeline.dataset_task import TEMP_AREA
from pipeline.redaction import redact, scrub
from pipeline.targets import azure, gcs, s3
from pipeline.warehouses import bigquery, bigquery_table, postgres
from pipeline.warehouses import sink as sinks

# DuckDB and google's clients are imported in the checks that use them, for their cost alone (as
# pipeline/warehouses/duckdb_views.py and pipeline/targets/gcs.py do): a check that the settings
# do not call for never loads them.

PROBE = b"nyc-tlc-luigi doctor\n"
LUIGID_TIMEOUT = 5.0


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)  # shown under the line

    def lines(self) -> list[str]:
        # One line a check, whatever the servers' messages hold (a JSON body, a traceback's lines).
        detail = " ".join(self.detail.split())
        head = f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {detail}" + ("" if self.ok else f". Fix: {self.fix}")
        return [scrub(line) for line in (head, *(f"        {note}" for note in self.notes))]


def passed(name: str, detail: str) -> Check:
    return Check(name, True, detail)


def failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, False, detail, fix)


# The settings as luigi.Config classes, each a [section] of luigi.cfg and --section-key flags.
SECTIONS = [c for c in vars(settings).values() if isinstance(c, type) and issubclass(c, luigi.Config) and c.__module__ == settings.__name__]
# luigi's own [core] settings that say where luigid is, as flags of their own (luigi also reads
# them as default-scheduler-host, ...).
CORE = ("scheduler_host", "scheduler_port", "scheduler_url")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.doctor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--local-scheduler", action="store_true", help="the commands will run with --local-scheduler: luigid is not checked"
    )
    for name in CORE:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=f"core.{name}", metavar="VALUE")
    for section in SECTIONS:
        for name, _ in section.get_params():
            parser.add_argument(f"--{section.__name__}-{name.replace('_', '-')}", dest=f"{section.__name__}.{name}", metavar="VALUE")
    return parser


def files_read() -> list[Path]:
    """The settings files luigi read, in order, each once (the checkout's luigi.cfg is read
    first, and again as the current directory's when a command runs from the checkout)."""
    paths = [Path(p).resolve() for p in luigi_internals.config_paths() if os.path.isfile(p)]
    return list(dict.fromkeys(paths))


def shown(path: Path) -> str:
    return str(path.relative_to(settings.HOME)) if path.is_relative_to(settings.HOME) else str(path)


def origins(files: list[Path]) -> dict[tuple[str, str], str]:
    """(section, key) -> the last file that sets it, keys spelt with underscores."""
    found = {}
    for path in files:
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(path)
        for section in parser.sections():
            for key in parser[section]:
                name = key.replace("-", "_")
                if section == "core" and name.removeprefix("default_") in CORE:
                    name = name.removeprefix("default_")
                found[(section, name)] = shown(path)
    return found


# Where libpq looks when a [postgres] value is empty.
LIBPQ_ENV = {"host": "PGHOST", "port": "PGPORT", "database": "PGDATABASE", "user": "PGUSER"}


def _reader(config: Callable[[], object], key: str) -> Callable[[], object]:
    """``key`` of the settings section ``config``, read when asked."""
    return lambda: getattr(config(), key)


def relevant(sinks: list[str]) -> list[tuple[str, str, Callable[[], object]]]:
    """The values that decide where a run reads and writes: (section, key, value)."""
    values: list[tuple[str, str, Callable[[], object]]] = [
        ("source", "kind", lambda: settings.source().kind),
        ("source", "base_url", lambda: redact(settings.source().base_url) or f"(empty: {download.base_url()})"),
        ("lake", "root", lambda: settings.lake().root),
        ("ingest", "staging", lambda: settings.ingest().staging),
        ("ingest", "sinks", lambda: settings.ingest().sinks),
    ]
    if settings.lake().replicas:
        values.append(("lake", "replicas", lambda: settings.lake().replicas))
    if settings.lake().root.startswith("gs://"):
        values.append(("gcs", "project", lambda: settings.gcs().project))
    if "duckdb" in sinks:
        values.append(("duckdb", "path", lambda: settings.duckdb().path))
    if "postgres" in sinks:
        values += [("postgres", key, _reader(settings.postgres, key)) for key in ("host", "port", "database", "user", "schema")]
    if {"bigquery", "bigquery_table"} & set(sinks):
        values += [("bigquery", key, _reader(settings.bigquery, key)) for key in ("project", "dataset", "location", "create_dataset")]
    core = luigi.interface.core
    values += [("core", key, _reader(core, key)) for key in ("local_scheduler", "scheduler_host", "scheduler_port")]
    return values


def check_settings(cmdline: set[tuple[str, str]]) -> Check:
    files = files_read()
    where = origins(files)
    check = passed("settings", "read " + ", then ".join(map(shown, files)) + (" (the later winning)" if len(files) > 1 else ""))
    for config in SECTIONS:  # each must parse, as a run's first task would find
        try:
            config()
        except Exception as e:  # luigi raises a ValueError, a ParameterException or others for a bad value
            return failed(
                "settings", f"[{config.__name__}]: {e}", f"correct it where it is set: {', '.join(map(shown, files))} or the command line"
            )
    for section, key, value in relevant(settings.ingest().sink_names()):
        origin = "command line" if (section, key) in cmdline else where.get((section, key), "default")
        got = value()
        if section == "postgres" and got == "" and os.environ.get(LIBPQ_ENV.get(key, "")):
            origin += f", empty: {LIBPQ_ENV[key]} from the environment, {os.environ[LIBPQ_ENV[key]]}"
        check.notes.append(f"[{section}] {key} = {got}  ({origin})")
    if "postgres" in settings.ingest().sink_names():
        password = "PGPASSWORD (not shown)" if os.environ.get("PGPASSWORD") else "the password file, if any (PGPASSFILE, ~/.pgpass)"
        check.notes.append(f"[postgres] password: from {password}")
    return check


@contextlib.contextmanager
def one_try() -> Iterator[None]:
    """Each server asked once: the doctor says what fails, a run is what waits for it to heal."""
    with settings.overridden({("source", "attempts"): "1", ("postgres", "attempts"): "1"}):
        yield


def check_source() -> Check:
    kind = settings.source().kind
    url = download.source_url(catalog.ZONES, None)
    try:
        found = download.published(url)
    except download.SourceError as e:
        return failed(
            "source", str(e), "check [source] base_url (--source-base-url) and that the server is up; offline, use a mirror (file://...)"
        )
    if found is None:
        return failed(
            "source",
            f"{redact(url)}: not there (HTTP 404, or no such file)",
            f"check [source] base_url (--source-base-url): a {kind} source has the zone lookup at <base_url>/"
            f"{catalog.SOURCES[kind].path(catalog.ZONES, None)}, or set [source] kind (--source-kind) to the kind it is",
        )
    return passed("source", f"{redact(url)} answers ({found.get('size') or '?'} bytes, the zone lookup)")


@contextlib.contextmanager
def made(folder: Path) -> Iterator[None]:
    """``folder``, made for the block where missing, and the folders made removed after it: the
    doctor leaves nothing behind."""
    missing = []
    here = folder
    while not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        yield
    finally:
        for path in missing:  # deepest first
            with contextlib.suppress(OSError):
                path.rmdir()


def probe_local(folder: Path) -> None:
    """Write, read back and delete a small file in ``folder``'s temp area (where a killed
    doctor's file is swept like any other temporary file)."""
    with made(folder / TEMP_AREA):
        probe = folder / TEMP_AREA / f"doctor.{os.getpid()}-{secrets.token_hex(4)}"
        try:
            probe.write_bytes(PROBE)
            if probe.read_bytes() != PROBE:
                raise OSError(0, "what was read back is not what was written", str(probe))
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()


def probe_name(prefix: str) -> str:
    """A probe object's name under ``prefix``, in the lake's temp area (as probe_local's file)."""
    return f"{prefix.strip('/')}/{TEMP_AREA}/doctor.{os.getpid()}-{secrets.token_hex(4)}".lstrip("/")


def round_trip(root: str, put: Callable[[bytes], object], get: Callable[[], bytes], delete: Callable[[], object]) -> None:
    """PROBE put, read back and compared, then deleted whatever happened: the object-store probes."""
    put(PROBE)
    try:
        if get() != PROBE:
            raise OSError(0, "what was read back is not what was written", root)
    finally:
        delete()


def probe_gcs(root: str) -> None:
    bucket, prefix = gcs.split(root)
    blob = gcs.client().bucket(bucket).blob(probe_name(prefix))
    timeout = settings.gcs().timeout
    round_trip(
        root,
        lambda data: blob.upload_from_string(data, timeout=timeout, **retry.once()),
        lambda: blob.download_as_bytes(timeout=timeout, **retry.once()),
        lambda: blob.delete(timeout=timeout, **retry.once()),
    )


def probe_s3(root: str) -> None:
    import boto3
    import botocore.config

    bucket, prefix = s3.split(root)
    key = probe_name(prefix)
    timeout = settings.s3().timeout
    once = botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=timeout, read_timeout=timeout)
    client = boto3.session.Session().client("s3", config=once)
    round_trip(
        root,
        lambda data: client.put_object(Bucket=bucket, Key=key, Body=data),
        lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read(),
        lambda: client.delete_object(Bucket=bucket, Key=key),
    )


def probe_azure(root: str) -> None:
    from azure.storage.blob import BlobClient

    container, prefix = azure.split(root)
    made = azure.client(root).get_blob_client(container, probe_name(prefix))
    # Asked once, no retry (the doctor says what fails; a run is what waits for it to heal).
    blob = BlobClient.from_blob_url(made.url, credential=made.credential, retry_total=0, connection_timeout=settings.azure().timeout)
    round_trip(root, blob.upload_blob, lambda: blob.download_blob().readall(), blob.delete_blob)


def check_lake(root: str, name: str = "lake") -> Check:
    """``root`` (the lake, or a replica lake named ``name``: of a scheme the settings check
    accepted, settings.LakeRoot) written, read back and deleted."""
    if root.startswith(azure.SCHEME):
        from azure.core.exceptions import AzureError  # for its cost (see the module's imports)

        try:
            probe_azure(root)
        except (AzureError, azure.AzureError, OSError) as e:
            why = e.why if isinstance(e, azure.AzureError) else azure.reason(e, azure.split(root)[0])
            return failed(
                name,
                f"cannot write, read and delete a blob under {root}: {why}",
                f"check that the container exists and that {azure.CREDENTIALS} may write, read and delete blobs in it",
            )
        return passed(name, f"{root}: a blob written, read back and deleted")
    if root.startswith(s3.SCHEME):
        from boto3.exceptions import Boto3Error  # for its cost (see the module's imports)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            probe_s3(root)
        except (BotoCoreError, ClientError, Boto3Error, OSError) as e:
            return failed(
                name,
                f"cannot write, read and delete an object under {root}: {s3.reason(e, s3.split(root)[0])}",
                f"check that the bucket exists and that {s3.CREDENTIALS} may put, get and delete objects in it "
                "(AWS_ENDPOINT_URL for an S3-compatible store)",
            )
        return passed(name, f"{root}: an object written, read back and deleted")
    if root.startswith("gs://"):
        from google.api_core.exceptions import GoogleAPIError  # for its cost (see the module's imports)
        from google.auth.exceptions import GoogleAuthError

        try:
            probe_gcs(root)
        except (GoogleAPIError, GoogleAuthError, requests.RequestException, OSError) as e:
            return failed(
                name,
                f"cannot write, read and delete an object under {root}: {type(e).__name__}: {e}",
                "check that the bucket exists and that the credentials (GOOGLE_APPLICATION_CREDENTIALS, or gcloud auth "
                "application-default login) may create, read and delete objects in it",
            )
        return passed(name, f"{root}: an object written, read back and deleted")
    try:
        probe_local(Path(root))
    except OSError as e:
        return failed(
            name,
            f"cannot write a file under {root}: {e.strerror or e} ({e.filename})",
            "set [lake] root (--lake-root) to a folder this user can create and write, or make it so",
        )
    return passed(name, f"{root}: a file written, read back and deleted")


def check_duckdb() -> Check:
    import duckdb  # for its cost (see the module's imports)

    path = settings.duckdb().path
    if settings.lake().root.startswith("gs://"):
        return failed(
            "duckdb",
            f"the duckdb sink reads the lake from local disk, and [lake] root is {settings.lake().root}",
            "set [ingest] sinks (--ingest-sinks) to the warehouses that read a gs:// lake (bigquery, postgres), or none",
        )
    if not os.path.exists(path):
        try:
            probe_local(Path(path).parent)
        except OSError as e:
            return failed(
                "duckdb",
                f"{path} is not there, and its folder cannot be written: {e.strerror or e} ({e.filename})",
                "set [duckdb] path (--duckdb-path) to a file in a folder this user can write",
            )
        return passed("duckdb", f"{path}: not there yet; the first run creates it (its folder is writable)")
    try:
        duckdb.connect(path, read_only=True).close()
    except duckdb.Error as e:
        if "lock" in str(e).lower():
            return failed(
                "duckdb",
                f"{path} is held by another process writing it: {e}",
                "close that session (read while ingesting with duckdb.connect(path, read_only=True)), then run again",
            )
        return failed("duckdb", f"{path} cannot be opened as a DuckDB file: {e}", "set [duckdb] path (--duckdb-path) to another file")
    return passed("duckdb", f"{path}: opens")


def check_postgres() -> Check:
    try:
        tables = [postgres.Warehouse(svc) for svc in catalog.SERVICES.values()]
        conn = postgres.connect()
    except postgres.PostgresError as e:
        return failed(
            "postgres",
            str(e),
            "check [postgres] host, port, database and user (--postgres-host ...) or libpq's PGHOST ..., "
            "the password in PGPASSWORD or ~/.pgpass, and that the server is up",
        )
    schema = tables[0].schema_name
    try:
        with contextlib.closing(conn), conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_namespace WHERE nspname = $1", [schema])
            exists = bool(cur.fetchone()[0])
            if exists:
                cur.execute("SELECT has_schema_privilege(current_user, $1, 'CREATE')", [schema])
            else:
                cur.execute("SELECT has_database_privilege(current_user, current_database(), 'CREATE')")
            if not cur.fetchone()[0]:
                where = f"schema {schema}" if exists else "the database (to create schema " + schema + ")"
                return failed(
                    "postgres",
                    f"{postgres.server()}: the user may not create tables in {where}",
                    f"GRANT CREATE ON {'SCHEMA ' + schema if exists else 'DATABASE ...'} TO the user, "
                    "or set [postgres] schema (--postgres-schema)",
                )
            found = [table.name for table in tables if table.existing_fits(cur)]
            conn.rollback()
    except postgres.PostgresError as e:
        return failed("postgres", str(e), "drop or rename that table, or set [postgres] schema (--postgres-schema) to another schema")
    except postgres.Error as e:
        return failed(
            "postgres", f"{postgres.server()}: {postgres._reason(e)}", "check the server's log, and the user's rights on the schema"
        )
    state = f"schema {schema} exists" if exists else f"schema {schema} does not exist yet; the first run creates it"
    return passed(
        "postgres", f"{postgres.server()}: connects; {state}; " + (f"{', '.join(found)} fit the catalog" if found else "no tables yet")
    )


def check_bigquery(sink: str) -> Check:
    from google.api_core.exceptions import GoogleAPIError, NotFound  # for its cost (see the module's imports)
    from google.auth.exceptions import GoogleAuthError

    wanted, differences = {
        "bigquery": (bigquery.wanted_external_table, bigquery.differences),
        "bigquery_table": (bigquery_table.wanted_native_table, bigquery_table.differences),
    }[sink]
    cfg = settings.bigquery()
    try:
        sinks.require_lake(sink, sink, "gcs")
        client = bigquery.client()
        dataset = bigquery.dataset_id(client)
        try:
            client.get_dataset(dataset, **retry.once(), timeout=LUIGID_TIMEOUT * 4)
        except NotFound:
            if not cfg.create_dataset:
                return failed(
                    sink,
                    f"dataset {dataset} does not exist, and [bigquery] create_dataset is false",
                    f"create it in {cfg.location}, or set [bigquery] create_dataset = true (--bigquery-create-dataset true)",
                )
            return passed(sink, f"dataset {dataset} does not exist yet; the first run creates it in {cfg.location}")
        problems = []
        for svc in catalog.SERVICES.values():
            want = wanted(client, svc)
            try:
                have = client.get_table(want.reference, **retry.once(), timeout=LUIGID_TIMEOUT * 4)
            except NotFound:
                continue
            problems += [f"table {want.table_id}: {problem}" for problem in differences(have, want)]
    except (bigquery.BigQueryError, sinks.WrongLake) as e:
        return failed(sink, str(e), "set [lake] root, [bigquery] project and dataset as config/gcp.cfg shows")
    except (GoogleAPIError, GoogleAuthError, requests.RequestException) as e:
        return failed(
            sink,
            f"{type(e).__name__}: {e}",
            "check [bigquery] project and the credentials (GOOGLE_APPLICATION_CREDENTIALS, or gcloud auth "
            "application-default login) and their roles",
        )
    if problems:
        return failed(
            sink,
            f"dataset {dataset}: " + "; ".join(problems),
            "drop or rename those tables, or set [bigquery] dataset (--bigquery-dataset) to another dataset",
        )
    return passed(sink, f"dataset {dataset} exists; its tables fit the catalog (or are not there yet)")


def check_scheduler(local: bool) -> Check:
    core = luigi.interface.core()
    if local or core.local_scheduler:
        return passed("scheduler", "not used: the commands run with --local-scheduler")
    url = (core.scheduler_url or f"http://{core.scheduler_host}:{core.scheduler_port}/").rstrip("/")
    try:
        answer = requests.get(f"{url}/api/task_list", timeout=LUIGID_TIMEOUT)
        answer.raise_for_status()
        answer.json()
    except (requests.RequestException, ValueError) as e:
        return failed(
            "scheduler",
            f"luigid at {url} does not answer /api/task_list ({type(e).__name__}: {e})",
            f"start it (LUIGI_CONFIG_PATH=config/luigid.cfg luigid --address 127.0.0.1 --port {core.scheduler_port} "
            "--logdir data/luigid), point --scheduler-host/--scheduler-port at it, or run every command with --local-scheduler",
        )
    return passed("scheduler", f"luigid at {url} answers")


def checks(local_scheduler: bool, cmdline: set[tuple[str, str]]) -> Iterator[Check]:
    first = check_settings(cmdline)
    yield first
    if not first.ok:  # the others would read the same broken value
        return
    with one_try():
        yield check_source()
        yield check_lake(settings.lake().root)
        for i, replica in enumerate(settings.lake().replica_roots(), 1):
            yield check_lake(replica, f"replica {i}")
        warehouses: dict[str, Callable[..., Check]] = {
            "duckdb": check_duckdb,
            "postgres": check_postgres,
            "bigquery": check_bigquery,
            "bigquery_table": check_bigquery,
        }
        for sink in settings.ingest().sink_names():
            if sink not in warehouses:
                yield failed("sinks", f"[ingest] sinks names {sink!r}", f"give some of {', '.join(warehouses)}, or none")
            else:
                yield warehouses[sink](sink) if warehouses[sink] is check_bigquery else warehouses[sink]()
    yield check_scheduler(local_scheduler)


def main(argv: Optional[list[str]] = None) -> int:
    args = vars(parser().parse_args(argv))
    local = args.pop("local_scheduler")
    given = {(dest.partition(".")[0], dest.partition(".")[2]): value for dest, value in args.items() if value is not None}
    with settings.overridden(given):
        results = []
        for check in checks(local, set(given)):
            results.append(check)
            print("\n".join(check.lines()), flush=True)
    failures = sum(not check.ok for check in results)
    print(f"{failures} of {len(results)} checks failed" if failures else f"all {len(results)} checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
