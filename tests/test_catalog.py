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
