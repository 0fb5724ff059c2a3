"""The mirrors the tests download from: the verbatim TLC samples in tests/data/tlc laid out as the
releases and the TLC publish them, consecutive months for backfills, the TLC's Parquet layout, and
the broken files real downloads meet. tests/servers.py serves them over HTTP; conftest.py makes
them fixtures."""

from __future__ import annotations

import contextlib
import datetime
import gzip
import shutil
from pathlib import Path
from typing import Iterator, Optional

import tlc_parquet

DATA = Path(__file__).parent / "data" / "tlc"
S3 = DATA / "s3_2020-09_first1024B"


def complete_lines(data: bytes) -> bytes:
    """The 1 KiB captures end mid-row: keep whole lines only."""
    return data[: data.rfind(b"\n") + 1]


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def files() -> dict[str, bytes]:
    """Path in the releases' layout -> the csv bytes it serves (gzipped for .csv.gz)."""
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


def file_mirror(root: Path, rel: str, content: bytes) -> str:
    """A file:// mirror holding one file at ``rel``; returns its base URL."""
    path = root / "mirror" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return (root / "mirror").as_uri()


def month(text: str) -> datetime.date:
    """'2021-01' as the date a MonthParameter holds."""
    return datetime.date.fromisoformat(text + "-01")


@contextlib.contextmanager
def replaced(path: Path, content: Optional[bytes]) -> Iterator[Path]:
    """The mirror's file at ``path`` holds ``content`` for the block (None: it is gone, and the
    source answers 404, as for a month not published), then what it held before."""
    saved = path.read_bytes()
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    try:
        yield path
    finally:
        path.write_bytes(saved)


def consecutive_months(root: Path, months: tuple[str, ...], yellow_sample: str, mirror_files: dict[str, bytes]) -> None:
    """A releases-layout mirror at ``root``: yellow (``yellow_sample``'s rows) and green (the
    green 2019-01 sample's) for each of ``months``, and the zone lookup."""
    for service, sample in (("yellow", yellow_sample), ("green", "green/green_tripdata_2019-01.csv.gz")):
        for m in months:
            path = root / service / f"{service}_tripdata_{m}.csv.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(gzip.compress(mirror_files[sample]))
    (root / "misc").mkdir()
    (root / "misc" / "taxi_zone_lookup.csv").write_bytes(mirror_files["misc/taxi_zone_lookup.csv"])


def build(root: Path, files_: dict[str, bytes]) -> Path:
    """The mirrors under ``root``, one tree a route of the test server (servers.MirrorHandler):
    releases/ (the samples in the releases' layout), range/ and course/ (consecutive months), tlc/
    (the TLC's Parquet layout) and broken/ (what real downloads go wrong with)."""
    for rel, content in files_.items():
        path = root / "releases" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(content) if rel.endswith(".gz") else content)
    # A run of consecutive months for backfills: yellow and green 2020-01 to 2020-04 (each month
    # the real rows of one sample month), and the zones; 2020-05 onwards is "not published yet".
    consecutive_months(root / "range", RANGE_MONTHS, "yellow/yellow_tripdata_2020-01.csv.gz", files_)
    # Every month the course's releases hold for yellow and green (2019-01 to 2021-07), each a
    # small real sample, for the whole backfill of the course in one command.
    consecutive_months(root / "course", COURSE_MONTHS, "yellow/yellow_tripdata_2019-03.csv.gz", files_)
    # The TLC's own layout: Parquet files with each month's physical types (tests/tlc_parquet.py).
    for rel, content in tlc_parquet.build(files_).items():
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
    yellow = files_["yellow/yellow_tripdata_2021-01.csv.gz"]
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
        gzip.compress(files_["green/green_tripdata_2019-01.csv.gz"].splitlines(keepends=True)[0])
    )
    return root
