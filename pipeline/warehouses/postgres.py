"""Lake -> Postgres: one table per service with the catalog's column types, loaded by COPY,
exactly once.

What makes a month exactly-once:
- A trip table (`yellow_tripdata`, ...) is partitioned by LIST (`source_month`): one partition per
  file of the lake. Rows whose pickup time lies outside their file's month (normal in the real
  data) still belong to their source month.
- A month is COPYed into a fresh table, swapped in as its month's partition (dropping an earlier
  load of the same month), counted against the Parquet row count, and recorded in the marker table
  `_ingested`, all in ONE transaction. A crash or a cut connection anywhere rolls back all of it:
  the month is either fully there with its marker, or not there at all, and loading a month again
  replaces exactly its rows.
- The zone lookup is a plain table, emptied and refilled in one transaction the same way.

What makes every wait bounded, and parallel loads deadlock-free (`transaction`, `Warehouse._swap_in`):
- Every statement of a load runs under `[postgres] lock_timeout`: a wait for another session's
  lock that outlasts it rolls the load back with an error naming the table (LockTimeout). The only
  unbounded wait is a writer's for another writer of the same month (or schema), whose own waits
  are bounded, so it ends.
- Locks are taken in one order: the month's advisory lock; the fresh table (no one else's); then
  the service table, in the strongest mode the swap needs, at the swap only; then the marker row.
  No load holds a lock on the service table while it waits for another, so two loads of one
  service cannot deadlock.

Only COPY moves rows, in its binary format, straight from Arrow: the ADBC PostgreSQL driver
(an Apache Arrow project) encodes the Parquet row groups as they are read, so no value is
formatted as text and parsed back, and memory stays flat whatever the month's size.

The connection comes from `[postgres]` plus libpq's environment (PGHOST, PGPASSWORD, ...). The
password is never a setting here: messages name user@host:port/database only.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import re
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import adbc_driver_manager
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import catalog, retry, settings
from pipeline.errors import PipelineError
from pipeline.lake import LakeRecord, LakeTarget
from pipeline.targets.marker import MARKER_TABLE, WRITTEN, MonthMarker, create_table_sql
from pipeline.warehouses.dialects import POSTGRES, Misfit, add_missing_marker_columns, fits
from pipeline.warehouses.sink import Sink

# The driver is imported where a connection is made: it adds about 50 MB to every process
# that imports the pipeline, and only the postgres sink needs it.
if TYPE_CHECKING:
    import adbc_driver_postgresql.dbapi as adbc

logger = logging.getLogger("pipeline.postgres")

MONTH_COLUMN = "source_month"
BATCH_ROWS = 64 * 1024  # Parquet rows per batch handed to COPY

# Each catalog type as Postgres spells it (and as format_type() reports it back).
PG_TYPES = POSTGRES.table_types
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")

Error = adbc_driver_manager.Error  # what the driver raises, connection loss included


class PostgresError(PipelineError, RuntimeError):
    """The Postgres warehouse cannot take the data; the message says what and where."""


class TableMisfit(Misfit, PostgresError):
    """The service's table exists in the schema and does not fit the catalog (fields: table,
    service, problems, setting, at: the server)."""


class InvalidIdentifier(PostgresError):
    """A setting that names a schema or table is no plain Postgres identifier (fields: what, name)."""

    def __init__(self, what: str, name: str):
        self.what, self.name = what, name
        super().__init__(f"{what} {name!r} is not a valid Postgres identifier (a letter or _, then letters, digits or _; at most 63)")


class LockTimeoutRefused(PostgresError):
    """`[postgres] lock_timeout` out of what Postgres takes as a limit (fields: seconds, most)."""

    def __init__(self, seconds: float, most: float):
        self.seconds, self.most = seconds, most
        super().__init__(
            f"[postgres] lock_timeout = {seconds:g}: must be more than 0 and at most {most:g} "
            "seconds (how long a load waits for other sessions' locks; Postgres would take 0 as no limit)"
        )


class ConnectRefused(PostgresError):
    """The server answered and refused us (a wrong password, an unknown database): not retried
    (fields: server, reason)."""

    def __init__(self, server: str, reason: str):
        self.server, self.reason = server, reason
        super().__init__(
            f"cannot connect to Postgres at {server}: {reason} (not retried: check "
            "[postgres] user and database, and PGPASSWORD or ~/.pgpass)"
        )


class LoadFailed(PostgresError):
    """A month's load failed and nothing of it was kept (one transaction)."""

    def __init__(self, label: str, lake_file: str, table: str, server: str, reason: str):
        self.label, self.lake_file, self.table, self.server, self.reason = label, lake_file, table, server, reason
        super().__init__(
            f"{label}: loading {lake_file} into {table} at {server} failed, and nothing of it was kept (one transaction): {reason}"
        )


