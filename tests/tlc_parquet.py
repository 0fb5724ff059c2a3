"""A mirror of the TLC's Parquet files, built from the real csv rows in tests/data/tlc.

There are no real TLC Parquet files on our machines, so each file here is real rows written with
the physical types and column spellings the TLC's own files have in that month
(../shared/notes/tlc-schemas.md section 4):
- yellow 2021-02: passenger_count and RatecodeID DOUBLE (2018-07..2023-01), ids INT64, airport_fee DOUBLE;
- yellow 2020-10: airport_fee an all-null INT32 column;
- yellow 2023-03: VendorID and the location ids INT32, passenger_count INT64, spelled `Airport_fee`;
- yellow 2025-01: as 2023-03 plus cbd_congestion_fee;
- green 2024-01: VendorID and location ids INT32, the other codes INT64, ehail_fee DOUBLE;
- fhv 2019-02: the mixed-case names, location ids and SR_Flag DOUBLE, a dropoff in the year 3019;
- fhvhv 2021-06: the 24-column layout;
- yellow 2009-01 and 2010-01 in the legacy layouts (section 9), from the real rows in
  tests/data/tlc/legacy: times and words as strings, the 2010 rate code a string, 2010 with the
  stray pandas index column; and the zone shapes they are located with (misc/taxi_zones.zip);
and one that must be refused: yellow 2022-05 with a passenger_count of 1.5.
"""

from __future__ import annotations

import csv
import datetime
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

DATA = Path(__file__).parent / "data" / "tlc"
TS = pa.timestamp("us")
I32, I64, F64, STR = pa.int32(), pa.int64(), pa.float64(), pa.string()

YELLOW_TYPES = {
    "VendorID": I64,
    "tpep_pickup_datetime": TS,
    "tpep_dropoff_datetime": TS,
    "passenger_count": F64,
    "trip_distance": F64,
    "RatecodeID": F64,
    "store_and_fwd_flag": STR,
    "PULocationID": I64,
    "DOLocationID": I64,
    "payment_type": I64,
    "fare_amount": F64,
    "extra": F64,
    "mta_tax": F64,
    "tip_amount": F64,
    "tolls_amount": F64,
    "improvement_surcharge": F64,
    "total_amount": F64,
    "congestion_surcharge": F64,
}


# The physical types of the TLC's legacy Parquet files (every other column: DOUBLE).
LEGACY_2009_TYPES = {
    "vendor_name": STR,
    "Trip_Pickup_DateTime": STR,
    "Trip_Dropoff_DateTime": STR,
    "Passenger_Count": I64,
    "Payment_Type": STR,
}
LEGACY_2010_TYPES = {
    "vendor_id": STR,
    "pickup_datetime": STR,
    "dropoff_datetime": STR,
    "passenger_count": I64,
    "rate_code": STR,
    "store_and_fwd_flag": STR,
    "payment_type": STR,
}


def legacy_rows(*names: str) -> tuple[list[str], list[list[str]]]:
    """The header and the whole data rows of the legacy csv files ``names`` (tests/data/tlc/legacy):
    blank lines skipped, a partial last line (the 1 KiB heads end mid-row) dropped."""
    header, rows = None, []
    for name in names:
        text = (DATA / "legacy" / name).read_text()
        lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
        file_header, *data = list(csv.reader(lines))
        assert header in (None, file_header), name
        header = file_header
        rows += [row for row in data if row]
    return header, rows


def legacy_table(header: list[str], rows: list[list[str]], types: dict[str, pa.DataType]) -> pa.Table:
    """The rows with the TLC's legacy physical types: numbers parsed (empty: null), text as written."""

    def value(text: str, type_: pa.DataType):
        if type_ == STR:
            return text
        return None if text == "" else int(text) if type_ == I64 else float(text)

    return pa.table(
        {name: pa.array([value(row[i], types.get(name, F64)) for row in rows], types.get(name, F64)) for i, name in enumerate(header)}
    )


