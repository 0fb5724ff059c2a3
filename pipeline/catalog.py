"""The dataset catalog: every TLC service as data.

This is the one place that knows what the files look like. Each service lists its canonical
columns, one Arrow type per column that is valid for every month the TLC has published, so that
every month of a service comes out with the SAME Parquet schema (the course's per-file type
inference is what breaks BigQuery external tables over many months).

How the real files drift, and what the catalog does about it (see docs in README, "Data"):
- Column names change case between years (fhv `dropOff_datetime`, `PUlocationID`): headers are
  matched case-insensitively, and the canonical spelling is the one the other services use.
- Columns appear over time (`congestion_surcharge`, `Affiliated_base_number`, `airport_fee`,
  `cbd_congestion_fee`, fhvhv's Parquet-era columns): a month that lacks one gets nulls.
- Integer codes are empty in some rows and written as `1.0` in some files: they are read as
  float64 and cast to int64 with a check that no value had a fraction, and refused from 2**53
  on, where float64 no longer holds every integer (see convert.py).
- A header column the catalog does not know is an error naming the column and the file, never
  silently dropped.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
from typing import Callable, Optional

import pyarrow as pa

from pipeline.errors import PipelineError

TIMESTAMP = pa.timestamp("us")  # microseconds: the TLC's year-3019 typos still fit
# The TLC's times are New York wall-clock times, with no zone (TIMESTAMP above). A source time that
# carries a zone is an instant, so it becomes the wall-clock time in New York at that instant.
TIME_ZONE = "America/New_York"
INT = pa.int64()
FLOAT = pa.float64()
STRING = pa.string()


class SchemaMismatch(PipelineError, ValueError):
    """A source file's header does not fit the catalog."""

    hint = "the source's layout changed: the catalog (pipeline/catalog.py) must learn it"


class ConversionError(PipelineError, ValueError):
    """A row of the source file does not fit the catalog."""

    hint = "the source holds a value the catalog does not accept: see the row named"


def _is_text(type_: pa.DataType) -> bool:
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


# The kinds of Arrow type a source column can arrive as, by the name a refusal shows.
SOURCE_KINDS: dict[str, Callable[[pa.DataType], bool]] = {
    "integer": pa.types.is_integer,
    "floating": lambda t: t in (pa.float32(), pa.float64()),  # not float16: Arrow has few kernels for it
    "timestamp": pa.types.is_timestamp,  # any unit, with or without a zone
    "string": _is_text,  # string, large_string, or a dictionary of either
    "null": pa.types.is_null,  # a column with no value at all (how the TLC writes one)
}

# What each catalog type takes from a source Parquet file, as kinds of SOURCE_KINDS. Each is made
# the catalog's type exactly or refused by value (convert._cast: no fraction, no overflow, no
# sub-microsecond time). Any other kind is refused by name before a row is written: a cast of it
# would make values up (INT64 epoch seconds as 1970 pickup times, a timestamp as a VendorID, a
# boolean as a passenger count). csv text is read as the catalog's types, so this is Parquet's.
ACCEPTS: dict[pa.DataType, tuple[str, ...]] = {
    INT: ("integer", "floating", "null"),  # floating: whole numbers only (convert._to_int)
    FLOAT: ("floating", "integer", "null"),
    TIMESTAMP: ("timestamp", "null"),
    STRING: ("string", "integer", "null"),  # integer: as its decimal text, one text per number
}


def kind_of(type_: pa.DataType) -> Optional[str]:
    """The SOURCE_KINDS name of an Arrow type, or None for a type of no kind the catalog takes."""
    return next((kind for kind, test in SOURCE_KINDS.items() if test(type_)), None)


class UnacceptedType(SchemaMismatch):
    """A source column's Arrow type is not one its catalog column takes (ACCEPTS)."""

    def __init__(self, where: str, column: str, found: pa.DataType, becomes: Column, expected: tuple[str, ...]):
        self.where, self.column, self.found, self.becomes, self.expected = where, column, found, becomes, expected
        into = "" if becomes.name == column else f" (which becomes {becomes.name})"
        super().__init__(
            f"{where}: column {column}{into} is {found}, not one of the types it may arrive as ({', '.join(expected)}), "
            "so the file is refused rather than cast"
        )


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType


