"""Issue 26, the content classes, each tested with generated cases and the issue's own example:

- done means proven whole: the rows read from a source Parquet file are the rows its footer, its
  row groups and its column chunks declare, and the rows written are the rows read; a footer
  that disagrees is damage, and the month is fetched again (convert._declared_rows);
- types by contract: a Parquet column arrives as one of the Arrow types its catalog type takes
  (catalog.ACCEPTS), converted exactly, or the file is refused naming the column and the type
  (convert._check_source_types); and any valid month, csv or Parquet, round-trips every value;
- text is valid UTF-8 on every path (convert._check_text; csv's reader, named by _first_bad_row);
- memory stays bounded on the error path: a line longer than convert.LINE_LIMIT is an error
  naming its row, not a gigabyte held in memory.
"""

from __future__ import annotations

import csv
import datetime
import gzip
import io
import struct
import subprocess
import sys
import tempfile
import zlib
import zoneinfo
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import Download, IngestMonth, ToParquet
from pipeline.catalog import ACCEPTS, FLOAT, INT, SERVICES, STRING, TIMESTAMP, UnacceptedType
from pipeline.convert import LINE_LIMIT, BadCsvRow, InvalidText, RowCountMismatch, SourceCorrupt, convert, convert_parquet
from pipeline.lake import lake_path

from conftest import ROOT, configured
from mirror import DATA, file_mirror, month, replaced

GENUINE_GREEN = DATA / "parquet" / "green_tripdata_2020-04.parquet"  # the TLC's own file, one row group
GREEN_ROWS = 35644


# ---------------------------------------------------------------------------------------------
# A Parquet footer, read and written: the Thrift compact protocol, just what FileMetaData uses.
# pyarrow writes footers but lets no one change one, so damage is made here, field by field.

STOP, TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, STRUCT = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12