def legacy_files() -> dict[str, pa.Table]:
    months = [f"{m:02d}" for m in range(1, 13)]
    y2009 = legacy_table(*legacy_rows(*[f"yellow_tripdata_2009-{m}.csv" for m in months]), LEGACY_2009_TYPES)
    # 2010: the twelve 2010 heads, then the 997 rows of 2013-01 (the same layout; its only long sample).
    y2010 = legacy_table(*legacy_rows(*[f"yellow_tripdata_2010-{m}.csv" for m in months], "yellow_tripdata_2013-01.csv"), LEGACY_2010_TYPES)
    y2010 = y2010.append_column("__index_level_0__", pa.array(range(y2010.num_rows), I64))
    return {"yellow_tripdata_2009-01.parquet": y2009, "yellow_tripdata_2010-01.parquet": y2010}


def _read(csv: bytes, types: dict[str, pa.DataType]) -> pa.Table:
    return pacsv.read_csv(
        io.BytesIO(csv), convert_options=pacsv.ConvertOptions(column_types=types, null_values=[""], strings_can_be_null=True)
    )


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=max(1, table.num_rows // 3))  # several row groups
    return sink.getvalue()


def _with(table: pa.Table, **columns: pa.Array) -> pa.Table:
    for name, array in columns.items():
        table = table.append_column(name, array)
    return table


def _retype(table: pa.Table, **types: pa.DataType) -> pa.Table:
    for name, type_ in types.items():
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pc.cast(table.column(name), type_))
    return table


def _whole_lines(data: bytes) -> bytes:
    return data[: data.rfind(b"\n") + 1]