class RolledBack(PostgresError):
    """A load's transaction did not commit: nothing of it was kept; the message says why."""


class CountMismatch(RolledBack):
    """A month's load holds another row count than the lake file records: rolled back."""

    def __init__(self, table: str, month: str, held: int, copied: int, expected: int):
        self.table, self.month, self.held, self.copied, self.expected = table, month, held, copied, expected
        super().__init__(
            f"{table} holds {held} rows for {month or 'the zones'} after COPY reported {copied}; the lake file records {expected}"
        )


class LockTimeout(RolledBack):
    """Other sessions held a table the load needed for longer than [postgres] lock_timeout."""

    def __init__(self, table: str, seconds: float, gave_up: str):
        self.table, self.seconds, self.gave_up = table, seconds, gave_up
        super().__init__(
            f"other sessions were using {table} for more than [postgres] lock_timeout ({seconds:g} s), "
            f"so {gave_up}. Run again when they are done"
        )


class ConnectionLost(RolledBack):
    """The connection broke in the middle of a transaction (a restarted or killed server, a cut
    network): the server rolls back what it had not committed."""

    def __init__(self, server: str, reason: str):
        self.server, self.reason = server, reason
        super().__init__(
            f"the connection to Postgres at {server} was lost in the middle of the transaction ({reason}); "
            "the server rolls it back, and a re-run loads it once"
        )


# SQLSTATE lock_not_available: a statement waited longer than lock_timeout.
LOCK_NOT_AVAILABLE = "55P03"
# Postgres takes lock_timeout in whole milliseconds, as an int; 0 would mean no timeout at all.
MAX_LOCK_TIMEOUT_MS = 2**31 - 1


def lock_timeout_ms() -> int:
    """[postgres] lock_timeout in whole milliseconds. A fraction of a millisecond is rounded up,
    never down to 0, which Postgres takes as waiting forever; 0 or less is refused."""
    seconds = settings.postgres().lock_timeout
    if not 0 < seconds <= MAX_LOCK_TIMEOUT_MS / 1000:  # (NaN too)
        raise LockTimeoutRefused(seconds, MAX_LOCK_TIMEOUT_MS / 1000)
    return max(1, math.ceil(seconds * 1000))


def identifier(name: str, what: str) -> str:
    """A validated, double-quoted identifier. Validation leaves no quote or space to escape,
    so a setting can never reach the SQL as anything but a name."""
    if not _IDENTIFIER.match(name):
        raise InvalidIdentifier(what, name)
    return f'"{name}"'


def server() -> str:
    """user@host:port/database, resolved the way libpq resolves it, for messages (no password)."""
    cfg, env = settings.postgres(), os.environ.get
    user = cfg.user or env("PGUSER") or "(OS user)"
    host = cfg.host or env("PGHOST") or "localhost"
    port = cfg.port or env("PGPORT") or "5432"
    return f"{user}@{host}:{port}/{cfg.database or env('PGDATABASE') or user}"