class Compact:
    """Decodes a Thrift compact-protocol struct into {field id: [type, value]} (lists as
    [element type, [values]], structs as dicts), and encodes it back byte for byte."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def byte(self) -> int:
        self.at += 1
        return self.data[self.at - 1]

    def varint(self) -> int:
        shift = value = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, kind: int):
        if kind in (TRUE, FALSE):
            return kind == TRUE
        if kind == BYTE:
            return self.byte()
        if kind in (I16, I32, I64):
            return self.zigzag()
        if kind == DOUBLE:
            self.at += 8
            return self.data[self.at - 8 : self.at]
        if kind == BINARY:
            n = self.varint()
            self.at += n
            return self.data[self.at - n : self.at]
        if kind in (LIST, SET):
            head = self.byte()
            size, element = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            return [element, [self.value(element) for _ in range(size)]]
        assert kind == STRUCT, kind
        return self.struct()

    def struct(self) -> dict:
        fields, last = {}, 0
        while (head := self.byte()) != STOP:
            kind, delta = head & 0x0F, head >> 4
            last = last + delta if delta else self.zigzag()
            fields[last] = [kind, self.value(kind)]
        return fields


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        if n < 0x80:
            return bytes(out + bytes([n]))
        out.append(n & 0x7F | 0x80)
        n >>= 7


def _zigzag(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


def _encode_value(kind: int, value) -> bytes:
    if kind == BYTE:
        return bytes([value])
    if kind in (I16, I32, I64):
        return _zigzag(value)
    if kind == DOUBLE:
        return value
    if kind == BINARY:
        return _varint(len(value)) + value
    if kind in (LIST, SET):
        element, items = value
        head = bytes([len(items) << 4 | element]) if len(items) < 15 else bytes([0xF0 | element]) + _varint(len(items))
        return head + b"".join(_encode_value(element, item) for item in items)
    assert kind == STRUCT, kind
    return encode_struct(value)


def encode_struct(fields: dict) -> bytes:
    out, last = bytearray(), 0
    for fid, (kind, value) in sorted(fields.items()):
        wire = (TRUE if value else FALSE) if kind in (TRUE, FALSE) else kind
        out += bytes([(fid - last) << 4 | wire]) if 0 < fid - last <= 15 else bytes([wire]) + _zigzag(fid)
        if kind not in (TRUE, FALSE):
            out += _encode_value(kind, value)
        last = fid
    return bytes(out + bytes([STOP]))


def read_footer(data: bytes) -> tuple[bytes, dict]:
    """(the file's bytes before its footer, the footer as Compact fields)."""
    assert data[-4:] == b"PAR1"
    length = struct.unpack("<I", data[-8:-4])[0]
    start = len(data) - 8 - length
    return data[:start], Compact(data[start:-8]).struct()


def write_footer(body: bytes, footer: dict) -> bytes:
    encoded = encode_struct(footer)
    return body + encoded + struct.pack("<I", len(encoded)) + b"PAR1"


# FileMetaData: 3 num_rows, 4 row_groups; RowGroup: 1 columns, 3 num_rows; ColumnChunk: 3 meta_data;
# ColumnMetaData: 5 num_values.
def row_groups(footer: dict) -> list[dict]:
    return footer[4][1][1]


def chunk_meta(group: dict) -> list[dict]:
    return [chunk[3][1] for chunk in group[1][1][1]]


def test_the_footer_codec_writes_back_the_bytes_it_read():
    body, footer = read_footer(GENUINE_GREEN.read_bytes())
    assert write_footer(body, footer) == GENUINE_GREEN.read_bytes()
    assert footer[3][1] == GREEN_ROWS and row_groups(footer)[0][3][1] == GREEN_ROWS


# ---------------------------------------------------------------------------------------------
# Done means proven whole: row counts.


def several_groups(path: Path) -> bytes:
    """The genuine green month rewritten in three row groups (pyarrow, as tests/tlc_parquet.py does)."""
    sink = io.BytesIO()
    pq.write_table(pq.read_table(path), sink, row_group_size=GREEN_ROWS // 3 + 1)
    return sink.getvalue()


BASES = {"genuine": GENUINE_GREEN.read_bytes(), "three groups": several_groups(GENUINE_GREEN)}


@st.composite
def lying_footers(draw) -> tuple[bytes, str]:
    """A real file whose footer misstates a row count: the file's, a row group's, a column
    chunk's, or a row group's and the file's together (so only the column chunks tell), or a
    row group's, its chunks' and the file's together, upwards (only reading tells)."""
    name = draw(st.sampled_from(sorted(BASES)))
    body, footer = read_footer(BASES[name])
    groups = row_groups(footer)
    g = draw(st.integers(0, len(groups) - 1))
    declared = groups[g][3][1]
    what = draw(st.sampled_from(["file", "group", "chunk", "group and file", "everything, upwards"]))
    if what == "everything, upwards":
        new = declared + draw(st.integers(1, declared))
    else:
        new = draw(st.integers(0, 2 * declared).filter(lambda n: n != declared))
    delta = new - declared
    if what in ("file", "group and file", "everything, upwards"):
        footer[3][1] += delta
    if what in ("group", "group and file", "everything, upwards"):
        groups[g][3][1] = new
    if what in ("chunk", "everything, upwards"):
        chunks = chunk_meta(groups[g])
        for c in range(len(chunks)) if what == "everything, upwards" else [draw(st.integers(0, len(chunks) - 1))]:
            chunks[c][5][1] = new
    return Damaged(write_footer(body, footer), f"{name}: {what} of row group {g + 1}, {declared} -> {new}")


class Damaged(bytes):
    """A damaged file's bytes, shown by how they were damaged (not 2 MB of them)."""

    def __new__(cls, data: bytes, how: str):
        damaged = super().__new__(cls, data)
        damaged.how = how
        return damaged

    def __repr__(self) -> str:
        return self.how


@pytest.fixture
def fresh(workspace):
    """A new lake, staging area and warehouse for each call (each generated case its own)."""

    def make():
        root = Path(tempfile.mkdtemp(dir=workspace))
        return configured(
            {
                ("lake", "root"): str(root / "lake"),
                ("ingest", "staging"): str(root / "staging"),
                ("duckdb", "path"): str(root / "warehouse.duckdb"),
                ("source", "kind"): "tlc",
                ("source", "base_url"): file_mirror(root, "trip-data/green_tripdata_2020-04.parquet", b""),
            }
        ), root

    return make


def assert_refused_with_nothing_done(task, root: Path) -> None:
    assert not task.complete() and not ToParquet(service=task.service, month=task.month).complete()
    assert not Path(ToParquet(service=task.service, month=task.month).output().path).exists()
    assert not (root / "lake").exists() or not any(p.is_file() for p in (root / "lake").rglob("*"))


@given(lying_footers())
def test_a_footer_that_misstates_any_row_count_refuses_the_month_and_fetches_it_again(fresh, run, damaged):
    context, root = fresh()
    with context:
        (root / "mirror" / "trip-data" / "green_tripdata_2020-04.parquet").write_bytes(damaged)
        task = IngestMonth(service="green", month=month("2020-04"))

        failures = run(task).failures

        assert_refused_with_nothing_done(task, root)
        if "Download" in failures:  # a file that declares no row at all is refused there already
            assert "0 data rows; a whole green file has at least 1" in str(failures["Download"])
            return
        error = failures["ToParquet"]
        assert isinstance(error, SourceCorrupt)
        assert str(error).startswith("green 2020-04 (") and "green_tripdata_2020-04.parquet): " in str(error)
        assert str(error).endswith("the download was removed, so the next run fetches it again")
        assert not Download(service="green", month=month("2020-04")).complete()


def test_a_row_group_declaring_90_percent_of_the_file_is_refused_end_to_end(workspace, run, mirror, http_server):
    """The issue's case, served by the real HTTP mirror: the TLC's yellow 2021-02 with its first
    row group declaring 90% of its rows. Before: exit 0, a tenth of a group's rows lost."""
    served = mirror / "tlc" / "trip-data" / "yellow_tripdata_2021-02.parquet"
    body, footer = read_footer(served.read_bytes())
    group = row_groups(footer)[0]
    declared = group[3][1]
    group[3][1] = declared * 9 // 10
    footer[3][1] -= declared - group[3][1]
    task = IngestMonth(service="yellow", month=month("2021-02"))
    with configured({("source", "kind"): "tlc", ("source", "base_url"): f"{http_server}/tlc"}):
        with replaced(served, write_footer(body, footer)):
            error = run(task).failures["ToParquet"]

            assert isinstance(error, RowCountMismatch)
            groups = len(row_groups(footer))
            assert (error.part, error.declared, error.found) == (f"row group 1 of {groups}", declared * 9 // 10, declared)
            assert f"yellow_tripdata_2021-02.parquet): row group 1 of {groups} declares {declared * 9 // 10:,} rows" in str(error)
            assert str(error).endswith("the download was removed, so the next run fetches it again")
            assert not task.complete() and not Path(ToParquet(service="yellow", month=month("2021-02")).output().path).exists()
            assert not Path(lake_path(SERVICES["yellow"], month("2021-02"))).exists()

        assert not run(task).failures  # the source serves the whole file again: fetched and converted
        assert pq.ParquetFile(lake_path(SERVICES["yellow"], month("2021-02"))).metadata.num_rows == pq.ParquetFile(served).metadata.num_rows


# ---------------------------------------------------------------------------------------------
# Types by contract, and every value of a valid month round-tripped.

NY = zoneinfo.ZoneInfo("America/New_York")
INTEGERS = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]
FLOATS = [pa.float32(), pa.float64()]
TIMES = [pa.timestamp(unit, tz) for unit in ("s", "ms", "us", "ns") for tz in (None, "UTC", "America/New_York", "Asia/Tokyo")]
TEXTS = [pa.string(), pa.large_string(), pa.dictionary(pa.int32(), pa.string()), pa.dictionary(pa.int8(), pa.large_string())]
# Types no catalog column takes: each would be cast into values the file never held.
OTHERS = [
    pa.bool_(),
    pa.float16(),
    pa.date32(),
    pa.date64(),
    pa.time64("us"),
    pa.duration("s"),
    pa.decimal128(10, 2),
    pa.binary(),
    pa.large_binary(),
    pa.list_(pa.int64()),
    pa.struct([("a", pa.int64())]),
]
KIND_OF = {
    **{t: "integer" for t in INTEGERS},
    **{t: "floating" for t in FLOATS},
    **{t: "timestamp" for t in TIMES},
    **{t: "string" for t in TEXTS},
    pa.null(): "null",
}


def values_for(draw, catalog_type: pa.DataType, source: pa.DataType, n: int) -> tuple[list, list]:
    """(values the source column holds, the values the lake must hold), drawn so that each is the
    other exactly: whole numbers in the source type's range, times in its unit's, and so on."""
    nulls = st.none()
    if source == pa.null():
        return [None] * n, [None] * n
    if pa.types.is_integer(source):
        info = (
            (0, 2**source.bit_width - 1)
            if pa.types.is_unsigned_integer(source)
            else (-(2 ** (source.bit_width - 1)), 2 ** (source.bit_width - 1) - 1)
        )
        high = info[1] if catalog_type != FLOAT else min(info[1], 2**53)  # a double holds integers exactly to 2**53
        low = info[0] if catalog_type != FLOAT else max(info[0], -(2**53))
        if catalog_type == INT:
            high = min(high, 2**63 - 1)
        got = draw(st.lists(st.integers(low, high) | nulls, min_size=n, max_size=n))
        want = [None if v is None else (float(v) if catalog_type == FLOAT else str(v) if catalog_type == STRING else v) for v in got]
        return got, want
    if pa.types.is_floating(source):
        width = 32 if source == pa.float32() else 64
        if catalog_type == INT:
            limit = 2**24 if width == 32 else 2**53
            got = draw(st.lists(st.integers(-limit, limit) | nulls, min_size=n, max_size=n))
            return [None if v is None else float(v) for v in got], got
        got = draw(st.lists(st.floats(width=width, allow_nan=False) | nulls, min_size=n, max_size=n))
        return got, got
    if pa.types.is_timestamp(source):
        step = {"s": 1_000_000, "ms": 1000, "us": 1, "ns": 1}[source.unit]
        low, high = (-(2**63) // 1000 + 1, 2**63 // 1000 - 1) if source.unit == "ns" else (-62135596800 * 10**6, 253402300799 * 10**6)
        if source.tz:  # within the years zoneinfo can place in New York
            low, high = max(low, -2208988800 * 10**6), min(high, 4102444800 * 10**6)
        micros = draw(st.lists(st.integers(low // step, high // step).map(lambda v: v * step) | nulls, min_size=n, max_size=n))
        epoch = datetime.datetime(1970, 1, 1)
        want = [None if v is None else epoch + datetime.timedelta(microseconds=v) for v in micros]
        if source.tz:
            want = [None if w is None else w.replace(tzinfo=datetime.timezone.utc).astimezone(NY).replace(tzinfo=None) for w in want]
        divisor = {"s": 10**6, "ms": 1000, "us": 1, "ns": 1}[source.unit]
        raw = [None if v is None else (v * 1000 if source.unit == "ns" else v // divisor) for v in micros]
        return raw, want
    text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8)
    got = draw(st.lists(st.sampled_from(draw(st.lists(text, min_size=1, max_size=4))) | nulls, min_size=n, max_size=n))
    return got, got


def source_array(values: list, source: pa.DataType) -> pa.Array:
    if pa.types.is_dictionary(source):
        return pa.array(values, source.value_type).dictionary_encode().cast(source)
    if pa.types.is_timestamp(source):
        return pa.array(values, pa.int64()).cast(pa.timestamp(source.unit)).cast(source)
    return pa.array(values, source)


MONTHS = {"yellow": "2021-02", "green": "2021-03", "fhv": "2019-02", "fhvhv": "2021-06"}


@st.composite
def parquet_months(draw, swapped: bool = False):
    """A valid month of a service as a Parquet file: its required columns and a random choice of
    the others, in random order and spelling case, each of a random accepted type, with values
    drawn to fit it; with ``swapped``, one column of a type its catalog column does not take."""
    svc = SERVICES[draw(st.sampled_from(sorted(MONTHS)))]
    optional = [c for c in svc.columns if c.name not in svc.required]
    chosen = [c for c in svc.columns if c.name in svc.required] + draw(st.lists(st.sampled_from(optional), unique=True))
    chosen = draw(st.permutations(chosen))
    n = draw(st.integers(1, 6))
    columns, truth, types = {}, {}, {}
    bad = draw(st.sampled_from(chosen)) if swapped else None
    for column in chosen:
        accepted = [t for t, kind in KIND_OF.items() if kind in ACCEPTS[column.type]]
        refused = [t for t in INTEGERS + FLOATS + TIMES + TEXTS + OTHERS if KIND_OF.get(t) not in ACCEPTS[column.type]]
        source = draw(st.sampled_from(refused if column == bad else accepted))
        name = "".join(ch.upper() if draw(st.booleans()) else ch.lower() for ch in column.name)
        if column == bad:
            columns[name] = pa.nulls(n, source) if source != pa.null() else pa.nulls(n)
        else:
            raw, want = values_for(draw, column.type, source, n)
            columns[name] = source_array(raw, source)
            truth[column.name] = want
        types[column.name] = (name, source)
    return svc, pa.table(columns), truth, types, bad


def convert_table(tmp: Path, svc, table: pa.Table) -> tuple[int, Path]:
    src, dst = tmp / "month.parquet", tmp / "out.parquet"
    dst.unlink(missing_ok=True)
    pq.write_table(table, src, row_group_size=max(1, table.num_rows // 2))
    rows = convert_parquet(str(src), ",".join(table.column_names), str(dst), svc, f"{svc.name} (month.parquet)", {})
    return rows, dst


@given(parquet_months())
def test_every_value_of_a_valid_parquet_month_arrives_exactly_whatever_its_accepted_types(tmp_path, case):
    svc, table, truth, types, _ = case

    rows, dst = convert_table(tmp_path, svc, table)

    written = pq.read_table(dst)
    assert rows == table.num_rows and written.schema.remove_metadata() == svc.schema
    for column in svc.columns:
        want = truth.get(column.name, [None] * rows)
        assert written[column.name].to_pylist() == want, (column.name, types.get(column.name))


@given(parquet_months(swapped=True))
def test_a_parquet_column_of_a_type_its_catalog_column_does_not_take_is_refused_by_name(tmp_path, case):
    svc, table, _, types, bad = case
    name, found = types[bad.name]

    with pytest.raises(UnacceptedType) as error:
        convert_table(tmp_path, svc, table)

    assert (error.value.column, error.value.becomes, error.value.expected) == (name, bad, ACCEPTS[bad.type])
    assert error.value.found == pq.read_schema(tmp_path / "month.parquet").field(name).type
    into = "" if name == bad.name else f" (which becomes {bad.name})"
    assert f"(month.parquet): column {name}{into} is {error.value.found}, not one of the types it may arrive as (" in str(error.value)
    assert not (tmp_path / "out.parquet").exists()  # refused before a row is written


ISSUE_SWAPS = [
    ("tpep_pickup_datetime", pa.array([1230], pa.int64()), "int64"),  # epoch seconds: 1970-01-01 00:20:30
    ("VendorID", pa.array([datetime.datetime(2021, 1, 1, 12, 15, 56)], pa.timestamp("us")), "timestamp[us]"),
    ("passenger_count", pa.array([True]), "bool"),
]


@pytest.mark.parametrize("column, values, found", ISSUE_SWAPS, ids=[c for c, _, _ in ISSUE_SWAPS])
def test_the_issues_other_typed_columns_are_refused_not_cast(tmp_path, column, values, found):
    svc = SERVICES["yellow"]
    table = pa.table({c.name: pa.nulls(1, c.type) for c in svc.columns}).set_column(svc.schema.get_field_index(column), column, values)

    with pytest.raises(UnacceptedType) as error:
        convert_table(tmp_path, svc, table)

    assert str(error.value) == (
        f"yellow (month.parquet): column {column} is {found}, not one of the types it may arrive as "
        f"({', '.join(ACCEPTS[svc.schema.field(column).type])}), so the file is refused rather than cast"
    )


def test_a_legacy_files_coordinates_must_be_numbers_its_text_times_and_words_being_its_own(tmp_path):
    import tlc_parquet

    svc = SERVICES["yellow"]
    legacy = tlc_parquet.legacy_files()["yellow_tripdata_2009-01.parquet"]
    assert legacy.schema.field("Trip_Pickup_DateTime").type == pa.string()  # as the TLC's own files
    swapped = legacy.set_column(legacy.schema.get_field_index("Start_Lon"), "Start_Lon", legacy["Start_Lon"].cast(pa.string()))
    src = tmp_path / "month.parquet"
    pq.write_table(swapped, src)

    with pytest.raises(UnacceptedType) as error:
        convert_parquet(str(src), ",".join(swapped.column_names), str(tmp_path / "out.parquet"), svc, "yellow 2009-01", {}, zones=None)

    assert (error.value.column, error.value.becomes.name) == ("Start_Lon", "PULocationID")
    assert "yellow 2009-01: column Start_Lon (which becomes PULocationID) is string, not one of the types it may arrive as" in str(
        error.value
    )


@st.composite
def csv_months(draw):
    """A valid month of a service as csv text: required and random other columns, in random order
    and case, values written the ways the TLC's files write them (codes as `1` or `1.0`)."""
    svc = SERVICES[draw(st.sampled_from(sorted(MONTHS)))]
    optional = [c for c in svc.columns if c.name not in svc.required]
    chosen = draw(
        st.permutations([c for c in svc.columns if c.name in svc.required] + draw(st.lists(st.sampled_from(optional), unique=True)))
    )
    n = draw(st.integers(1, 6))
    nulls = st.none()
    truth, texts = {}, {}
    for column in chosen:
        if column.type == INT:
            values = draw(st.lists(st.integers(-(2**53) + 1, 2**53 - 1) | nulls, min_size=n, max_size=n))
            text = [None if v is None else f"{v}.0" if draw(st.booleans()) else str(v) for v in values]
        elif column.type == FLOAT:
            values = draw(st.lists(st.floats(allow_nan=False) | nulls, min_size=n, max_size=n))
            text = [None if v is None else repr(v) for v in values]
        elif column.type == TIMESTAMP:
            values = draw(
                st.lists(st.datetimes(datetime.datetime(1900, 1, 1), datetime.datetime(3019, 12, 31)) | nulls, min_size=n, max_size=n)
            )
            text = [None if v is None else v.isoformat(sep=" ") for v in values]
        else:
            alphabet = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"))
            values = draw(st.lists(st.text(alphabet, min_size=1, max_size=8) | nulls, min_size=n, max_size=n))
            text = values
        truth[column.name], texts[column.name] = values, text
    names = ["".join(ch.upper() if draw(st.booleans()) else ch.lower() for ch in c.name) for c in chosen]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=draw(st.sampled_from(["\r\n", "\n"])))
    writer.writerow(names)
    for i in range(n):
        writer.writerow(["" if texts[c.name][i] is None else texts[c.name][i] for c in chosen])
    return svc, out.getvalue().encode("utf-8"), truth


@given(csv_months(), st.booleans())
def test_every_value_of_a_valid_csv_month_arrives_exactly(tmp_path, case, gzipped):
    svc, data, truth = case
    src, dst = tmp_path / ("month.csv.gz" if gzipped else "month.csv"), tmp_path / "out.parquet"
    src.write_bytes(gzip.compress(data) if gzipped else data)

    rows = convert(str(src), data.decode().splitlines()[0], str(dst), svc, f"{svc.name} (month.csv)", {})

    written = pq.read_table(dst)
    assert rows == len(next(iter(truth.values()))) and written.schema.remove_metadata() == svc.schema
    for column in svc.columns:
        assert written[column.name].to_pylist() == truth.get(column.name, [None] * rows), column.name


# ---------------------------------------------------------------------------------------------
# Text is valid UTF-8 on every path.

TEXT_COLUMNS = [(svc, c) for svc in ("yellow", "green", "fhv", "fhvhv") for c in SERVICES[svc].columns if c.type == STRING]


@st.composite
def text_with_invalid_bytes(draw):
    """A month of one service with one text column of random text, invalid UTF-8 bytes put in
    at random rows; (service, column, rows as bytes, the first bad row, 1-based)."""
    service, column = draw(st.sampled_from(TEXT_COLUMNS))
    n = draw(st.integers(1, 40))
    words = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters=',"'), min_size=1, max_size=6)
    texts = draw(st.lists(words, min_size=n, max_size=n))
    rows = [w.encode() for w in texts]
    bad = sorted(draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=3)))
    # Each invalid whatever follows it (a character's first byte, or nothing).
    junk = st.sampled_from([b"\xff\xfe", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])
    for i in bad:
        cut = draw(st.integers(0, len(texts[i])))  # between characters
        rows[i] = texts[i][:cut].encode() + draw(junk) + texts[i][cut:].encode()
    return SERVICES[service], column, rows, bad[0] + 1


def month_table(svc, column, values: pa.Array) -> pa.Table:
    """A table of ``svc``'s catalog columns, nulls but for its required times (one valid value)
    and ``column``."""
    n = len(values)
    table = {c.name: pa.nulls(n, c.type) for c in svc.columns}
    table[column.name] = values
    return pa.table(table)


@given(text_with_invalid_bytes(), st.sampled_from(["string", "large_string", "dictionary"]), st.booleans())
def test_invalid_utf8_in_a_parquet_text_column_is_refused_naming_column_and_row(tmp_path, case, stored, dictionary_pages):
    svc, column, rows, first_bad = case
    values = pa.array(rows, pa.binary()).view(pa.string())
    if stored == "large_string":
        values = pa.array(rows, pa.large_binary()).view(pa.large_string())
    elif stored == "dictionary":
        values = values.dictionary_encode()
    src = tmp_path / "month.parquet"
    pq.write_table(month_table(svc, column, values), src, use_dictionary=dictionary_pages, row_group_size=max(1, len(rows) // 2))

    with pytest.raises(InvalidText) as error:
        convert_parquet(
            str(src), ",".join(pq.read_schema(src).names), str(tmp_path / "out.parquet"), svc, f"{svc.name} (month.parquet)", {}
        )

    assert (error.value.column, error.value.row) == (column.name, first_bad)
    assert str(error.value) == f"{svc.name} (month.parquet): column {column.name}, data row {first_bad}: not valid UTF-8 text"


@given(text_with_invalid_bytes(), st.booleans())
def test_invalid_utf8_in_a_csv_text_column_is_refused_naming_column_and_row(tmp_path, case, gzipped):
    svc, column, rows, first_bad = case
    required = [c for c in svc.columns if c.name in svc.required and c != column]
    header = ",".join([column.name] + [c.name for c in required]).encode()
    data = header + b"\r\n" + b"".join(row + b"," * len(required) + b"\r\n" for row in rows)
    src = tmp_path / ("month.csv.gz" if gzipped else "month.csv")
    src.write_bytes(gzip.compress(data) if gzipped else data)

    with pytest.raises(BadCsvRow) as error:
        convert(str(src), header.decode(), str(tmp_path / "out.parquet"), svc, f"{svc.name} (month.csv)", {})

    assert (error.value.column, error.value.row, error.value.line) == (column.name, first_bad, first_bad + 1)
    assert f"{svc.name} (month.csv): data row {first_bad} (line {first_bad + 1}): column {column.name}: b" in str(error.value)
    assert "is not valid UTF-8 text" in str(error.value)


def test_the_issues_invalid_flag_is_refused_end_to_end_and_nothing_is_exposed(workspace, run, mirror, http_server):
    """store_and_fwd_flag = b'\\xff\\xfe' in one row of the TLC's yellow 2021-02, served by the
    real HTTP mirror. Before: the month reached the lake and DuckDB."""
    served = mirror / "tlc" / "trip-data" / "yellow_tripdata_2021-02.parquet"
    table = pq.read_table(served)
    flags = [f.encode() if f is not None else None for f in table["store_and_fwd_flag"].to_pylist()]
    flags[6] = b"\xff\xfe"
    i = table.schema.get_field_index("store_and_fwd_flag")
    table = table.set_column(i, "store_and_fwd_flag", pa.array(flags, pa.binary()).view(pa.string()))
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=max(1, table.num_rows // 3))
    task = IngestMonth(service="yellow", month=month("2021-02"))
    with replaced(served, sink.getvalue()), configured({("source", "kind"): "tlc", ("source", "base_url"): f"{http_server}/tlc"}):
        error = run(task).failures["ToParquet"]

    assert isinstance(error, InvalidText) and (error.column, error.row) == ("store_and_fwd_flag", 7)
    assert "yellow_tripdata_2021-02.parquet): column store_and_fwd_flag, data row 7: not valid UTF-8 text" in str(error)
    assert not task.complete() and not Path(lake_path(SERVICES["yellow"], month("2021-02"))).exists()
    if (workspace / "warehouse.duckdb").exists():  # nothing of the month exposed
        with duckdb.connect(str(workspace / "warehouse.duckdb"), read_only=True) as con:
            assert "yellow_tripdata" not in {name for (name,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


# ---------------------------------------------------------------------------------------------
# Memory bounded on the error path.

LONG_LINE = 512 << 20  # inflated from about half a megabyte


def gzip_of_a_long_line(path: Path, svc_header: bytes, good_row: bytes) -> None:
    """A small gzip: a header, two good rows, then one row 512 MiB long, then a good row."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip stream
    block = b"x" * (1 << 20)
    with path.open("wb") as out:
        out.write(compressor.compress(svc_header + b"\r\n" + good_row + b"\r\n" + good_row + b"\r\n" + b"1,"))
        for _ in range(LONG_LINE // len(block)):
            out.write(compressor.compress(block))
        out.write(compressor.compress(b"\r\n" + good_row + b"\r\n"))
        out.write(compressor.flush())


CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from pipeline.catalog import SERVICES
from pipeline.convert import convert, ConversionError
try:
    convert(sys.argv[2], sys.argv[3], sys.argv[4], SERVICES["yellow"], "yellow 2021-01 (long.csv.gz)", {})
    print("converted")
except ConversionError as e:
    print(type(e).__name__, e)
# This process's own peak (VmHWM starts anew at exec; ru_maxrss would carry pytest's over from the fork).
print(next(int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def test_a_small_gzip_inflating_to_a_huge_line_is_refused_naming_its_row_in_bounded_memory(tmp_path, mirror_files):
    """The issue's case: a 547 KB download held a 1 GB line in memory on the error path (peak
    1.16 GB RSS). Measured in a process of its own, as a run would be."""
    header, first = mirror_files["yellow/yellow_tripdata_2021-01.csv.gz"].split(b"\r\n")[:2]
    src = tmp_path / "long.csv.gz"
    gzip_of_a_long_line(src, header, first)
    assert src.stat().st_size < 1 << 20

    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), str(src), header.decode(), str(tmp_path / "out.parquet")],
        capture_output=True,
        text=True,
        timeout=300,
    )

    message, peak_mb = done.stdout.strip().rsplit("\n", 1)
    assert message.startswith(
        "BadCsvRow yellow 2021-01 (long.csv.gz): data row 3 (line 4): "
        f"a line longer than {LINE_LIMIT:,} characters (convert.LINE_LIMIT), which no TLC row is: "
    ), done.stdout + done.stderr
    assert int(peak_mb) < 400, f"peak RSS {peak_mb} MB"


def test_a_csv_field_longer_than_pythons_field_limit_names_its_row(tmp_path, mirror_files):
    """Below LINE_LIMIT, a field longer than the csv module takes is still the row's fault, named."""
    header, first = mirror_files["yellow/yellow_tripdata_2021-01.csv.gz"].split(b"\r\n")[:2]
    src = tmp_path / "month.csv"
    src.write_bytes(header + b"\r\n" + first + b"\r\n" + b"1," + b"y" * (600 << 10) + b"\r\n")

    with pytest.raises(BadCsvRow) as error:
        convert(str(src), header.decode(), str(tmp_path / "out.parquet"), SERVICES["yellow"], "yellow 2021-01 (month.csv)", {})

    assert (error.value.row, error.value.line) == (2, 3) and "field larger than field limit" in str(error.value)