@dataclasses.dataclass(frozen=True)
class Service:
    """One TLC dataset: where its files live and what their rows look like."""

    name: str
    release: str  # the release tag (folder) its files are published under in the releases
    stem: str  # file name without extension, with {month} for monthly services
    table: str  # warehouse table/view name
    columns: tuple[Column, ...]
    required: tuple[str, ...]  # a header without these is not this service's file
    pickup_column: Optional[str] = None
    # Fewer data rows than this: the file is cut short or empty (a trip month with no trips is
    # not a month the TLC publishes).
    min_rows: int = 1

    @property
    def monthly(self) -> bool:
        return "{month}" in self.stem

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type) for c in self.columns])

    def file_stem(self, month: Optional[datetime.date]) -> str:
        """'yellow_tripdata_2021-01', or 'taxi_zone_lookup': the name of the file in every form."""
        return self.stem.format(month=month_str(month)) if self.monthly else self.stem


def _columns(*spec: tuple[str, pa.DataType]) -> tuple[Column, ...]:
    return tuple(Column(name, type_) for name, type_ in spec)


def _trip_service(name: str, required: tuple[str, ...], *spec: tuple[str, pa.DataType]) -> Service:
    """A monthly trip service; its pickup time is the second required column."""
    return Service(
        name=name,
        release=name,
        stem=f"{name}_tripdata_{{month}}",
        table=f"{name}_tripdata",
        columns=_columns(*spec),
        required=required,
        pickup_column=required[1],
    )


# Money, distances and durations are float64 (as in the TLC's own Parquet files); codes and
# location ids are int64; base numbers and Y/N flags are strings.
_FARE = (
    ("fare_amount", FLOAT),
    ("extra", FLOAT),
    ("mta_tax", FLOAT),
    ("tip_amount", FLOAT),
    ("tolls_amount", FLOAT),
)

# What a trip file of each service must have: the columns every file of it has carried, in both
# sources (the TLC's own column lists of all 487 files 2009-2024, as collected in
# lykmapipo/NYC-TLC-Trip-Data's trips-metadata, and the csv.gz releases' headers). A file
# lacking one is refused by name; columns that appeared later (improvement_surcharge 2015,
# congestion_surcharge 2019, airport_fee, cbd_congestion_fee, fhvhv's Parquet-era columns) are
# null where a month lacks them.
_TRIP_CORE = (
    "passenger_count",
    "trip_distance",
    "RatecodeID",
    "store_and_fwd_flag",
    "PULocationID",
    "DOLocationID",
    "payment_type",
    *(name for name, _ in _FARE),
    "total_amount",
)
_FHV_CORE = ("dispatching_base_num", "pickup_datetime", "dropoff_datetime", "PULocationID", "DOLocationID")

YELLOW = _trip_service(
    "yellow",
    ("VendorID", "tpep_pickup_datetime", "tpep_dropoff_datetime", *_TRIP_CORE),
    ("VendorID", INT),
    ("tpep_pickup_datetime", TIMESTAMP),
    ("tpep_dropoff_datetime", TIMESTAMP),
    ("passenger_count", INT),
    ("trip_distance", FLOAT),
    ("RatecodeID", INT),
    ("store_and_fwd_flag", STRING),
    ("PULocationID", INT),
    ("DOLocationID", INT),
    ("payment_type", INT),
    *_FARE,
    ("improvement_surcharge", FLOAT),
    ("total_amount", FLOAT),
    ("congestion_surcharge", FLOAT),
    # Only in the TLC's Parquet re-issue (2011+) and 2025+ files; null in the csv.gz months.
    ("airport_fee", FLOAT),
    ("cbd_congestion_fee", FLOAT),
)