def _reason(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _conninfo() -> str:
    """A libpq connection string of the `[postgres]` settings that are set; libpq takes the rest
    (the password included) from its environment variables and password file."""
    cfg = settings.postgres()
    pairs = {
        "host": cfg.host,
        "port": cfg.port,
        "dbname": cfg.database,
        "user": cfg.user,
        "connect_timeout": str(cfg.connect_timeout),
        "application_name": "nyc-tlc-luigi",
    }
    return " ".join(f"{key}={_libpq_quote(value)}" for key, value in pairs.items() if value)


def _libpq_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


# The server answered and refused: no retry can heal these. libpq reports a failed connection
# as text only (no SQLSTATE), so they are told apart by its words.
_REFUSALS = (
    "password authentication failed",
    "no password supplied",
    "does not exist",
    "permission denied",
    "no pg_hba.conf entry",
    "authentication failed",
)


class _Unreachable(PostgresError, retry.Transient):
    """No answer yet (the server down, starting up, or too busy): worth another try."""

    def __init__(self, server: str, reason: str):
        self.server, self.reason = server, reason
        super().__init__(f"cannot connect to Postgres at {server}: {reason}")


def connect() -> adbc.Connection:
    """Connect, retrying with backoff while the server is unreachable (e.g. still starting),
    and failing at once when it refuses us (a wrong password, an unknown database)."""
    import adbc_driver_postgresql.dbapi as adbc

    def attempt() -> adbc.Connection:
        try:
            return adbc.connect(_conninfo())
        except Error as e:
            reason = _reason(e)
            if any(words in reason for words in _REFUSALS):
                raise ConnectRefused(server(), reason) from None
            raise _Unreachable(server(), reason) from None

    cfg = settings.postgres()
    return retry.call(attempt, attempts=cfg.attempts, backoff=cfg.backoff, setting="[postgres]")


@contextlib.contextmanager
def transaction(conn: adbc.Connection, table: str, gave_up: str, after_writers_of: str = "") -> Iterator[adbc.Cursor]:
    """A cursor whose statements commit together when the block ends, or not at all; the one
    place where every lock wait of a load is bounded.

    With ``after_writers_of``, it first waits for the other writers of that (an advisory lock of
    that name), without a limit: each of them ends, its own waits being bounded. Then every
    statement waits at most [postgres] lock_timeout for another session's lock; a longer wait
    rolls all back as LockTimeout, naming ``table`` and saying ``gave_up`` (what was not done and
    what is still there). A connection lost on the way raises ConnectionLost."""
    timeout = lock_timeout_ms()
    try:
        with conn.cursor() as cur:
            if after_writers_of:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext($1))", [after_writers_of])
            cur.execute(f"SET LOCAL lock_timeout = '{timeout}ms'")
            yield cur
        conn.commit()
    except Error as e:
        try:
            conn.rollback()
        except Error:  # nothing answers: the connection is gone, and its transaction with it
            raise ConnectionLost(server(), _reason(e)) from e
        if e.sqlstate == LOCK_NOT_AVAILABLE:
            raise LockTimeout(table, settings.postgres().lock_timeout, gave_up) from e
        raise
    except BaseException:
        with contextlib.suppress(Error):  # a lost connection has nothing left to roll back
            conn.rollback()
        raise


def table_columns(svc: catalog.Service) -> list[tuple[str, str]]:
    columns = [(c.name, PG_TYPES[c.type]) for c in svc.columns]
    return columns + [(MONTH_COLUMN, "date")] if svc.monthly else columns


