"""The catalog against every real header we have: the 1 KiB TLC captures of 2019-01..2020-06 for
all four services, and the verbatim samples."""

import pytest

from pipeline import catalog

from mirror import DATA, S3

REAL_FILES = sorted(S3.glob("*.csv")) + sorted(DATA.glob("*.csv"))


def service_of(path):
    name = path.name
    return catalog.ZONES if "zone_lookup" in name else catalog.SERVICES[name.split("_tripdata")[0]]


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.name)
def test_every_real_header_resolves(path):
    header = path.read_bytes().split(b"\n", 1)[0].decode()
    svc = service_of(path)
    columns = catalog.resolve_header(svc, header, path.name)
    assert len(columns) == len(header.split(","))
    assert svc.pickup_column is None or svc.pickup_column in {c.name for c in columns}


def test_fhv_names_match_case_insensitively_to_one_spelling():
    dtc_2019 = "dispatching_base_num,pickup_datetime,dropOff_datetime,PUlocationID,DOlocationID,SR_Flag,Affiliated_base_number\r"
    dtc_2020 = "dispatching_base_num,pickup_datetime,dropoff_datetime,PULocationID,DOLocationID,SR_Flag,Affiliated_base_number"
    assert catalog.resolve_header(catalog.FHV, dtc_2019, "a") == catalog.resolve_header(catalog.FHV, dtc_2020, "b")
    assert [c.name for c in catalog.resolve_header(catalog.FHV, dtc_2019, "a")][2:5] == ["dropoff_datetime", "PULocationID", "DOLocationID"]


def test_unknown_column_is_an_error_naming_column_and_file():
    header = (DATA / "yellow_tripdata_2021-01.head.csv").read_text().splitlines()[0] + ",surge_multiplier"
    with pytest.raises(catalog.SchemaMismatch, match=r"yellow_tripdata_2021-01\.csv\.gz: .*'surge_multiplier'"):
        catalog.resolve_header(catalog.YELLOW, header, "yellow_tripdata_2021-01.csv.gz")


def test_a_header_without_the_pickup_time_is_not_this_service():
    green_header = (DATA / "green_tripdata_2019-01.head.csv").read_text().splitlines()[0]
    with pytest.raises(catalog.SchemaMismatch, match="unknown|does not know"):
        catalog.resolve_header(catalog.YELLOW, green_header, "x")
    with pytest.raises(catalog.SchemaMismatch, match="lacks required yellow column.*tpep_pickup_datetime"):
        catalog.resolve_header(catalog.YELLOW, "VendorID,trip_distance", "x")


def test_duplicate_column_is_an_error():
    with pytest.raises(catalog.SchemaMismatch, match="appears twice"):
        catalog.resolve_header(catalog.FHV, "pickup_datetime,PULocationID,PUlocationID", "x")


@pytest.mark.parametrize("svc", catalog.SERVICES.values(), ids=lambda s: s.name)
def test_schema_has_unique_names_and_one_type_each(svc):
    names = [c.name.lower() for c in svc.columns]
    assert len(names) == len(set(names))
    assert svc.schema.names == [c.name for c in svc.columns]


LEGACY = DATA / "legacy"


@pytest.mark.parametrize("year", ["2009", "2010"])
def test_both_legacy_headers_become_the_yellow_columns_in_their_order(year):
    header = (LEGACY / f"yellow_tripdata_{year}-01.csv").read_text().splitlines()[0]

    plan = catalog.legacy_plan(catalog.YELLOW, header.split(","), "x")

    renamed = [(old, column.name) for old, column in plan.renamed]
    assert renamed[:3] == (
        [("vendor_name", "VendorID"), ("Trip_Pickup_DateTime", "tpep_pickup_datetime"), ("Trip_Dropoff_DateTime", "tpep_dropoff_datetime")]
        if year == "2009"
        else [("vendor_id", "VendorID"), ("pickup_datetime", "tpep_pickup_datetime"), ("dropoff_datetime", "tpep_dropoff_datetime")]
    )
    assert [(lon, lat, column.name) for lon, lat, column in plan.located] == (
        [("Start_Lon", "Start_Lat", "PULocationID"), ("End_Lon", "End_Lat", "DOLocationID")]
        if year == "2009"
        else [("pickup_longitude", "pickup_latitude", "PULocationID"), ("dropoff_longitude", "dropoff_latitude", "DOLocationID")]
    )
    assert catalog.resolve_header(catalog.YELLOW, header, "x") == plan.columns
    assert len(plan.columns) == len(header.split(",")) - 2  # four coordinates, two zones
    assert {c.name for c in plan.columns} >= set(catalog.YELLOW.required)


def test_a_modern_header_or_another_service_has_no_legacy_plan():
    modern = (DATA / "yellow_tripdata_2021-01.head.csv").read_text().splitlines()[0]
    assert catalog.legacy_plan(catalog.YELLOW, modern.split(","), "x") is None
    assert catalog.legacy_plan(catalog.FHV, ["pickup_datetime", "vendor_id"], "x") is None  # fhv has no legacy layout


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda names: [n for n in names if n != "End_Lat"], "x: column 'End_Lon' comes without its pair end_lon and end_lat"),
        (lambda names: [*names, "Surge"], "x: the legacy yellow layout has no column(s) 'Surge'"),
        (lambda names: [*names, "vendor_id"], "x: more than one column of the header becomes VendorID"),
        (lambda names: [n for n in names if n != "Trip_Pickup_DateTime"], "x: header lacks required yellow column(s) tpep_pickup_datetime"),
    ],
    ids=["coordinate-without-its-pair", "unknown-column", "two-become-one", "no-pickup-time"],
)
def test_a_legacy_header_that_does_not_fit_is_refused_saying_why(change, message):
    names = (LEGACY / "yellow_tripdata_2009-01.csv").read_text().splitlines()[0].split(",")

    with pytest.raises(catalog.SchemaMismatch) as error:
        catalog.resolve_header(catalog.YELLOW, ",".join(change(names)), "x")

    assert str(error.value).startswith(message)


def test_legacy_months_are_yellow_until_2010_12():
    import datetime

    assert catalog.legacy_month(catalog.YELLOW, datetime.date(2010, 12, 1))
    assert not catalog.legacy_month(catalog.YELLOW, datetime.date(2011, 1, 1))
    assert not catalog.legacy_month(catalog.GREEN, datetime.date(2009, 1, 1)) and not catalog.legacy_month(catalog.YELLOW, None)