GREEN = _trip_service(
    "green",
    ("VendorID", "lpep_pickup_datetime", "lpep_dropoff_datetime", *_TRIP_CORE),
    ("VendorID", INT),
    ("lpep_pickup_datetime", TIMESTAMP),
    ("lpep_dropoff_datetime", TIMESTAMP),
    ("store_and_fwd_flag", STRING),
    ("RatecodeID", INT),
    ("PULocationID", INT),
    ("DOLocationID", INT),
    ("passenger_count", INT),
    ("trip_distance", FLOAT),
    *_FARE,
    # Empty in every csv sample, but some TLC Parquet months hold decimals: float, not int.
    ("ehail_fee", FLOAT),
    ("improvement_surcharge", FLOAT),
    ("total_amount", FLOAT),
    ("payment_type", INT),
    ("trip_type", INT),
    ("congestion_surcharge", FLOAT),
    ("cbd_congestion_fee", FLOAT),
)

FHV = _trip_service(
    "fhv",
    _FHV_CORE,
    ("dispatching_base_num", STRING),
    ("pickup_datetime", TIMESTAMP),
    ("dropoff_datetime", TIMESTAMP),
    ("PULocationID", INT),
    ("DOLocationID", INT),
    ("SR_Flag", INT),  # 1 for a shared ride, otherwise empty (TLC data dictionary)
    ("Affiliated_base_number", STRING),
)

FHVHV = _trip_service(
    "fhvhv",
    _FHV_CORE,
    ("hvfhs_license_num", STRING),
    ("dispatching_base_num", STRING),
    ("originating_base_num", STRING),
    ("request_datetime", TIMESTAMP),
    ("on_scene_datetime", TIMESTAMP),
    ("pickup_datetime", TIMESTAMP),
    ("dropoff_datetime", TIMESTAMP),
    ("PULocationID", INT),
    ("DOLocationID", INT),
    # The csv.gz copies carry only the 7 FHV-style columns; their SR_Flag is "N" or empty.
    ("SR_Flag", STRING),
    ("Affiliated_base_number", STRING),
    # The TLC Parquet layout (2019-02 onwards), so csv.gz and Parquet months share one schema.
    ("trip_miles", FLOAT),
    ("trip_time", INT),
    ("base_passenger_fare", FLOAT),
    ("tolls", FLOAT),
    ("bcf", FLOAT),
    ("sales_tax", FLOAT),
    ("congestion_surcharge", FLOAT),
    ("airport_fee", FLOAT),
    ("tips", FLOAT),
    ("driver_pay", FLOAT),
    ("shared_request_flag", STRING),
    ("shared_match_flag", STRING),
    ("access_a_ride_flag", STRING),
    ("wav_request_flag", STRING),
    ("wav_match_flag", STRING),
    ("cbd_congestion_fee", FLOAT),
)

# Not monthly. "NA" and "N/A" in it are strings (zone 265 is literally "NA"), never nulls.
ZONES = Service(
    name="zones",
    release="misc",
    stem="taxi_zone_lookup",
    table="taxi_zone_lookup",
    columns=_columns(
        ("LocationID", INT),
        ("Borough", STRING),
        ("Zone", STRING),
        ("service_zone", STRING),
    ),
    required=("LocationID", "Zone"),
    # Every version the TLC has published lists zones 1 to 265; a lookup cut at a line boundary
    # (no Content-Length to tell) still parses, so its length is the proof it is whole.
    min_rows=265,
)

SERVICES: dict[str, Service] = {s.name: s for s in (YELLOW, GREEN, FHV, FHVHV, ZONES)}
TRIP_SERVICES = tuple(name for name, s in SERVICES.items() if s.monthly)


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one kind of source publishes each service's files ([source] kind)."""

    name: str
    base_url: str  # the default [source] base_url
    trip_path: str  # under the base, with {release} and {stem}
    zones_path: str
    # The first month of each trip service this source publishes: a range that asks from earlier
    # starts there (the months before are not a gap: the service or the copies did not exist).
    first_months: dict[str, datetime.date] = dataclasses.field(default_factory=dict)

    def path(self, svc: Service, month: Optional[datetime.date]) -> str:
        if svc.monthly:
            return self.trip_path.format(release=svc.release, stem=svc.file_stem(month))
        return self.zones_path


