"""Raw file -> Parquet in the catalog's canonical schema, streaming.

The CSV is read block by block (pyarrow's streaming reader) and written row group by row group,
so peak memory depends on the block size, not on the size of the month. Every column gets the
catalog's type, never an inferred one; columns a month lacks are written as nulls, in the
catalog's order, so every month of a service has byte-for-byte the same Parquet schema.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from typing import Callable, Iterable, Iterator

import luigi
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline import catalog
from pipeline.dataset_task import DatasetTask
from pipeline.download import Download

logger = logging.getLogger("pipeline.convert")

# The streaming CSV reader's memory grows with its block size (it reads ahead several blocks),
# so blocks are small and batches are gathered into row groups of a useful size for scans.
BLOCK_SIZE = 1 << 20  # bytes of CSV text per parsed batch
ROW_GROUP_ROWS = 256 * 1024
READ_AHEAD = 4  # parsed batches queued between the reading thread and the writer
PARQUET_BATCH_ROWS = 64 * 1024  # rows per batch read from a source Parquet file


class ConversionError(ValueError):
    """A row of the source file does not fit the catalog."""


def _to_int(values: pa.ChunkedArray | pa.Array, name: str, where: str, first_row: int) -> pa.Array:
    """float64 -> int64, refusing any value with a fraction or out of range (never truncating).

    Integer codes are read as float64 because some files write them as `1.0`."""
    try:
        return pc.cast(values, catalog.INT, safe=True)
    except pa.ArrowInvalid:
        whole = pc.equal(values, pc.trunc(values))
        bad = pc.index(pc.fill_null(whole, True), False).as_py()
        if bad < 0:  # whole numbers, so out of int64's range
            bad = pc.index(pc.greater(pc.abs(values), 2.0**63), True).as_py()
        raise ConversionError(
            f"{where}: column {name}, data row {first_row + bad + 1}: value {values[bad].as_py()!r} "
            f"is not a whole number that fits int64"
        ) from None


def _read_ahead(batches: Iterable, depth: int = READ_AHEAD) -> Iterator:
    """Iterate ``batches`` in a second thread, so gunzip+parse overlaps with Parquet encoding
    (both release the GIL). Errors reach the caller; the thread stops when the caller does."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def pump() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(done)
        except BaseException as e:  # handed to the consumer, raised there
            put(e)

    thread = threading.Thread(target=pump, name="csv-reader", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _cast(values: pa.ChunkedArray | pa.Array, target: pa.DataType, name: str, where: str,
          first_row: int) -> pa.Array:
    """A source column as the catalog's type, refusing any cast that would lose information
    (a fraction, an overflow, a sub-microsecond time) with the column and the value."""
    if values.type == target:
        return values
    if target == catalog.INT and pa.types.is_floating(values.type):
        return _to_int(values, name, where, first_row)
    try:
        return pc.cast(values, target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ConversionError(f"{where}: column {name}, data rows {first_row + 1}-{first_row + len(values)}: "
                              f"cannot make {values.type} into {target} without losing information ({e})") from None


def _schema(svc: catalog.Service, metadata: dict) -> pa.Schema:
    return svc.schema.with_metadata({f"tlc.{k}": str(v) for k, v in metadata.items()})


def _conform(batch: pa.RecordBatch, columns: list[catalog.Column], schema: pa.Schema, where: str,
             first_row: int) -> pa.RecordBatch:
    """The batch in the catalog's schema: its columns (named ``columns``, in file order) cast,
    the ones the file lacks as nulls, in the catalog's order."""
    present = {c.name: i for i, c in enumerate(columns)}
    arrays = []
    for field in schema:
        if field.name in present:
            arrays.append(_cast(batch.column(present[field.name]), field.type, field.name, where, first_row))
        else:
            arrays.append(pa.nulls(batch.num_rows, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _write_row_groups(dst: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch], columns: list[catalog.Column],
                      where: str, progress: Callable[[int], None]) -> int:
    """Conform the source batches (in file order, named ``columns``) to ``schema`` and write them
    to ``dst`` in row groups of at least ROW_GROUP_ROWS, calling ``progress(rows)`` after each;
    return the row count, which also goes into the footer as `tlc.rows`."""
    rows = 0
    pending: list[pa.RecordBatch] = []
    with pq.ParquetWriter(dst, schema, compression="zstd") as writer:
        for batch in batches:
            pending.append(_conform(batch, columns, schema, where, rows))
            rows += batch.num_rows
            if sum(b.num_rows for b in pending) >= ROW_GROUP_ROWS:
                writer.write_table(pa.Table.from_batches(pending), row_group_size=2 * ROW_GROUP_ROWS)
                pending.clear()
                progress(rows)
        if pending:
            writer.write_table(pa.Table.from_batches(pending), row_group_size=2 * ROW_GROUP_ROWS)
        writer.add_key_value_metadata({"tlc.rows": str(rows)})
    return rows


def _parquet_batches(source: pq.ParquetFile) -> Iterator[pa.RecordBatch]:
    """One source row group at a time (one iter_batches over the whole file holds on to more
    memory the more groups it has read), in small batches (the reader's memory grows with the
    batch size)."""
    for group in range(source.num_row_groups):
        yield from source.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group])


def convert_parquet(src: str, header: str, dst: str, svc: catalog.Service, where: str, metadata: dict,
                    progress: Callable[[int, int, int], None] = lambda rows, done, total: None) -> int:
    """Write a source Parquet file (the TLC's) to ``dst`` in ``svc``'s schema, one row group at a
    time, whatever physical types and name spellings this month's file has; return the row count."""
    columns = catalog.resolve_header(svc, header, where)
    # buffer_size: column chunks are read through a buffer, not whole, so a month written as
    # one huge row group still streams.
    source = pq.ParquetFile(src, buffer_size=BLOCK_SIZE)
    total = source.metadata.num_rows
    return _write_row_groups(dst, _schema(svc, metadata), _parquet_batches(source), columns, where,
                             lambda rows: progress(rows, rows, total))


def _csv_batches(reader: pacsv.CSVStreamingReader, where: str) -> Iterator[pa.RecordBatch]:
    """The parsed batches, with a parse error turned into one that says where it happened."""
    rows = 0
    try:
        for batch in _read_ahead(reader):
            yield batch
            rows += batch.num_rows
    except pa.ArrowInvalid as e:
        raise ConversionError(f"{where}: after data row {rows}: {e}") from None


def convert(src: str, header: str, dst: str, svc: catalog.Service, where: str, metadata: dict,
            progress: Callable[[int, int, int], None] = lambda rows, done, total: None) -> int:
    """Write ``src`` (csv or csv.gz) to ``dst`` as Parquet with ``svc``'s schema; return the row count.

    ``header`` is the file's header line, as the Download step read and recorded it."""
    columns = catalog.resolve_header(svc, header, where)
    raw = pa.OSFile(src)
    total = os.fstat(raw.fileno()).st_size
    stream = pa.CompressedInputStream(raw, "gzip") if src.endswith(".gz") else raw
    reader = pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(
            column_names=[c.name for c in columns], skip_rows=1, block_size=BLOCK_SIZE),
        convert_options=pacsv.ConvertOptions(
            column_types={c.name: catalog.FLOAT if c.type == catalog.INT else c.type for c in columns},
            # Only an empty field is null: "NA" and "N/A" are real zone names.
            null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False),
    )
    with stream:
        return _write_row_groups(dst, _schema(svc, metadata), _csv_batches(reader, where), columns, where,
                                 lambda rows: progress(rows, raw.tell(), total))