def build(csv_of: dict[str, bytes]) -> dict[str, bytes]:
    """Path in the mirror -> bytes. ``csv_of`` is conftest's releases mirror (path -> csv bytes)."""
    yellow_2021 = _read(csv_of["yellow/yellow_tripdata_2021-01.csv.gz"], YELLOW_TYPES)
    yellow_2020 = _read(csv_of["yellow/yellow_tripdata_2020-01.csv.gz"], YELLOW_TYPES)  # empty codes at its end
    yellow_0720 = _read(csv_of["yellow/yellow_tripdata_2020-07.csv.gz"], YELLOW_TYPES)
    n21, n20, n07 = yellow_2021.num_rows, yellow_2020.num_rows, yellow_0720.num_rows
    fees = lambda n: pa.array([1.25 if i % 4 == 0 else 0.0 for i in range(n)], F64)  # noqa: E731

    def newer(t):
        return _retype(t, VendorID=I32, PULocationID=I32, DOLocationID=I32, passenger_count=I64, RatecodeID=I64)

    files = {
        "yellow_tripdata_2021-02.parquet": _with(yellow_2021, airport_fee=fees(n21)),
        "yellow_tripdata_2020-10.parquet": _with(yellow_0720, airport_fee=pa.nulls(n07, I32)),
        "yellow_tripdata_2023-03.parquet": _with(newer(yellow_2020), Airport_fee=fees(n20)),
        "yellow_tripdata_2025-01.parquet": _with(newer(yellow_0720), Airport_fee=fees(n07), cbd_congestion_fee=pa.array([0.75] * n07, F64)),
    }
    lossy = yellow_0720.set_column(
        3, "passenger_count", pa.array([1.5 if i == 1 else v for i, v in enumerate(yellow_0720.column("passenger_count").to_pylist())], F64)
    )
    files["yellow_tripdata_2022-05.parquet"] = _with(lossy, airport_fee=fees(n07))
    files.update(legacy_files())

    green = _read(
        csv_of["green/green_tripdata_2019-01.csv.gz"],
        {
            "VendorID": I32,
            "lpep_pickup_datetime": TS,
            "lpep_dropoff_datetime": TS,
            "RatecodeID": I64,
            "PULocationID": I32,
            "DOLocationID": I32,
            "passenger_count": I64,
            "ehail_fee": F64,
            "payment_type": I64,
            "trip_type": I64,
        },
    )
    files["green_tripdata_2024-01.parquet"] = green

    # fhv 2019-02: the TLC rows, with the re-issue's names and types and one dropoff in 3019.
    fhv = _read(
        _whole_lines((DATA / "s3_2020-09_first1024B" / "fhv_tripdata_2019-02.first1024B.csv").read_bytes()),
        {"pickup_datetime": TS, "dropoff_datetime": TS, "PULocationID": F64, "DOLocationID": F64, "SR_Flag": F64},
    )
    drop = fhv.column("dropoff_datetime").to_pylist()
    drop[2] = drop[2].replace(year=3019)
    files["fhv_tripdata_2019-02.parquet"] = pa.table(
        {
            "dispatching_base_num": fhv.column("dispatching_base_num"),
            "pickup_datetime": fhv.column("pickup_datetime"),
            "dropOff_datetime": pa.array(drop, TS),
            "PUlocationID": fhv.column("PULocationID"),
            "DOlocationID": fhv.column("DOLocationID"),
            "SR_Flag": fhv.column("SR_Flag"),
            "Affiliated_base_number": fhv.column("dispatching_base_num"),
        }
    )

    # fhvhv 2021-06: the sample's trips in the 24-column Parquet layout.
    hv = _read(
        csv_of["fhvhv/fhvhv_tripdata_2021-06.csv.gz"],
        {"pickup_datetime": TS, "dropoff_datetime": TS, "PULocationID": I64, "DOLocationID": I64},
    )
    n = hv.num_rows
    pickup = hv.column("pickup_datetime")
    seconds = pc.divide(pc.cast(pc.subtract(hv.column("dropoff_datetime"), pickup), I64), 1_000_000)
    miles = pa.array([round(1.1 + (i % 7) * 0.8, 2) for i in range(n)], F64)
    flag = pa.array(["N"] * n, STR)
    files["fhvhv_tripdata_2021-06.parquet"] = pa.table(
        {
            "hvfhs_license_num": pa.array(["HV0003"] * n, STR),
            "dispatching_base_num": hv.column("dispatching_base_num"),
            "originating_base_num": hv.column("dispatching_base_num"),
            "request_datetime": pc.subtract(pickup, pa.scalar(datetime.timedelta(minutes=4))),
            "on_scene_datetime": pc.subtract(pickup, pa.scalar(datetime.timedelta(minutes=1))),
            "pickup_datetime": pickup,
            "dropoff_datetime": hv.column("dropoff_datetime"),
            "PULocationID": hv.column("PULocationID"),
            "DOLocationID": hv.column("DOLocationID"),
            "trip_miles": miles,
            "trip_time": seconds,
            "base_passenger_fare": pc.multiply(miles, 3.0),
            "tolls": pa.array([0.0] * n, F64),
            "bcf": pc.multiply(miles, 0.08),
            "sales_tax": pc.multiply(miles, 0.26),
            "congestion_surcharge": pa.array([2.75] * n, F64),
            "airport_fee": pa.nulls(n, F64),
            "tips": pa.array([0.0] * n, F64),
            "driver_pay": pc.multiply(miles, 2.2),
            "shared_request_flag": flag,
            "shared_match_flag": flag,
            "access_a_ride_flag": pa.array([" "] * n, STR),
            "wav_request_flag": flag,
            "wav_match_flag": flag,
        }
    )

    mirror = {f"trip-data/{name}": _parquet(table) for name, table in files.items()}
    mirror["misc/taxi+_zone_lookup.csv"] = (DATA / "taxi+_zone_lookup.2024-07.csv").read_bytes()
    mirror["misc/taxi_zones.zip"] = (DATA / "zones" / "taxi_zones.zip").read_bytes()
    return mirror


def rows(mirror: dict[str, bytes], name: str) -> int:
    return pq.ParquetFile(io.BytesIO(mirror[f"trip-data/{name}"])).metadata.num_rows