# The csv.gz copies the course uses (2019-01 to 2021-07 for yellow and green).
RELEASES = Source(
    "releases",
    "https://github.com/DataTalksClub/nyc-tlc-data/releases/download",
    "{release}/{stem}.csv.gz",
    "misc/taxi_zone_lookup.csv",
    # fhvhv, the high-volume category, exists from 2019-02.
    first_months={
        "yellow": datetime.date(2019, 1, 1),
        "green": datetime.date(2019, 1, 1),
        "fhv": datetime.date(2019, 1, 1),
        "fhvhv": datetime.date(2019, 2, 1),
    },
)
# The TLC's own files: Parquet, every month it publishes (yellow 2009 onwards; 2009-2010 in the legacy layout below).
TLC = Source(
    "tlc",
    "https://d37ci6vzurychx.cloudfront.net",
    "trip-data/{stem}.parquet",
    "misc/taxi+_zone_lookup.csv",
    # As the TLC's own list of its files has them (bench/history_metadata/).
    first_months={
        "yellow": datetime.date(2009, 1, 1),
        "green": datetime.date(2014, 1, 1),
        "fhv": datetime.date(2015, 1, 1),
        "fhvhv": datetime.date(2019, 2, 1),
    },
)
SOURCES: dict[str, Source] = {s.name: s for s in (RELEASES, TLC)}


# The taxi zone shapes: the TLC's shapefile of the zones, published beside the zone lookup, which
# maps the coordinates of the legacy months (below) to zone ids.
@dataclasses.dataclass(frozen=True)
class Shapes:
    name: str  # its folder in the lake, and how logs name it
    path: str  # under the source's base, in both kinds of source
    shapefile: str  # the name of the .shp in the zip (its .shx, .dbf and .prj beside it)
    crs: str  # what the .prj must be
    records: int  # every version has exactly this many zones
    # The field that holds the zone lookup's LocationID: OBJECTID, not the shapefile's own
    # LocationID field, which repeats 56 and 103 (and lacks 57, 104 and 105).
    id_field: str
    fields: tuple[str, ...]  # what the .dbf must have besides


ZONE_SHAPES = Shapes(
    name="zone_shapes",
    path="misc/taxi_zones.zip",
    shapefile="taxi_zones.shp",
    crs="EPSG:2263",  # NAD83 / New York Long Island (ftUS): coordinates in feet
    records=263,
    id_field="OBJECTID",
    fields=("zone", "borough"),
)
# The lookup's two zones without a polygon, and what a legacy coordinate becomes when it is not in
# one: no usable coordinate (missing, 0, off the globe) is 264 "Unknown"; a real point in none of
# the 263 zones is 265 "Outside of NYC", as the TLC itself codes such trips from 2011.
UNKNOWN_ZONE = 264
OUTSIDE_ZONE = 265


@dataclasses.dataclass(frozen=True)
class LegacyLayout:
    """A service's old layout, with coordinates where later files have zone ids. Names match
    case-insensitively, the catalog's own names too; the rest is here: the old names of
    catalog columns, the (longitude, latitude) pairs that become a zone column, the text values
    of columns that became codes (stripped and lower-cased; a value not listed is an error), and
    the columns that are dropped."""

    until: datetime.date  # the last month the source publishes in this layout
    tells: frozenset[str]  # any of these names marks a header as this layout
    names: dict[str, str]
    points: dict[tuple[str, str], str]
    codes: dict[str, dict[str, object]]
    dropped: frozenset[str]
    # The kinds of source type (SOURCE_KINDS) a column takes besides its catalog type's (ACCEPTS),
    # by catalog column: what the old files write as text (times, words) or numbers (flags).
    also_accepts: dict[str, tuple[str, ...]]


