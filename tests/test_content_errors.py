"""What a file holds arrives exactly or is refused, and every refusal names the service, the month,
the file and the row: integers are never rounded, a zoned time is converted by the documented
rule, a csv error names its row, and a Parquet file damaged inside is fetched again."""

from __future__ import annotations

import datetime
import gzip
import shutil
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import Download, IngestMonth, ToParquet
from pipeline.catalog import SERVICES
from pipeline.convert import ConversionError, SourceCorrupt, convert_parquet
from pipeline.lake import lake_path

from conftest import configured, set_source
from mirror import DATA, data_rows, file_mirror, month

YELLOW = "yellow/yellow_tripdata_2021-01.csv.gz"
GENUINE_GREEN = DATA / "parquet" / "green_tripdata_2020-04.parquet"  # the TLC's own file (SOURCES.md)


def with_row(csv_bytes: bytes, row: int, edit) -> bytes:
    """The csv with data row ``row`` (1 = the first after the header) replaced by edit(fields)."""
    lines = csv_bytes.split(b"\r\n")
    fields = lines[row].split(b",")
    lines[row] = b",".join(edit(fields))
    return b"\r\n".join(lines)


def set_field(index: int, value: bytes):
    return lambda fields: [*fields[:index], value, *fields[index + 1 :]]


def test_an_integer_a_csv_float64_cannot_hold_exactly_is_refused_not_rounded(workspace, run, mirror_files):
    # 2**53 + 1 reads as 2**53 through float64: it must never be stored as ...992.
    changed = with_row(mirror_files[YELLOW], 3, set_field(0, b"9007199254740993"))
    set_source(file_mirror(workspace, YELLOW, gzip.compress(changed)))

    error = run(ToParquet(service="yellow", month=month("2021-01"))).failures["ToParquet"]

    assert isinstance(error, ConversionError)
    assert (
        str(error).startswith("yellow 2021-01 (")
        and "yellow_tripdata_2021-01.csv.gz): column VendorID, data row 3: "
        "value 9007199254740992 may have been rounded: a csv file's integer codes are read exactly up to 2**53 only"
        in str(error)
    )
    assert not ToParquet(service="yellow", month=month("2021-01")).complete()


def test_the_largest_exact_integer_arrives_unchanged(workspace, run, mirror_files):
    changed = with_row(mirror_files[YELLOW], 2, set_field(0, b"9007199254740991"))  # 2**53 - 1
    set_source(file_mirror(workspace, YELLOW, gzip.compress(changed)))

    assert not run(IngestMonth(service="yellow", month=month("2021-01"))).failures

    vendors = pq.read_table(lake_path(SERVICES["yellow"], month("2021-01")), columns=["VendorID"]).column(0).to_pylist()
    assert vendors[:3] == [
        int(mirror_files[YELLOW].split(b"\r\n")[1].split(b",")[0]),
        2**53 - 1,
        int(mirror_files[YELLOW].split(b"\r\n")[3].split(b",")[0]),
    ]


def test_an_int64_overflow_names_its_row_and_value(workspace, run, mirror_files):
    changed = with_row(mirror_files[YELLOW], 5, set_field(7, b"9223372036854775807"))  # PULocationID
    set_source(file_mirror(workspace, YELLOW, gzip.compress(changed)))

    error = run(ToParquet(service="yellow", month=month("2021-01"))).failures["ToParquet"]

    assert "column PULocationID, data row 5: value 9223372036854775808 may have been rounded" in str(error)


