"""Lake -> the embedded warehouse: one DuckDB file with one view per service over the lake's
Parquet files (the local twin of the BigQuery external table), and a marker per ingested month.

A month counts as exposed only when the view answers for it with exactly the Parquet row count;
that check and the marker row go in together, so a marker never claims what the view does not show.

Readers never block an ingest: the file (views and the small marker table only) is never changed in
place. A writer copies it, changes the copy and swaps it in with an atomic rename (`_writing`), so a
read-only session keeps reading the file it opened (the old inode) and the next one opens the new
file. Writers take turns through a lock file beside it, so none loses another's marker row. The
only sessions an ingest waits for, at most retry.DUCKDB_LOCK_SECONDS, are read-write ones (DuckDB's own
lock) and another ingest writing.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import glob
import logging
import os
import shutil
from typing import TYPE_CHECKING, Iterator, Optional

from pipeline import catalog, retry, settings
from pipeline.errors import PipelineError
from pipeline.lake import PARTITION_KEY, LakeRecord, LakeTarget, is_remote, lake_glob, lake_kind, lake_root
from pipeline.targets import azure, s3
from pipeline.targets.marker import MARKER_TABLE, WRITTEN, MonthMarker, create_table_sql
from pipeline.warehouses.dialects import DUCKDB, add_missing_marker_columns
from pipeline.warehouses.sink import Sink

# duckdb is imported where it is used: every process imports this module (the default sink), and
# the module costs 30 MB of memory in each, for the processes (workers, other sinks) that never
# open the warehouse too.
if TYPE_CHECKING:
    import duckdb

logger = logging.getLogger("pipeline.duckdb")


class WarehouseBusy(PipelineError, RuntimeError):
    """Another process holds the DuckDB file (or its writer lock) for longer than we wait."""

    def __init__(self, path: str, seconds: float, holder: str, advice: str):
        self.path, self.seconds, self.holder, self.advice = path, seconds, holder, advice
        super().__init__(f"the DuckDB warehouse {path} has been held by another process for {seconds:g} s ({holder}); {advice}")


class _Held(retry.Transient):
    """The lock is taken by another process: waited for (retry.duckdb_lock)."""


def _connect(path: str, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Open the warehouse, waiting while a read-write session of another process holds it
    (DuckDB's own lock); read-only sessions never hold it against us."""
    import duckdb

    def attempt() -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(path, read_only=read_only)
        except duckdb.IOException as e:
            if "lock" not in str(e).lower():
                raise
            raise _Held(str(e)) from None

    try:
        con = retry.duckdb_lock(attempt)
    except _Held as e:
        raise WarehouseBusy(
            path,
            retry.DUCKDB_LOCK_SECONDS,
            str(e),
            "close that session, and query while ingesting with duckdb.connect(path, read_only=True)",
        ) from None
    return reading_the_lake(con)


