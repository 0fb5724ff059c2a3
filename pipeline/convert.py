"""Raw file -> Parquet in the catalog's canonical schema, streaming.

The CSV is read block by block (pyarrow's streaming reader) and written row group by row group,
so peak memory depends on the block size, not on the size of the month. Every column gets the
catalog's type, never an inferred one; columns a month lacks are written as nulls, in the
catalog's order, so every month of a service has byte-for-byte the same Parquet schema.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import datetime
import io
import logging
import math
import os
import threading
import time
from typing import Callable, Iterable, Iterator, Optional

import luigi
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline import catalog, legacy, settings
from pipeline.catalog import ConversionError
from pipeline.dataset_task import DatasetTask
from pipeline.download import GZIP_ERRORS, Download, DownloadRecord, gunzipped, gzip_damage
from pipeline.errors import PipelineError
from pipeline.lake import footer
from pipeline.zone_shapes import ZoneIndex, ZoneShapes

logger = logging.getLogger("pipeline.convert")

# The streaming CSV reader's memory grows with its block size (it reads ahead several blocks),
# so blocks are small and batches are gathered into row groups of a useful size for scans.
BLOCK_SIZE = 1 << 20  # bytes of CSV text per parsed batch
PARQUET_BATCH_ROWS = 64 * 1024  # rows per batch read from a source Parquet file
# How far the reading thread may run ahead of the writer, in bytes of Arrow data: about a row
# group of yellow csv. Less, and the reader stalls while a row group is encoded; more is memory.
READ_AHEAD_BYTES = 32 << 20
# Text columns (flags, base numbers: a handful of distinct values) travel as dictionaries, as the
# TLC's Parquet files store them and as the csv reader can build them block by block: the writer
# then writes the dictionary it is handed instead of hashing every value again (half of such a
# column's encoding time; reading the TLC's column this way is five times faster than as strings).
# The files are written without Arrow's schema in their footer, so every reader sees these
# columns as the catalog's plain strings (the Parquet schema is the same either way).
TEXT = pa.dictionary(pa.int32(), catalog.STRING)


class SourceCorrupt(PipelineError, OSError):
    """The downloaded file cannot be read to its end (a Parquet data page or a gzip stream
    that is damaged): downloading it again may heal it, converting it again cannot."""

    hint = "the download is damaged: run the same command again to fetch it anew"


class RowCountMismatch(SourceCorrupt):
    """A Parquet file's rows disagree with what it declares (its footer's count, a row group's, a
    column chunk's): the reader would drop rows or make them up. The bytes are not as their
    writer wrote them (a writer's counts agree by construction), so it is damage: fetch again."""

    def __init__(self, where: str, part: str, declared: int, found: int, found_what: str):
        self.where, self.part, self.declared, self.found = where, part, declared, found
        super().__init__(f"{where}: {part} declares {declared:,} rows, but {found_what} {found:,}, so rows would be lost or made up")


class InvalidText(ConversionError):
    """A text value of the source is not valid UTF-8 (every reader of the lake would fail on it)."""

    def __init__(self, where: str, column: str, row: int):
        self.where, self.column, self.row = where, column, row
        super().__init__(f"{where}: column {column}, data row {row}: not valid UTF-8 text")


class BadCsvRow(ConversionError):
    """A csv row the reader refused, found again (_first_bad_row): its number, line and why."""

    def __init__(self, where: str, row: int, line: int, why: str, column: Optional[str], error: str):
        self.where, self.row, self.line, self.why, self.column = where, row, line, why, column
        named = f"column {column}: " if column else ""
        super().__init__(f"{where}: data row {row} (line {line}): {named}{why}: {error}")


# float64 holds every integer below 2**53 exactly; an integer code a csv file writes beyond that
# may already have been rounded when it was read as float64 (9007199254740993 reads as ...992),
# so it is refused, never stored changed.
CSV_EXACT_INTS = 2.0**53
INT64_RANGE = 2.0**63


def _to_int(values: pa.Array, name: str, where: str, first_row: int, limit: float) -> pa.Array:
    """float64 -> int64, refusing a value with a fraction or, in magnitude, from ``limit`` on
    (CSV_EXACT_INTS for numbers a csv file wrote, INT64_RANGE for a Parquet file's doubles):
    integers are exact or refused, never truncated or rounded.

    Integer codes are read as float64 because some files write them as `1.0`."""
    low, high = pc.min_max(values).values()
    in_range = low.as_py() is None or (-limit < low.as_py() and high.as_py() < limit)
    if in_range:
        with contextlib.suppress(pa.ArrowInvalid):  # a fraction: found below
            return pc.cast(values, catalog.INT, safe=True)
    whole = pc.equal(values, pc.trunc(values))
    fits = pc.less(pc.abs(values), limit)
    bad = pc.index(pc.fill_null(pc.and_(whole, fits), True), False).as_py()
    value = values[bad].as_py()
    if limit == CSV_EXACT_INTS and math.isfinite(value) and value == math.trunc(value):
        why = f"value {value:.0f} may have been rounded: a csv file's integer codes are read exactly up to 2**53 only"
    else:
        why = f"value {value!r} is not a whole number that fits int64"
    raise ConversionError(f"{where}: column {name}, data row {first_row + bad + 1}: {why}") from None


def _read_ahead(batches: Iterable[pa.RecordBatch], max_bytes: int) -> Iterator[pa.RecordBatch]:
    """Iterate ``batches`` in a second thread, which runs up to ``max_bytes`` of batches ahead
    of the caller, so that reading (inflate and parse, or Parquet decode) goes on while the
    caller encodes (all of them let go of the GIL). The caller writes a whole row group at once:
    with too little room, the reader stalls through every write and one of two cores idles.
    Errors reach the caller; the thread stops when the caller does."""
    cond = threading.Condition()
    queued: collections.deque = collections.deque()
    ahead = 0  # bytes queued
    stopped = False
    done = object()

    def pump() -> None:
        nonlocal ahead
        end: object = done
        try:
            for batch in batches:
                with cond:
                    cond.wait_for(lambda: stopped or ahead < max_bytes)
                    if stopped:
                        return
                    queued.append(batch)
                    ahead += batch.nbytes
                    cond.notify_all()
        except BaseException as e:  # handed to the consumer, raised there
            end = e
        with cond:
            queued.append(end)
            cond.notify_all()

    thread = threading.Thread(target=pump, name="reader", daemon=True)
    thread.start()
    try:
        while True:
            with cond:
                cond.wait_for(lambda: queued)
                item = queued.popleft()
                if isinstance(item, pa.RecordBatch):
                    ahead -= item.nbytes
                    cond.notify_all()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        with cond:
            stopped = True
            cond.notify_all()
        thread.join()


def _cast(values: pa.Array, target: pa.DataType, name: str, where: str, first_row: int, int_limit: float) -> pa.Array:
    """A source column as the catalog's type, refusing any cast that would lose information
    (a fraction, an overflow, an integer that may have been rounded, a sub-microsecond time) with
    the column and the value. A time with a zone is an instant: it becomes New York's wall-clock
    time at that instant (catalog.TIME_ZONE), not the UTC clock's. Text comes as TEXT or is
    made TEXT."""
    if values.type == target:
        return values
    if target == TEXT:
        if pa.types.is_dictionary(values.type):
            values = values.dictionary_decode()
        return pc.dictionary_encode(_cast(values, catalog.STRING, name, where, first_row, int_limit))
    if target == catalog.INT and pa.types.is_floating(values.type):
        return _to_int(values, name, where, first_row, int_limit)
    if pa.types.is_timestamp(values.type) and values.type.tz is not None:
        values = pc.local_timestamp(pc.cast(values, pa.timestamp(values.type.unit, catalog.TIME_ZONE)))
    try:
        return pc.cast(values, target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ConversionError(
            f"{where}: column {name}, data rows {first_row + 1}-{first_row + len(values)}: "
            f"cannot make {values.type} into {target} without losing information ({e})"
        ) from None


# The catalog's types as the batches carry them to the writer, where they differ.
_IN_MEMORY = {catalog.STRING: TEXT}


def _in_memory(schema: pa.Schema) -> pa.Schema:
    """``schema`` as the batches carry it to the writer (_IN_MEMORY)."""
    return pa.schema([f.with_type(_IN_MEMORY.get(f.type, f.type)) for f in schema])


def _conform(
    batch: pa.RecordBatch, columns: list[catalog.Column], schema: pa.Schema, where: str, first_row: int, int_limit: float
) -> pa.RecordBatch:
    """The batch in the catalog's schema: its columns (named ``columns``, in file order) cast,
    the ones the file lacks as nulls, in the catalog's order."""
    present = {c.name: i for i, c in enumerate(columns)}
    arrays = []
    for field in schema:
        if field.name in present:
            arrays.append(_cast(batch.column(present[field.name]), field.type, field.name, where, first_row, int_limit))
        else:
            arrays.append(pa.nulls(batch.num_rows, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _conformed(
    batches: Iterable[pa.RecordBatch], columns: list[catalog.Column], schema: pa.Schema, where: str, int_limit: float
) -> Iterator[pa.RecordBatch]:
    first_row = 0
    for batch in batches:
        yield _conform(batch, columns, schema, where, first_row, int_limit)
        first_row += batch.num_rows


def _write_row_groups(
    dst: str,
    svc: catalog.Service,
    metadata: dict,
    batches: Iterable[pa.RecordBatch],
    columns: list[catalog.Column],
    where: str,
    progress: Callable[[int], None],
    int_limit: float,
    conform_while_reading: bool,
) -> int:
    """Conform the source batches (in file order, named ``columns``) to ``svc``'s schema and write
    them to ``dst`` in row groups of at least `[parquet] row_group_rows`, calling ``progress(rows)``
    after each; return the row count. ``metadata`` and the row count go into the footer as `tlc.*`
    keys. ``int_limit``: see _to_int.

    Conforming takes about a tenth of the encoding's time, on whichever of the two threads has
    room: ``conform_while_reading`` where the source reads in about half the time its rows take
    to encode (a Parquet file: about 8% faster end to end), not where reading is the slower part
    (a csv's parse, a legacy month's zone lookup)."""
    group_rows = settings.parquet().row_group_rows
    schema = _in_memory(svc.schema)
    if conform_while_reading:
        batches = _read_ahead(_conformed(batches, columns, schema, where, int_limit), READ_AHEAD_BYTES)
    else:
        batches = _conformed(_read_ahead(batches, READ_AHEAD_BYTES), columns, schema, where, int_limit)
    rows = 0
    pending: list[pa.RecordBatch] = []

    def write(writer: pq.ParquetWriter) -> None:
        # One dictionary per column of a row group (batches each bring their own), or the writer
        # falls back to hashing every value.
        writer.write_table(pa.Table.from_batches(pending).unify_dictionaries(), row_group_size=2 * group_rows)
        pending.clear()

    with pq.ParquetWriter(dst, schema, compression="zstd", store_schema=False) as writer:
        for batch in batches:
            pending.append(batch)
            rows += batch.num_rows
            if sum(b.num_rows for b in pending) >= group_rows:
                write(writer)
                progress(rows)
        if pending:
            write(writer)
        writer.add_key_value_metadata(footer({**metadata, "rows": rows}))
    written = pq.read_metadata(dst).num_rows
    if written != rows:  # what is on disk is what the lake gets
        raise RowCountMismatch(where, f"the written file {dst}", written, rows, "the source gave")
    return rows


def _declared_rows(metadata: pq.FileMetaData, where: str) -> list[int]:
    """Each row group's row count, once the footer is proven to agree with itself: the groups add
    up to the file's count, and each flat column's chunk holds a value (or a null) for every row
    of its group. The reader takes a group's count on trust: a smaller one drops rows silently."""
    groups = [metadata.row_group(g) for g in range(metadata.num_row_groups)]
    if sum(g.num_rows for g in groups) != metadata.num_rows:
        raise RowCountMismatch(where, "the footer", metadata.num_rows, sum(g.num_rows for g in groups), "its row groups add up to")
    flat = [c for c in range(metadata.num_columns) if metadata.schema.column(c).max_repetition_level == 0]
    for g, group in enumerate(groups):
        for c in flat:
            chunk = group.column(c)
            if chunk.num_values != group.num_rows:
                part = f"row group {g + 1} of {len(groups)}"
                raise RowCountMismatch(where, part, group.num_rows, chunk.num_values, f"its column {chunk.path_in_schema} holds")
    return [g.num_rows for g in groups]


def _valid_text(batch: pa.RecordBatch, text: list[int], where: str, first_row: int) -> pa.RecordBatch:
    """``batch``, its columns ``text`` proven valid UTF-8 (the Parquet reader takes a file's bytes
    as they are), or InvalidText naming the first row that is not. A dictionary's values are
    checked, not every row: cheap. A dictionary is its row group's, so a bad value in it may be
    one no row of this batch uses: then the batch goes on as plain text, without that value."""
    for i in text:
        values = batch.column(i)
        dictionary = pa.types.is_dictionary(values.type)
        try:
            (values.dictionary if dictionary else values).validate(full=True)
        except pa.ArrowInvalid:
            bad = _invalid_utf8(values.dictionary if dictionary else values)
            if not bad:  # not the text's bytes but the array's own structure: damage (_parquet_batches)
                raise
            row = pc.index(pc.is_in(values.indices, value_set=pa.array(bad, values.indices.type)), True).as_py() if dictionary else bad[0]
            if row >= 0:
                raise InvalidText(where, batch.schema.names[i], first_row + row + 1) from None
            batch = batch.set_column(i, batch.schema.field(i).with_type(values.type.value_type), values.dictionary_decode())
    return batch


def _invalid_utf8(values: pa.Array) -> list[int]:
    """The indices of the values of ``values`` (text) that are not valid UTF-8: on the error's
    path only, one value at a time."""
    binary = pa.large_binary() if pa.types.is_large_string(values.type) else pa.binary()
    bad = []
    for i, raw in enumerate(values.view(binary).to_pylist()):
        try:
            if raw is not None:
                raw.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(i)
    return bad


def _parquet_batches(source: pq.ParquetFile, where: str) -> Iterator[pa.RecordBatch]:
    """One source row group at a time (one iter_batches over the whole file holds on to more
    memory the more groups it has read), in small batches (the reader's memory grows with the
    batch size), decoded on this one thread (Arrow's threads, one per column, hold more pages
    at once, and are no faster: the writer has the other core). Every row group must give the
    rows it declares (_declared_rows), and its text be UTF-8. The footer was checked at
    download; a page that cannot be read is corruption."""
    declared = _declared_rows(source.metadata, where)
    text = [i for i, field in enumerate(source.schema_arrow) if catalog.kind_of(field.type) == "string"]
    rows = 0
    try:
        for group in range(source.num_row_groups):
            start = rows
            for batch in source.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], use_threads=False):
                yield _valid_text(batch, text, where, rows)
                rows += batch.num_rows
            if rows - start != declared[group]:
                part = f"row group {group + 1} of {source.num_row_groups}"
                raise RowCountMismatch(where, part, declared[group], rows - start, "reading it gave")
    except (OSError, pa.ArrowInvalid) as e:
        if isinstance(e, SourceCorrupt):
            raise
        raise SourceCorrupt(
            f"{where}: corrupt Parquet data after data row {rows}, in row group {group + 1} of {source.num_row_groups} ({e})"
        ) from None


def _check_source_types(schema: pa.Schema, svc: catalog.Service, where: str) -> None:
    """Refuse a source Parquet file with a column whose Arrow type its catalog column does not
    take (catalog.source_kinds), naming the column, the type found and the kinds taken: once per
    file, from its schema, before any row is read."""
    found = {field.name.strip(): field.type for field in schema}
    for name, column, kinds in catalog.source_kinds(svc, schema.names, where):
        type_ = found[name.strip()]
        if catalog.kind_of(type_) not in kinds:
            raise catalog.UnacceptedType(where, name, type_, column, kinds)


def convert_parquet(
    src: str,
    header: str,
    dst: str,
    svc: catalog.Service,
    where: str,
    metadata: dict,
    progress: Callable[[int, int, int], None] = lambda rows, done, total: None,
    zones: Optional[ZoneIndex] = None,
) -> int:
    """Write a source Parquet file (the TLC's) to ``dst`` in ``svc``'s schema, one row group at a
    time, whatever physical types and name spellings this month's file has; return the row count.
    A file in a legacy layout (yellow 2009-2010) has its coordinates located in ``zones``."""
    columns = catalog.resolve_header(svc, header, where)
    plan = catalog.legacy_plan(svc, header.split(","), where)
    # buffer_size: column chunks are read through a buffer, not whole, so a month written as
    # one huge row group still streams. Text columns are read as the dictionaries the file holds
    # (see TEXT), but for the legacy layout, whose text is decoded into codes.
    file_metadata = pq.read_metadata(src)
    schema = file_metadata.schema.to_arrow_schema()
    _check_source_types(schema, svc, where)
    text = [] if plan else [f.name for f in schema if pa.types.is_string(f.type)]
    source = pq.ParquetFile(src, metadata=file_metadata, buffer_size=BLOCK_SIZE, read_dictionary=text)
    total = source.metadata.num_rows
    batches = _parquet_batches(source, where)
    if plan:
        if zones is None:
            raise catalog.SchemaMismatch(f"{where}: a file in the legacy {svc.name} layout, for a month the catalog does not list as one")
        batches = legacy.modernised(batches, plan, zones, where)
    return _write_row_groups(
        dst, svc, metadata, batches, columns, where, lambda rows: progress(rows, rows, total), INT64_RANGE, conform_while_reading=not plan
    )


# What the csv reader makes of a column of the catalog's type: integer codes as float64 (see
# _to_int), the rest as the writer takes them.
_CSV_TYPES = {**_IN_MEMORY, catalog.INT: catalog.FLOAT}

_CHECK_TEXT: dict[pa.DataType, Callable[[str], object]] = {
    catalog.INT: float,
    catalog.FLOAT: float,
    catalog.TIMESTAMP: datetime.datetime.fromisoformat,
}


# The longest line the csv error path reads (_first_bad_row), in characters: far above any real
# TLC row (a few hundred), far below what a small gzip can inflate to (547 KB held a 1 GB line).
LINE_LIMIT = 1 << 20


class _LineTooLong(Exception):
    pass


def _lines(text: io.TextIOBase) -> Iterator[str]:
    """The lines of ``text``, each read up to LINE_LIMIT characters, so memory stays bounded
    whatever the file holds; raises _LineTooLong at a longer one."""
    while line := text.readline(LINE_LIMIT):
        if len(line) == LINE_LIMIT and not line.endswith(("\n", "\r")):
            raise _LineTooLong
        yield line


def _first_bad_row(src: str, columns: list[catalog.Column], after: int) -> Optional[tuple[int, int, str, Optional[str]]]:
    """Where the csv reader stopped in ``src``: the first data row after the first ``after`` (the
    rows of the blocks read before the failing one) with the wrong number of fields, text that is
    not UTF-8, a value its column's type cannot hold, or a line longer than LINE_LIMIT, as
    (data row, line, why, column or None). Arrow's errors name neither, and it reads a block of
    rows at once; this reads the rows again, one by one, on the error's path only. None when
    Python's readers take every row (they are more lenient in places)."""
    with open(src, "rb") as raw:
        # surrogateescape: bytes that are not UTF-8 survive, to be found in their field below.
        text = io.TextIOWrapper(gunzipped(raw) if src.endswith(".gz") else raw, encoding="utf-8", errors="surrogateescape", newline="")
        lines = _lines(text)
        reader = csv.reader(lines)
        row = 0
        try:
            next(reader, None)  # the header
            for fields in _until_damage(reader):
                if not fields:  # a blank line is no row, for Arrow either
                    continue
                row += 1
                if row <= after:
                    continue
                if len(fields) != len(columns):
                    return row, reader.line_num, f"{len(fields)} fields, the header has {len(columns)}", None
                for column, value in zip(columns, fields):
                    why = _field_fault(value, column)
                    if why:
                        return row, reader.line_num, why, column.name
        except csv.Error as e:  # a field longer than csv.field_size_limit(), or a line cut at LINE_LIMIT inside quotes
            return row + 1, reader.line_num, str(e), None
        except _LineTooLong:
            why = f"a line longer than {LINE_LIMIT:,} characters (convert.LINE_LIMIT), which no TLC row is"
            return row + 1, reader.line_num + 1, why, None
    return None


def _field_fault(value: str, column: catalog.Column) -> Optional[str]:
    """Why a csv field cannot be its column's value, or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{value.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8 text"
    check = _CHECK_TEXT.get(column.type)
    try:
        if value and check:
            check(value)
    except ValueError:
        return f"{value!r} is not a {column.type}"
    return None


def _until_damage(rows: Iterator[list[str]]) -> Iterator[list[str]]:
    """``rows`` up to where their gzip stream breaks off (convert tells that damage apart)."""
    with contextlib.suppress(*GZIP_ERRORS):
        yield from rows


def _csv_batches(
    open_reader: Callable[[], pacsv.CSVStreamingReader], src: str, columns: list[catalog.Column], where: str
) -> Iterator[pa.RecordBatch]:
    """The parsed batches, with a parse or conversion error turned into one that names the row,
    and a gzip stream that breaks off into SourceCorrupt."""
    parsed = 0  # rows in the blocks parsed so far (the writer is behind: see _read_ahead)

    def counted() -> Iterator[pa.RecordBatch]:
        nonlocal parsed
        for batch in open_reader():  # opening parses the first block already
            parsed += batch.num_rows
            yield batch

    try:
        yield from counted()
    except pa.ArrowInvalid as e:
        found = _first_bad_row(src, columns, parsed)
        if found:
            raise BadCsvRow(where, *found, str(e)) from None
        raise ConversionError(f"{where}: in data rows {parsed + 1} and on: {e}") from None
    except GZIP_ERRORS as e:
        raise SourceCorrupt(f"{where}: truncated or corrupt gzip after data row {parsed} ({e})") from None


def convert(
    src: str,
    header: str,
    dst: str,
    svc: catalog.Service,
    where: str,
    metadata: dict,
    progress: Callable[[int, int, int], None] = lambda rows, done, total: None,
) -> int:
    """Write ``src`` (csv or csv.gz) to ``dst`` as Parquet with ``svc``'s schema; return the row count.

    ``header`` is the file's header line, as the Download step read and recorded it."""
    columns = catalog.resolve_header(svc, header, where)
    if catalog.legacy_plan(svc, next(csv.reader([header])), where):
        raise catalog.SchemaMismatch(
            f"{where}: the legacy {svc.name} layout is read from the TLC's Parquet files only ([source] kind = tlc), not from csv"
        )
    read_options = pacsv.ReadOptions(column_names=[c.name for c in columns], skip_rows=1, block_size=BLOCK_SIZE)
    convert_options = pacsv.ConvertOptions(
        column_types={c.name: _CSV_TYPES.get(c.type, c.type) for c in columns},
        # Only an empty field is null: "NA" and "N/A" are real zone names.
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    try:
        # Arrow's CSV reader reads the inflated bytes on its own I/O thread, ahead of the parse.
        with open(src, "rb") as raw, pa.PythonFile(gunzipped(raw) if src.endswith(".gz") else raw, mode="r") as stream:
            total = os.fstat(raw.fileno()).st_size
            return _write_row_groups(
                dst,
                svc,
                metadata,
                _csv_batches(lambda: pacsv.open_csv(stream, read_options, convert_options=convert_options), src, columns, where),
                columns,
                where,
                lambda rows: progress(rows, raw.tell(), total),
                CSV_EXACT_INTS,
                conform_while_reading=False,
            )
    except ConversionError as e:
        # The stream's CRC is checked at its end, after the rows: a damaged stream can inflate to
        # a bad row first. Then the row is not the file's, and downloading again may heal it.
        damage = gzip_damage(src) if src.endswith(".gz") else None
        if damage:
            row = str(e).removeprefix(f"{where}: ")
            raise SourceCorrupt(f"{where}: truncated or corrupt gzip ({damage}), so this is not the file's row: {row}") from None
        raise


class ToParquet(DatasetTask):
    """Convert the downloaded file to Parquet in the catalog's schema (staging area)."""

    def requires(self):
        if not catalog.legacy_month(self.svc, self.month):
            return {"download": self.clone(Download)}
        return {"download": self.clone(Download), "shapes": ZoneShapes()}

    def output(self):
        return luigi.LocalTarget(self.staging_path("parquet", self.svc.file_stem(self.month) + ".parquet"))

    def forget_download(self) -> None:
        """Make the Download incomplete (its record first: without it the file counts for
        nothing), so the next run fetches the file again instead of converting it again."""
        for target in (self.input()["download"]["meta"], self.input()["download"]["file"]):
            if target.exists():
                target.remove()

    def zones(self) -> Optional[ZoneIndex]:
        """The index of the zone shapes, for a legacy month."""
        if "shapes" not in self.input():
            return None
        self.report(0, 1, "indexing the zone shapes")
        with self.input()["shapes"].local_path() as path:
            return ZoneIndex.from_parquet(path)

    def run(self):
        self.inputs_here()
        raw = self.input()["download"]["file"].path
        source = DownloadRecord.read(self.input()["download"]["meta"].path)
        where = f"{self.label} ({raw})"
        logger.info("%s: converting %s to Parquet", self.label, raw)
        started = time.monotonic()

        def progress(rows: int, done: int, total: int) -> None:
            self.report(done, total, f"converted {rows:,} rows")

        meta = {
            "service": self.service,
            "month": catalog.month_str(self.month) if self.month else "",
            "source_url": source.url,
            "source_sha256": source.sha256,
            "source_size": source.size,
            "source_etag": source.etag,
            "source_last_modified": source.last_modified,
        }
        try:
            with self.staged(self.output()) as tmp:
                if raw.endswith(".parquet"):
                    rows = convert_parquet(raw, source.header, tmp, self.svc, where, meta, progress, self.zones())
                else:
                    rows = convert(raw, source.header, tmp, self.svc, where, meta, progress)
                catalog.check_rows(self.svc, rows, where)
        except SourceCorrupt as e:
            self.forget_download()
            e.args = (f"{e}; the download was removed, so the next run fetches it again",)  # the same error, its fields kept
            raise
        seconds = time.monotonic() - started
        logger.info(
            "%s: wrote %s rows to %s in %.1f s (%.0f rows/s)",
            self.label,
            f"{rows:,}",
            self.output().path,
            seconds,
            rows / max(seconds, 1e-9),
        )
        self.report(1, 1, f"converted {rows:,} rows")