class Warehouse:
    """The service's table in the configured schema, and the SQL that loads it."""

    def __init__(self, svc: catalog.Service):
        self.svc = svc
        self.schema_name = settings.postgres().schema
        self.schema = identifier(self.schema_name, "[postgres] schema")
        self.table = self.qualified(svc.table)
        self.name = f"{self.schema_name}.{svc.table}"

    def qualified(self, name: str) -> str:
        return f"{self.schema}.{identifier(name, 'table')}"

    def ensure(self, conn: adbc.Connection) -> None:
        """Create the schema, the service's table and the marker table where missing, in a
        transaction of its own; refuse an existing table that does not fit the catalog."""
        # Two first loads at once (two workers, two services) must not race to create the same
        # schema or table: the schema's DDL is done one transaction at a time.
        with transaction(
            conn, PostgresMarker.table(), "the marker table could not be brought up to date", after_writers_of=f"schema {self.schema_name}"
        ) as cur:
            cur.execute("SELECT count(*) FROM pg_namespace WHERE nspname = $1", [self.schema_name])
            if not cur.fetchone()[0]:
                cur.execute(f"CREATE SCHEMA {self.schema}")
            PostgresMarker.create(cur)
            if not self.existing_fits(cur):
                self._create(cur)

    def existing_fits(self, cur: adbc.Cursor) -> bool:
        """Whether the service's table exists, refusing one that does not fit the catalog
        (PostgresError). It only reads: `python -m pipeline.doctor` checks with it too."""
        cur.execute(
            "SELECT attname, format_type(atttypid, atttypmod), pg_get_partkeydef(attrelid) "
            "FROM pg_attribute WHERE attrelid = to_regclass(format('%I.%I', $1::text, $2::text)) "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            [self.schema_name, self.svc.table],
        )
        found = cur.fetchall()
        if found:
            self._check([(name, type_) for name, type_, _ in found], found[0][2])
        return bool(found)

    def _columns(self) -> str:
        """The service table's column definitions, for it and for each month's fresh table."""
        return ", ".join(
            f"{identifier(name, 'column')} {type_}" + (" NOT NULL" if name == MONTH_COLUMN else "")
            for name, type_ in table_columns(self.svc)
        )

    def _create(self, cur: adbc.Cursor) -> None:
        partitioning = f" PARTITION BY LIST ({MONTH_COLUMN})" if self.svc.monthly else ""
        cur.execute(f"CREATE TABLE {self.table} ({self._columns()}){partitioning}")
        logger.info("created table %s at %s", self.name, server())

    def _check(self, have: list[tuple[str, str]], partition_key: Optional[str]) -> None:
        problems = fits(have, table_columns(self.svc))
        wanted_key = f"LIST ({MONTH_COLUMN})" if self.svc.monthly else None
        if partition_key != wanted_key:
            problems.append(f"it is partitioned by {partition_key or 'nothing'}, the pipeline needs {wanted_key or 'a plain table'}")
        if problems:
            raise TableMisfit(
                self.name, self.svc.name, f"does not fit the {self.svc.name} catalog", problems, "[postgres] schema", at=server()
            )

    def load(
        self, conn: adbc.Connection, month: Optional[datetime.date], parquet: str, source: LakeRecord, progress: Callable[[int, int], None]
    ) -> int:
        """Replace the month's rows (or the whole zone table) with the Parquet file's, and write the
        marker, in one transaction. Returns the row count Postgres holds for it afterwards."""
        if not self.svc.monthly:
            # The zones keep their table (and so the grants and views of it users made): emptied
            # and refilled while the load holds it, which is a moment for 265 rows. TRUNCATE waits
            # for the table's readers, at most lock_timeout.
            with transaction(conn, self.name, "the zones could not be replaced; the earlier zones are still there") as cur:
                cur.execute(f"TRUNCATE {self.table}")
                held = self._fill(cur, self.svc.table, None, parquet, source, progress)
                PostgresMarker(self.svc.name, month).touch(cur, held, source.source_sha256, source.source_url)
            return held
        assert month is not None  # a monthly service's load is of a month
        partition = f"{self.svc.table}_{month:%Y_%m}"
        loading = partition + "_loading"
        gave_up = "the month could not be swapped in; the earlier load of the month is still there"
        with transaction(conn, self.name, gave_up, after_writers_of=f"{self.schema_name}.{partition}") as cur:
            # A plain table of the catalog's columns, not LIKE the service table: that would hold
            # a lock on the service table through the COPY, and two loads, each holding one and
            # waiting to swap, deadlock. Its CHECK proves the partition bound, so ATTACH below
            # need not scan the rows.
            cur.execute(f"CREATE TABLE {self.qualified(loading)} ({self._columns()})")
            cur.execute(f"ALTER TABLE {self.qualified(loading)} ADD CHECK ({MONTH_COLUMN} = DATE '{month.isoformat()}')")
            held = self._fill(cur, loading, month, parquet, source, progress)
            self._swap_in(cur, loading, partition, month)
            PostgresMarker(self.svc.name, month).touch(cur, held, source.source_sha256, source.source_url)
        return held

    def _fill(
        self,
        cur: adbc.Cursor,
        table: str,
        month: Optional[datetime.date],
        parquet: str,
        source: LakeRecord,
        progress: Callable[[int, int], None],
    ) -> int:
        """COPY the file into ``table`` and count what it holds against the lake file's count."""
        expected = source.rows
        copied = self._copy(cur, table, parquet, month, lambda rows: progress(rows, expected))
        cur.execute(f"SELECT count(*) FROM {self.qualified(table)}")
        held = cur.fetchone()[0]
        if not held == copied == expected:
            raise CountMismatch(self.name, catalog.month_key(month), held, copied, expected)
        return held

    def _copy(self, cur: adbc.Cursor, table: str, parquet: str, month: Optional[datetime.date], progress: Callable[[int], None]) -> int:
        """COPY the Parquet file's rows (and the source month) into ``table``; returns the row count."""
        file = pq.ParquetFile(parquet)
        schema = self.svc.schema
        if self.svc.monthly:
            schema = schema.append(pa.field(MONTH_COLUMN, pa.date32()))

        def batches() -> Iterator[pa.RecordBatch]:
            rows = 0
            for batch in parquet_batches(file, self.svc.schema.names):
                arrays = batch.columns
                if self.svc.monthly:
                    arrays = arrays + [pa.repeat(pa.scalar(month, pa.date32()), batch.num_rows)]
                rows += batch.num_rows
                progress(rows)
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)

        return cur.adbc_ingest(table, pa.RecordBatchReader.from_batches(schema, batches()), mode="append", db_schema_name=self.schema_name)

    def _swap_in(self, cur: adbc.Cursor, loading: str, partition: str, month: datetime.date) -> None:
        """Make the loaded (and counted) table the month's partition, in place of an earlier load
        of the month. The first lock on the service table is taken here, in the strongest mode
        the swap needs (DROP of a partition needs the table to itself, ATTACH only to keep other
        swaps out), so no load ever holds a weaker one and waits to strengthen it: two swaps
        queue, never deadlock. Readers are kept out only from here to the commit."""
        cur.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhrelid = to_regclass(format('%I.%I', $1::text, $2::text)) "
            "AND inhparent = to_regclass(format('%I.%I', $1::text, $3::text))",
            [self.schema_name, partition, self.svc.table],
        )
        replacing = cur.fetchone()[0]
        cur.execute(f"LOCK TABLE ONLY {self.table} IN {'ACCESS EXCLUSIVE' if replacing else 'SHARE UPDATE EXCLUSIVE'} MODE")
        if replacing:
            cur.execute(f"DROP TABLE {self.qualified(partition)}")
        cur.execute(f"ALTER TABLE {self.qualified(loading)} RENAME TO {identifier(partition, 'table')}")
        cur.execute(f"ALTER TABLE {self.table} ATTACH PARTITION {self.qualified(partition)} FOR VALUES IN (DATE '{month.isoformat()}')")