@pytest.mark.parametrize(
    "zone,stored,wall_clock",
    [
        ("UTC", datetime.datetime(2021, 1, 1, 5, 15), datetime.datetime(2021, 1, 1, 0, 15)),  # EST, UTC-5
        ("UTC", datetime.datetime(2021, 7, 1, 5, 15), datetime.datetime(2021, 7, 1, 1, 15)),  # EDT, UTC-4
        ("America/New_York", datetime.datetime(2021, 1, 1, 5, 15), datetime.datetime(2021, 1, 1, 0, 15)),
        ("Asia/Tokyo", datetime.datetime(2021, 1, 1, 5, 15), datetime.datetime(2021, 1, 1, 0, 15)),
    ],
    ids=["utc-winter", "utc-summer", "new-york", "tokyo"],
)
def test_a_zoned_parquet_time_becomes_new_york_wall_clock_time(tmp_path, zone, stored, wall_clock):
    # pyarrow stores a zoned timestamp as the UTC instant; ``stored`` is that instant.
    src, dst = tmp_path / "month.parquet", tmp_path / "out.parquet"
    table = {field.name: pa.nulls(1, field.type) for field in SERVICES["yellow"].schema}
    instant = pa.array([stored], pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us", tz=zone))
    pq.write_table(pa.table({**table, "tpep_pickup_datetime": instant}), src)

    convert_parquet(str(src), ",".join(pq.read_schema(src).names), str(dst), SERVICES["yellow"], "yellow 2021-01", {})

    out = pq.read_table(dst)
    assert out.schema.field("tpep_pickup_datetime").type == pa.timestamp("us")
    assert out.column("tpep_pickup_datetime").to_pylist() == [wall_clock]


def test_a_csv_row_with_a_field_too_many_in_the_first_block_names_its_row(workspace, run, mirror_files):
    changed = with_row(mirror_files[YELLOW], 3, lambda fields: [*fields, b"extra"])
    set_source(file_mirror(workspace, YELLOW, gzip.compress(changed)))

    error = run(ToParquet(service="yellow", month=month("2021-01"))).failures["ToParquet"]

    assert isinstance(error, ConversionError)
    assert str(error).startswith(
        "yellow 2021-01 ("
    ) and "yellow_tripdata_2021-01.csv.gz): data row 3 (line 4): 19 fields, the header has 18" in str(error)


def test_a_bad_value_deep_in_the_file_names_its_row_not_the_block_before(workspace, run, mirror_files):
    changed = with_row(mirror_files[YELLOW], 20001, set_field(4, b"abc"))  # trip_distance
    set_source(file_mirror(workspace, YELLOW, gzip.compress(changed)))

    error = run(ToParquet(service="yellow", month=month("2021-01"))).failures["ToParquet"]

    assert "yellow_tripdata_2021-01.csv.gz): data row 20001 (line 20002): column trip_distance: 'abc' is not a double" in str(error)


def corrupt_a_data_page(good: Path, bad: Path) -> None:
    """``good`` with the header of one data page overwritten: the footer still reads."""
    page = pq.ParquetFile(good).metadata.row_group(0).column(5).data_page_offset
    data = bytearray(good.read_bytes())
    data[page : page + 64] = b"\xff" * 64
    bad.write_bytes(bytes(data))


def test_a_parquet_file_damaged_inside_is_downloaded_again_on_the_next_run(workspace, run):
    rel = "trip-data/green_tripdata_2020-04.parquet"
    base = file_mirror(workspace, rel, b"")
    served = workspace / "mirror" / rel
    corrupt_a_data_page(GENUINE_GREEN, served)
    task = IngestMonth(service="green", month=month("2020-04"))

    with configured({("source", "kind"): "tlc", ("source", "base_url"): base}):
        error = run(task).failures["ToParquet"]

        assert isinstance(error, SourceCorrupt)
        assert str(error).startswith("green 2020-04 (") and "green_tripdata_2020-04.parquet): corrupt Parquet data" in str(error)
        assert "Couldn't deserialize thrift" in str(error)
        assert str(error).endswith("the download was removed, so the next run fetches it again")
        assert not Download(service="green", month=month("2020-04")).complete()
        assert not task.complete()

        shutil.copyfile(GENUINE_GREEN, served)  # the source serves the whole file again
        assert not run(task).failures

    assert pq.ParquetFile(lake_path(SERVICES["green"], month("2020-04"))).metadata.num_rows == 35644


def gzipped(text: bytes) -> bytes:
    return gzip.compress(text, compresslevel=1, mtime=0)


def cut_short(text: bytes) -> tuple[bytes, str]:
    whole = gzipped(text)
    return whole[: len(whole) * 7 // 10], "truncated or corrupt gzip after data row"


def damaged_into_a_bad_row(text: bytes) -> tuple[bytes, str]:
    """A stream that inflates to a row the file does not have (trip_distance `abc`), its CRC
    and length still the file's: what a damaged stream looks like. The row is read long before
    the stream's end, where its CRC fails (the reader inflates only a few blocks ahead)."""
    damaged = gzipped(with_row(text, 20001, set_field(4, b"abc")))
    trailer = zlib.crc32(text).to_bytes(4, "little") + len(text).to_bytes(4, "little")
    return damaged[:-8] + trailer, "truncated or corrupt gzip (CRC check failed"


@pytest.mark.parametrize("damage, copies", [(cut_short, 3), (damaged_into_a_bad_row, 24)])
def test_a_month_damaged_beyond_the_download_probe_fails_its_conversion_and_is_fetched_again(workspace, run, mirror_files, damage, copies):
    from pipeline.download import GZIP_PROBE

    # Bigger than the Download inflates, so the proof that the stream is whole is ToParquet's.
    header, rows = mirror_files[YELLOW].split(b"\r\n", 1)
    text = header + b"\r\n" + rows * copies
    assert len(text) > GZIP_PROBE
    served, message = damage(text)
    base = file_mirror(workspace, YELLOW, served)
    task = IngestMonth(service="yellow", month=month("2021-01"))
    set_source(base)

    error = run(task).failures["ToParquet"]

    assert isinstance(error, SourceCorrupt) and f"yellow_tripdata_2021-01.csv.gz): {message}" in str(error)
    assert str(error).endswith("the download was removed, so the next run fetches it again")
    assert not Download(service="yellow", month=month("2021-01")).complete() and not task.complete()
    (workspace / "mirror" / YELLOW).write_bytes(gzipped(text))
    assert not run(task).failures
    assert pq.ParquetFile(lake_path(SERVICES["yellow"], month("2021-01"))).metadata.num_rows == copies * data_rows(mirror_files[YELLOW])


def test_a_fraction_after_an_empty_code_is_named_at_its_own_row(workspace, run, mirror_files):
    # An empty field is a null, not the bad value: the row named is the one with the fraction.
    changed = with_row(with_row(mirror_files[YELLOW], 1, set_field(3, b"")), 3, set_field(3, b"1.5"))  # passenger_count
    set_source(file_mirror(workspace, YELLOW, gzip.compress(changed)))

    error = run(ToParquet(service="yellow", month=month("2021-01"))).failures["ToParquet"]

    assert "column passenger_count, data row 3: value 1.5 is not a whole number that fits int64" in str(error)