def connect(read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """The warehouse (`[duckdb] path`) for queries, read-only unless asked: a session whose views
    read the lake, an s3:// or az:// one included (see reading_the_lake)."""
    return _connect(settings.duckdb().path, read_only)


def reading_the_lake(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """``con``, able to read the configured lake: for an s3:// or az:// lake, DuckDB's extension
    for it (httpfs, azure) loaded and the credentials the cloud SDK's chain resolves given to this
    session as a temporary SECRET (`_lake_secret`). Temporary: held in this session's memory only,
    never in the warehouse file nor in a view's text, so every session that reads the views needs
    it (this function, or `connect`)."""
    import duckdb

    kind = lake_kind()
    if kind not in ("s3", "azure"):
        return con
    extension, secret_type, options = _lake_secret(kind)
    con.install_extension(extension)  # from DuckDB's repository the first time, then from ~/.duckdb
    con.load_extension(extension)
    literal = {"use_ssl"}  # a boolean, the rest strings
    fields = ", ".join(f"{k.upper()} {v if k in literal else _sql_string(v)}" for k, v in options.items() if v)
    try:
        con.execute(f"CREATE OR REPLACE TEMPORARY SECRET tlc_lake (TYPE {secret_type}, {fields})")
    except duckdb.Error as e:  # its message could quote the statement, which holds the secret
        con.close()
        raise RuntimeError(f"DuckDB did not take the {kind} lake's credentials as a secret ({type(e).__name__})") from None
    return con


def _lake_secret(kind: str) -> tuple[str, str, dict[str, str]]:
    """For an s3 or azure lake: DuckDB's extension that reads it, its SECRET's type, and the
    secret's fields (scoped to the bucket or container) from the SDK's chain."""
    if kind == "s3":
        bucket, _ = s3.split(lake_root())
        return "httpfs", "s3", {**s3.reader_settings(), "scope": f"{s3.SCHEME}{bucket}"}
    container, _ = azure.split(lake_root())
    return "azure", "azure", {**azure.reader_settings(), "scope": f"{azure.SCHEME}{container}"}


@contextlib.contextmanager
def _writer_lock(path: str) -> Iterator[None]:
    """The turn to write the warehouse: an exclusive lock on ``{path}.lock``, which holds the
    writer's PID for messages. The kernel drops it when its process dies, so a lock held is a
    writer alive."""
    with open(path + ".lock", "a+") as lock:

        def attempt() -> None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                raise _Held(f"another ingest writes it: {path}.lock names PID {lock.read().strip() or '?'}") from None

        try:
            retry.duckdb_lock(attempt)
        except _Held as e:
            raise WarehouseBusy(path, retry.DUCKDB_LOCK_SECONDS, str(e), "run again when that ingest has ended") from None
        try:
            lock.truncate(0)
            lock.write(str(os.getpid()))
            lock.flush()
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _writing(path: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection to a copy of the warehouse file, swapped in for the file (an atomic
    rename) when the block ends without an error, and thrown away when it raises. Sessions that
    have the file open keep the old one, whole; none of them is waited for unless it writes."""
    import duckdb

    new = f"{path}.new-{os.getpid()}"
    with _writer_lock(path):
        for stale in glob.glob(glob.escape(path) + ".new-*"):  # a writer killed before its rename
            os.remove(stale)
        if os.path.exists(path + ".wal"):
            # A read-write session is writing, or one ended without a checkpoint: its changes are
            # in the WAL, which a copy of the file would miss and the swapped-in file would replay.
            _connect(path, read_only=False).close()  # closing checkpoints it into the file
        # A read-only session of ours on the file until the rename: no read-write session can
        # start changing the file (or its WAL) while it is copied and replaced.
        current = _connect(path, read_only=True) if os.path.exists(path) else None
        try:
            if current is not None:
                shutil.copyfile(path, new)
            con = reading_the_lake(duckdb.connect(new))
            try:
                yield con
                con.execute("CHECKPOINT")
            finally:
                con.close()
            with open(new, "rb") as f:  # on disk before it takes the name: a crash leaves old or new, whole
                os.fsync(f.fileno())
            os.replace(new, path)
        finally:
            if current is not None:
                current.close()
            for left in (new, new + ".wal"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(left)
        directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


GLOB_CHARACTERS = set("*?[]{}")


def lake_location() -> str:
    """The lake as the views name it: its URL, or for a local lake its absolute path, so that
    the view answers from any working directory."""
    return lake_root() if is_remote() else os.path.abspath(lake_root())


def lake_literal(svc: catalog.Service) -> str:
    """The configured lake's files of the service as the view's SQL names them (lake_location)."""
    return _sql_string(lake_glob(svc) if is_remote() else os.path.abspath(lake_glob(svc)))


def view_sql(svc: catalog.Service) -> str:
    root = lake_location()
    if GLOB_CHARACTERS & set(root):
        raise ValueError(
            f"[lake] root {root} holds a glob character ({' '.join(sorted(GLOB_CHARACTERS & set(root)))}), "
            "which DuckDB's read_parquet would take as a pattern; move the lake to a path without one"
        )
    source = f"read_parquet({lake_literal(svc)}"
    if svc.monthly:
        source += f", hive_partitioning = true, hive_types = {{'{PARTITION_KEY}': VARCHAR}}"
    return f'CREATE OR REPLACE VIEW "{svc.table}" AS SELECT * FROM {source})'


class DuckDBMarker(MonthMarker):
    """Exists when the warehouse file's marker table records this service and month."""

    sink = "DuckDB"

    def __init__(self, path: str, service: str, month: Optional[datetime.date], source_sha256: str = ""):
        super().__init__(service, month, source_sha256)
        self.path = path

    def __str__(self) -> str:
        return f"{super().__str__()} in {self.path}"

    def where(self) -> str:
        return self.path

    @classmethod
    def recorded(cls, where: str) -> dict[tuple[str, str], str]:
        return _exposed(where)

    @classmethod
    def marked_rows(cls, where: str) -> dict[tuple[str, str], int]:
        return dict(((s, m), n) for s, m, n in _read(where, f"SELECT service, month, rows FROM {MARKER_TABLE}"))

    @classmethod
    def counted_rows(cls, where: str, service: str) -> dict[str, int]:
        svc = catalog.SERVICES[service]
        month = PARTITION_KEY if svc.monthly else "''"
        return dict(_read(where, f'SELECT {month}, count(*) FROM "{svc.table}" GROUP BY 1'))

    def touch(self, connection: duckdb.DuckDBPyConnection, rows: int, source_sha256: str, source_url: str) -> None:
        connection.execute(create_table_sql(MARKER_TABLE, DUCKDB.marker_types))
        found = [column[0] for column in connection.execute(f"SELECT * FROM {MARKER_TABLE} LIMIT 0").description]
        add_missing_marker_columns(DUCKDB, MARKER_TABLE, found, connection.execute)
        connection.execute(
            f"INSERT OR REPLACE INTO {MARKER_TABLE} ({', '.join(WRITTEN)}, marked_at) VALUES ({', '.join('?' * len(WRITTEN))}, now())",
            self.values(rows, source_sha256, source_url),
        )


def _read(path: str, sql: str) -> list[tuple]:
    """The rows of ``sql`` in the warehouse file, read-only; none where the file or the table is
    not there yet."""
    import duckdb

    if not os.path.exists(path):
        return []
    con = _connect(path, read_only=True)
    try:
        return con.execute(sql).fetchall()
    except duckdb.CatalogException:
        return []
    finally:
        con.close()


def _exposed(path: str) -> dict[tuple[str, str], str]:
    """Every (service, month) the warehouse's marker table records, with its source's sha256,
    for the services whose view reads the configured lake: after the lake moves (the project
    folder, or [lake] root), a view still reads the old path, so its months count as not
    exposed and are exposed again."""
    import duckdb

    if not os.path.exists(path):
        return {}
    con = _connect(path, read_only=True)
    try:
        # SELECT *: a marker table written before source_sha256 existed lacks the column.
        cursor = con.execute(f"SELECT * FROM {MARKER_TABLE}")
        names = [d[0] for d in cursor.description]
        recorded = {
            (row["service"], row["month"]): row.get("source_sha256") or ""
            for row in (dict(zip(names, values)) for values in cursor.fetchall())
        }
        views = dict(con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal").fetchall())
    except duckdb.CatalogException:  # no marker table yet: nothing ingested
        return {}
    finally:
        con.close()
    current = set()
    for service in {service for service, _ in recorded}:
        svc = catalog.SERVICES[service]
        if lake_literal(svc) in views.get(svc.table, ""):
            current.add(service)
        else:
            logger.warning(
                "view %s in %s does not read the configured lake %s; its months will be exposed again",
                svc.table,
                path,
                lake_location(),
            )
    return {key: sha for key, sha in recorded.items() if key[0] in current}


class ViewCountMismatch(PipelineError, RuntimeError):
    """The view shows another row count for the month than the lake file holds: not marked."""

    def __init__(self, label: str, view: str, path: str, seen: int, lake_file: str, expected: int):
        self.label, self.view, self.path, self.seen, self.lake_file, self.expected = label, view, path, seen, lake_file, expected
        super().__init__(f"{label}: view {view} in {path} shows {seen} rows, the lake file {lake_file} holds {expected}")


class ExposeDuckDB(Sink):
    """Make the month queryable in the embedded DuckDB warehouse."""

    name = "duckdb"
    reads = ("local", "s3", "azure")
    # DuckDB allows one writing process per file: the scheduler runs these one at a time.
    resources = {"duckdb": 1}

    def output(self):
        return DuckDBMarker(settings.duckdb().path, self.service, self.month, self.source_sha256)

    def load(self, lake: LakeTarget, record: LakeRecord) -> str:
        marker = self.output()
        os.makedirs(os.path.dirname(os.path.abspath(marker.path)), exist_ok=True)
        with _writing(marker.path) as con:
            con.execute(view_sql(self.svc))
            where = f" WHERE {PARTITION_KEY} = ?" if self.svc.monthly else ""
            params = [marker.month] if self.svc.monthly else []
            seen = con.execute(f'SELECT count(*) FROM "{self.svc.table}"{where}', params).fetchall()[0][0]
            if seen != record.rows:
                raise ViewCountMismatch(self.label, self.svc.table, marker.path, seen, lake.path, record.rows)
            marker.touch(con, record.rows, record.source_sha256, record.source_url)
        return f"view {self.svc.table} in {marker.path}"