def parquet_batches(file: pq.ParquetFile, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The file's rows in batches, one row group at a time. One iter_batches over the whole file
    holds more memory the more row groups it has read (measured: 44 MB of Arrow memory for a
    1.4M-row month, 118 MB for 7.7M); per row group it stays at 31 MB for both."""
    for group in range(file.num_row_groups):
        yield from file.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=columns)


class PostgresMarker(MonthMarker):
    """Exists when the marker table records this service and month: written in the same
    transaction as the month's rows, so it never claims a month that is not fully there."""

    sink = "Postgres"

    @classmethod
    def recorded(cls, where: None) -> dict[tuple[str, str], str]:
        return loaded()

    @classmethod
    def marked_rows(cls, where: None) -> dict[tuple[str, str], int]:
        return dict(((s, m), n) for s, m, n in _query(MARKER_TABLE, f"SELECT service, month, rows FROM {cls.table()}"))

    @classmethod
    def counted_rows(cls, where: None, service: str) -> dict[str, int]:
        warehouse = Warehouse(catalog.SERVICES[service])
        month = f"to_char({MONTH_COLUMN}, 'YYYY-MM')" if warehouse.svc.monthly else "''"
        return dict(_query(warehouse.svc.table, f"SELECT {month}, count(*) FROM {warehouse.table} GROUP BY 1"))

    @staticmethod
    def table() -> str:
        return f"{identifier(settings.postgres().schema, '[postgres] schema')}.{identifier(MARKER_TABLE, 'table')}"

    @classmethod
    def create(cls, cur: adbc.Cursor) -> None:
        """The marker table where it is missing, and the columns an earlier version's lacks."""
        cur.execute(create_table_sql(cls.table(), POSTGRES.marker_types))
        cur.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
            [settings.postgres().schema, MARKER_TABLE],
        )
        add_missing_marker_columns(POSTGRES, cls.table(), [name for (name,) in cur.fetchall()], cur.execute)

    def touch(self, connection: adbc.Cursor, rows: int, source_sha256: str, source_url: str) -> None:
        """In the transaction that loaded the month's rows: both are there, or neither."""
        updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in WRITTEN[2:])
        connection.execute(
            f"INSERT INTO {self.table()} ({', '.join(WRITTEN)}) VALUES ({', '.join(f'${i}' for i in range(1, len(WRITTEN) + 1))}) "
            f"ON CONFLICT (service, month) DO UPDATE SET {updates}, marked_at = now()",
            self.values(rows, source_sha256, source_url),
        )