# Yellow 2009-2010 in the TLC's Parquet files (and the old csv files): 2009 spells its columns
# vendor_name, Trip_Pickup_DateTime, Start_Lon, ...; 2010 vendor_id, pickup_datetime,
# pickup_longitude, .... Times are strings, vendors and payment types words, and two 2010 months
# carry a pandas index column. The coordinates themselves are not kept: every yellow month has
# one schema, and the TLC still publishes the original files (the lake file records which).
YELLOW_LEGACY = LegacyLayout(
    until=datetime.date(2010, 12, 1),
    tells=frozenset({"vendor_name", "vendor_id", "start_lon", "pickup_longitude"}),
    names={
        "vendor_name": "VendorID",
        "vendor_id": "VendorID",
        "trip_pickup_datetime": "tpep_pickup_datetime",
        "pickup_datetime": "tpep_pickup_datetime",
        "trip_dropoff_datetime": "tpep_dropoff_datetime",
        "dropoff_datetime": "tpep_dropoff_datetime",
        "rate_code": "RatecodeID",
        "store_and_forward": "store_and_fwd_flag",
        "fare_amt": "fare_amount",
        "surcharge": "extra",
        "tip_amt": "tip_amount",
        "tolls_amt": "tolls_amount",
        "total_amt": "total_amount",
    },
    points={
        ("start_lon", "start_lat"): "PULocationID",
        ("pickup_longitude", "pickup_latitude"): "PULocationID",
        ("end_lon", "end_lat"): "DOLocationID",
        ("dropoff_longitude", "dropoff_latitude"): "DOLocationID",
    },
    codes={
        # Today's codes: 1 Creative Mobile Technologies (CMT), 2 VeriFone (VTS). Digital Dispatch
        # Systems (DDS) stopped before 2011 and has no code: null, not an invented one.
        "VendorID": {"cmt": 1, "vts": 2, "dds": None},
        # 1 credit card, 2 cash, 3 no charge, 4 dispute, 5 unknown; "NA" is not available: 5.
        "payment_type": {
            **dict.fromkeys(("credit", "cre", "crd"), 1),
            **dict.fromkeys(("cash", "cas", "csh"), 2),
            **dict.fromkeys(("no charge", "noc"), 3),
            **dict.fromkeys(("dispute", "dis"), 4),
            **dict.fromkeys(("unk", "na"), 5),
        },
        # 2009 writes the flag as 0/1 (a number), 2010 as 0/1 or N/Y.
        "store_and_fwd_flag": {"0": "N", "n": "N", "1": "Y", "y": "Y"},
    },
    dropped=frozenset({"__index_level_0__"}),
    # Times as text (`2009-01-04 02:52:00`), parsed by the cast; vendors, payment types and 2010's
    # flag as words, decoded by `codes`; rate_code text in ten 2010 months (tlc-schemas.md, 9);
    # 2009's flag a DOUBLE 0/1, decoded as its text.
    also_accepts={
        "tpep_pickup_datetime": ("string",),
        "tpep_dropoff_datetime": ("string",),
        "VendorID": ("string",),
        "payment_type": ("string",),
        "RatecodeID": ("string",),
        "store_and_fwd_flag": ("floating",),
    },
)
LEGACY = {"yellow": YELLOW_LEGACY}


def legacy_month(svc: Service, month: Optional[datetime.date]) -> bool:
    """Whether the source publishes this month of ``svc`` in its legacy layout."""
    layout = LEGACY.get(svc.name)
    return layout is not None and month is not None and month <= layout.until


@dataclasses.dataclass(frozen=True)
class LegacyPlan:
    """How one legacy file's columns become catalog columns: ``renamed`` (source name, column),
    ``located`` (longitude name, latitude name, zone column), in the catalog's terms."""

    layout: LegacyLayout
    renamed: tuple[tuple[str, Column], ...]
    located: tuple[tuple[str, str, Column], ...]

    @property
    def columns(self) -> list[Column]:
        """The catalog columns a converted batch has, in its order."""
        return [column for _, column in self.renamed] + [column for _, _, column in self.located]