def parquet_rows(path: str) -> int:
    return pq.ParquetFile(path).metadata.num_rows


class ToParquet(DatasetTask):
    """Convert the downloaded file to Parquet in the catalog's schema (staging area)."""

    def requires(self):
        return self.clone(Download)

    def output(self):
        return luigi.LocalTarget(self.staging_path("parquet", self.svc.file_stem(self.month) + ".parquet"))

    def run(self):
        raw = self.input()["file"].path
        with open(self.input()["meta"].path) as f:
            source = json.load(f)
        where = f"{self.label} ({raw})"
        logger.info("%s: converting %s to Parquet", self.label, raw)
        started = time.monotonic()

        def progress(rows: int, done: int, total: int) -> None:
            self.report(done, total, f"converted {rows:,} rows")

        meta = {"service": self.service, "month": catalog.month_str(self.month) if self.month else "",
                "source_url": source["url"], "source_sha256": source["sha256"], "source_size": source["size"],
                "source_etag": source.get("etag", ""), "source_last_modified": source.get("last_modified", "")}
        step = convert_parquet if raw.endswith(".parquet") else convert
        with self.staged(self.output()) as tmp:
            rows = step(raw, source["header"], tmp, self.svc, where, meta, progress)
            catalog.check_rows(self.svc, rows, where)
        seconds = time.monotonic() - started
        logger.info("%s: wrote %s rows to %s in %.1f s (%.0f rows/s)", self.label, f"{rows:,}",
                    self.output().path, seconds, rows / max(seconds, 1e-9))
        self.report(1, 1, f"converted {rows:,} rows")