def _query(table: str, sql: str) -> list[tuple]:
    """The rows of ``sql``, none where ``table`` is not in the schema yet."""
    with contextlib.closing(connect()) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL", [settings.postgres().schema, table])
        if not cur.fetchone()[0]:
            return []
        cur.execute(sql)
        return cur.fetchall()


def loaded() -> dict[tuple[str, str], str]:
    """Every (service, month) the marker table records, with its source's sha256: one
    connection, one query (none before anything was loaded into the schema)."""
    rows = _query(MARKER_TABLE, f"SELECT service, month, coalesce(source_sha256, '') FROM {PostgresMarker.table()}")
    return {(service, month): sha for service, month, sha in rows}


class LoadPostgres(Sink):
    """Load the month from the lake into its Postgres table (yellow_tripdata, ...), exactly once."""

    name = "postgres"
    # One Postgres serves every worker: the scheduler runs at most [resources] postgres loads at once.
    resources = {"postgres": 1}

    def output(self):
        return PostgresMarker(self.service, self.month, self.source_sha256)

    def load(self, lake: LakeTarget, record: LakeRecord) -> str:
        warehouse = Warehouse(self.svc)
        with lake.local_path() as parquet:
            conn = connect()
            try:
                warehouse.ensure(conn)
                warehouse.load(
                    conn, self.month, parquet, record, lambda done, total: self.report(done, total, f"copied {done:,} of {total:,} rows")
                )
            except (Error, RolledBack) as e:
                reason = str(e) if isinstance(e, RolledBack) else _reason(e)
                raise LoadFailed(self.label, lake.path, warehouse.name, server(), reason) from e
            finally:
                with contextlib.suppress(Error):
                    conn.close()
        return f"{warehouse.name} at {server()}"