def legacy_plan(svc: Service, names: list[str], where: str) -> Optional[LegacyPlan]:
    """The plan for a header in ``svc``'s legacy layout, or None when it is not one. Raises
    SchemaMismatch for a name the layout does not know, a coordinate without its pair, or a
    column that two names fill."""
    layout = LEGACY.get(svc.name)
    keys = {name.strip().lower(): name.strip() for name in names}
    if layout is None or not layout.tells & set(keys):
        return None
    by_key = {c.name.lower(): c for c in svc.columns}
    renamed, located, unknown = [], [], []
    paired = {name for pair in layout.points for name in pair}
    for pair, zone in layout.points.items():
        present = [name for name in pair if name in keys]
        if len(present) == 1:
            raise SchemaMismatch(f"{where}: column {keys[present[0]]!r} comes without its pair {' and '.join(pair)}")
        if present:
            located.append((keys[pair[0]], keys[pair[1]], by_key[zone.lower()]))
    for key, name in keys.items():
        if key in paired or key in layout.dropped:
            continue
        column = by_key.get(layout.names.get(key, key).lower())
        if column is None:
            unknown.append(name)
        else:
            renamed.append((name, column))
    if unknown:
        raise SchemaMismatch(f"{where}: the legacy {svc.name} layout has no column(s) {', '.join(repr(u) for u in unknown)}")
    filled = [c.name for _, c in renamed] + [c.name for _, _, c in located]
    twice = sorted({name for name in filled if filled.count(name) > 1})
    if twice:
        raise SchemaMismatch(f"{where}: more than one column of the header becomes {', '.join(twice)}")
    return LegacyPlan(layout, tuple(renamed), tuple(located))


def source_kinds(svc: Service, names: list[str], where: str) -> list[tuple[str, Column, tuple[str, ...]]]:
    """For each column of a source Parquet file with these names (in file order) that fills a
    catalog column: (its name, that column, the kinds of Arrow type it takes). A legacy layout's
    coordinates take what a FLOAT takes (they are read as degrees); its dropped columns are free."""
    plan = legacy_plan(svc, names, where)
    if plan is None:
        return [(name, column, ACCEPTS[column.type]) for name, column in zip(names, _resolve_names(svc, names, where))]
    also = plan.layout.also_accepts
    renamed = [(name, column, ACCEPTS[column.type] + also.get(column.name, ())) for name, column in plan.renamed]
    return renamed + [(name, column, ACCEPTS[FLOAT]) for lon, lat, column in plan.located for name in (lon, lat)]


def check_rows(svc: Service, rows: int, where: str) -> None:
    """Refuse a file with fewer data rows than a whole file of the service has."""
    if rows < svc.min_rows:
        raise SchemaMismatch(
            f"{where}: {rows:,} data rows; a whole {svc.name} file has at least {svc.min_rows:,}, so this one is cut short or empty"
        )


def month_str(month: Optional[datetime.date]) -> str:
    """YYYY-MM: the month of a monthly dataset, which must have one."""
    if month is None:
        raise ValueError("a monthly dataset is named by its month, and none was given")
    return month.strftime("%Y-%m")


def month_key(month: Optional[datetime.date]) -> str:
    """How marker tables and reports key a dataset's month: YYYY-MM, or "" for the zones (no month)."""
    return month_str(month) if month else ""


def resolve_header(svc: Service, header_line: str, where: str) -> list[Column]:
    """Map a file's header line (a CSV header, or a Parquet file's column names joined with
    commas) to catalog columns, in file order; a legacy layout's header to the columns its
    converted rows have (legacy_plan).

    Names match case-insensitively; quotes and a trailing CR are ignored. Raises SchemaMismatch
    naming the file (``where``) for a column the catalog does not know, a column that appears
    twice, or a header without the service's required columns.
    """
    names = next(csv.reader([header_line.strip("\r\n")]), [])
    plan = legacy_plan(svc, names, where)
    resolved = plan.columns if plan else _resolve_names(svc, names, where)
    missing = [r for r in svc.required if r not in {c.name for c in resolved}]
    if missing:
        raise SchemaMismatch(f"{where}: header lacks required {svc.name} column(s) {', '.join(missing)}; got {header_line.strip()[:200]!r}")
    return resolved


def _resolve_names(svc: Service, names: list[str], where: str) -> list[Column]:
    by_key = {c.name.lower(): c for c in svc.columns}
    resolved: list[Column] = []
    unknown: list[str] = []
    for raw in names:
        name = raw.strip()
        column = by_key.get(name.lower())
        if column is None:
            unknown.append(name)
        elif column in resolved:
            raise SchemaMismatch(f"{where}: column {name!r} appears twice in the header")
        else:
            resolved.append(column)
    if unknown:
        raise SchemaMismatch(
            f"{where}: header has column(s) the {svc.name} catalog does not know: "
            f"{', '.join(repr(u) for u in unknown)}; known: {', '.join(c.name for c in svc.columns)}"
        )
    return resolved
