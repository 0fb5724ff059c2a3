"""The object-store lakes' one contract, held by S3 (the official boto3 client against moto's
server mode) and Azure Blob Storage (the official SDK against Azurite) alike: each test runs over
both stores (the `store` fixture, tests/stores.py), each store held to its own exact messages. What
only one store does is tested in test_s3.py and test_azure.py."""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import json
import logging
import os
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import IngestMonth, Reingest, catalog, doctor
from pipeline.convert import ToParquet
from pipeline.download import Download
from pipeline.lake import lake_path
from pipeline.lake_file import LakeFile
from pipeline.warehouses import duckdb_views
from pipeline.warehouses.bigquery import ExposeBigQuery
from pipeline.warehouses.bigquery_table import LoadBigQueryTable
from pipeline.warehouses.sink import WrongLake

from conftest import configured
from lakes import MONTHS, lake_key
from mirror import data_rows, month, replaced
from servers import etag_of

# The `store` fixture's parameters, by the conftest fixture each one's lake is.
FIXTURES = {"s3": "s3", "azure": "az"}


@pytest.fixture(params=list(FIXTURES))
def store(request):
    """The lake in a bucket or container of this test's own (stores.S3Lake, stores.AzureLake)."""
    return request.getfixturevalue(FIXTURES[request.param])


def staged(service: str, m: str) -> str:
    return ToParquet(service=service, month=month(m)).output().path


def lake_url(store, service: str, m: str) -> str:
    return f"{store.lake}/{service}/month={m}/{service}_tripdata_{m}.parquet"


def test_three_months_land_whole_with_checksums_and_metadata_and_a_rerun_runs_nothing(store, run, mirror_files, mirror, caplog):
    caplog.set_level(logging.DEBUG)
    tasks = [IngestMonth(service=s, month=month(m)) for s, m in MONTHS]

    first = run(*tasks)

    assert not first.failures
    objects = store.objects()
    assert sorted(objects) == sorted(lake_key(s, m) for s, m in MONTHS)  # exactly one object a month
    for service, m in MONTHS:
        stored = objects[lake_key(service, m)]
        params = {"service": service, "month": month(m)}
        with open(Download(**params).output()["meta"].path) as f:
            source = json.load(f)
        assert stored.checksum == store.checksum_of(staged(service, m)) and stored.size == os.path.getsize(staged(service, m))
        served = mirror / "releases" / service / f"{service}_tripdata_{m}.csv.gz"
        assert stored.metadata == {
            "rows": str(data_rows(mirror_files[f"{service}/{service}_tripdata_{m}.csv.gz"])),
            "source_sha256": hashlib.sha256(served.read_bytes()).hexdigest(),
            "source_url": source["url"],
            "source_size": str(served.stat().st_size),
            "source_etag": etag_of(served),
            "source_last_modified": email.utils.formatdate(served.stat().st_mtime, usegmt=True),
        }
        record = LakeFile(**params).output().record()  # read through the one LakeRecord path
        assert record.metadata() == stored.metadata
        assert record.rows == int(stored.metadata["rows"]) and record.source_sha256 == stored.metadata["source_sha256"]
    assert store.unfinished() == []

    again = run(*tasks)

    assert again.started == [] and not again.failures
    assert store.secret not in caplog.text  # the credential is in no log line


def test_completeness_of_many_months_is_one_listing(store, run):
    assert not run(*[LakeFile(service=s, month=month(m)) for s, m in MONTHS]).failures
    yellow = [LakeFile(service="yellow", month=month(m)).output() for m in ("2019-03", "2020-01", "2020-07", "2021-01")]

    with store.requests() as sent:
        assert store.LakeFile.bulk_exists(yellow) == [False, True, False, True]

    assert sent == [store.LISTING]


@given(
    picks=st.lists(
        st.tuples(st.sampled_from(["yellow", "green", "fhv", "fhvhv"]), st.integers(2009, 2025), st.integers(1, 12)),
        min_size=1,
        max_size=12,
        unique=True,
    ),
    uploaded=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_generated_months_are_answered_by_one_listing_exactly(store, tmp_path, picks, uploaded):
    store.empty()
    small = tmp_path / "small.parquet"
    small.write_bytes(b"PAR1" + os.urandom(100) + b"PAR1")
    targets = [store.LakeFile(lake_path(catalog.SERVICES[s], month(f"{y}-{m:02d}"))) for s, y, m in picks]
    for target, up in zip(targets, uploaded):
        if up:
            target.upload(str(small), {"rows": "1"})

    with store.requests() as sent:
        found = store.LakeFile.bulk_exists(targets)

    assert found == [bool(up) for up in uploaded[: len(targets)]]
    assert sent == [store.LISTING]


def test_the_duckdb_view_over_the_lake_counts_the_source_rows(store, run, workspace, mirror_files):
    with configured({("ingest", "sinks"): "duckdb"}):
        result = run(IngestMonth(service="green", month=month("2019-01")), IngestMonth(service="yellow", month=month("2021-01")))

        assert not result.failures
        with duckdb_views.connect() as con:  # a reader's session: the lake's secret from the SDK's chain
            assert con.execute("SELECT month, count(*) FROM green_tripdata GROUP BY 1").fetchall() == [
                ("2019-01", data_rows(mirror_files["green/green_tripdata_2019-01.csv.gz"]))
            ]
            assert con.execute("SELECT count(*) FROM yellow_tripdata").fetchone()[0] == data_rows(
                mirror_files["yellow/yellow_tripdata_2021-01.csv.gz"]
            )
            views = dict(con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal").fetchall())
    assert f"'{store.lake}/green/month=*/*.parquet'" in views["green_tripdata"]
    warehouse = (workspace / "warehouse.duckdb").read_bytes()
    for secret in store.credentials:
        assert secret.encode() not in warehouse and all(secret not in sql for sql in views.values())
    assert not run(IngestMonth(service="green", month=month("2019-01"))).started  # the markers are read over the store too


def test_postgres_loads_from_the_lake(store, pg, run, mirror_files):
    with configured({("ingest", "sinks"): "postgres"}):
        result = run(IngestMonth(service="fhvhv", month=month("2021-06")))

    assert not result.failures
    assert pg.count("fhvhv_tripdata", "2021-06") == data_rows(mirror_files["fhvhv/fhvhv_tripdata_2021-06.csv.gz"])
    assert list(store.objects()) == [lake_key("fhvhv", "2021-06")]


def test_reingest_replaces_the_object_whole(store, run, mirror, mirror_files):
    assert not run(IngestMonth(service="green", month=month("2019-01"))).failures
    csv = mirror_files["green/green_tripdata_2019-01.csv.gz"]
    shorter = gzip.compress(b"".join(csv.splitlines(keepends=True)[:11]))  # header + 10 rows

    with replaced(mirror / "releases" / "green" / "green_tripdata_2019-01.csv.gz", shorter):
        result = run(Reingest(services="green", first=month("2019-01"), last=month("2019-01")))

    assert not result.failures
    objects = store.objects()
    assert list(objects) == [lake_key("green", "2019-01")]
    stored = objects[lake_key("green", "2019-01")]
    assert stored.metadata["rows"] == "10" and stored.metadata["source_sha256"] == hashlib.sha256(shorter).hexdigest()
    assert stored.checksum == store.checksum_of(staged("green", "2019-01"))


def test_an_upload_cut_midway_leaves_nothing_and_the_rerun_uploads_it(store, run):
    task = IngestMonth(service="yellow", month=month("2021-01"))
    lake_file = LakeFile(service="yellow", month=month("2021-01"))
    cuts = store.proxy.cuts
    store.proxy.reset(cut_after=64 * 1024)  # small requests pass; the upload's data is cut at 64 KiB

    cut = run(task)

    store.proxy.reset(cut_after=None)
    assert store.proxy.cuts > cuts
    error = cut.failures["LakeFile"]
    assert isinstance(error, store.Error) and str(error).startswith(f"uploading to {lake_file.output().path}: ")
    assert store.objects() == {}  # nothing under the name
    if store.aborts_unfinished:
        assert store.unfinished() == []  # the upload aborted
    assert not lake_file.complete()

    rerun = run(task)

    assert not rerun.failures and [t for t in rerun.started if t.startswith("LakeFile")]
    assert store.objects()[lake_key("yellow", "2021-01")].checksum == store.checksum_of(staged("yellow", "2021-01"))


@given(data=st.data())
def test_generated_cut_points_leave_the_object_whole_or_absent(store, tmp_path, data):
    cut = data.draw(st.integers(min_value=1, max_value=store.cut_max), label="cut")
    store.empty()
    file = tmp_path / "upload.parquet"
    if not file.exists():
        file.write_bytes(os.urandom(store.cut_file_size))
    url = lake_url(store, "green", "2019-01")
    store.proxy.reset(cut_after=cut)
    try:
        with configured(store.cut_settings):
            store.Target(url).upload(str(file), {"rows": "1"})
    except store.Error as e:
        assert str(e).startswith(f"uploading to {url}: ")
    finally:
        store.proxy.reset(cut_after=None)
    objects = store.objects()
    assert objects == {} or (objects[lake_key("green", "2019-01")].checksum, objects[lake_key("green", "2019-01")].size) == (
        store.checksum_of(str(file)),
        file.stat().st_size,
    )
    if store.aborts_unfinished:
        assert store.unfinished() == []


def test_an_upload_garbled_on_the_wire_fails_by_name_and_leaves_nothing_that_counts_as_done(store, run):
    assert not run(ToParquet(service="yellow", month=month("2021-01"))).failures
    local = staged("yellow", "2021-01")
    store.proxy.reset(cut_after=None, flip_at=100_000)  # a byte of the file's data inverted

    error = run(LakeFile(service="yellow", month=month("2021-01"))).failures["LakeFile"]

    store.proxy.reset(cut_after=None)
    assert isinstance(error, store.Error) and store.garbled(lake_url(store, "yellow", "2021-01"), local).fullmatch(str(error)), str(error)
    assert store.objects() == {} and not LakeFile(service="yellow", month=month("2021-01")).complete()
    assert not run(LakeFile(service="yellow", month=month("2021-01"))).failures
    assert store.objects()[lake_key("yellow", "2021-01")].checksum == store.checksum_of(local)


def test_another_writers_object_put_before_our_check_is_left_as_it_is(store, tmp_path):
    """Two hosts upload one month (a host cut off, its step handed to another): when the other's
    object lands between our upload and our check, it is not ours (its record, its ETag), so our
    check leaves it (the other writer checks its own) and fails our upload by name: never a
    removal of another writer's good object."""
    ours, theirs = tmp_path / "ours.parquet", tmp_path / "theirs.parquet"
    ours.write_bytes(os.urandom(1000))
    theirs.write_bytes(os.urandom(1200))
    url = lake_url(store, "green", "2019-01")
    target = store.Target(url)
    check = getattr(target.fs, store.check_after_upload)

    def another_writer_meanwhile(u):  # the other writer's object lands between ours and the check
        store.put_raw(lake_key("green", "2019-01"), theirs.read_bytes(), {"rows": "2"})
        return check(u)

    setattr(target.fs, store.check_after_upload, another_writer_meanwhile)
    try:
        with pytest.raises(store.Error) as error:
            target.upload(str(ours), {"rows": "1"})
    finally:
        delattr(target.fs, store.check_after_upload)
    assert str(error.value) == f"uploading to {url}: {store.replaced_why}"
    assert store.read(lake_key("green", "2019-01")) == theirs.read_bytes()
    assert store.objects()[lake_key("green", "2019-01")].checksum == store.checksum_of(str(theirs))


def test_a_bucket_or_container_that_does_not_exist_is_one_clear_line(store, run):
    with configured({("lake", "root"): f"{store.scheme}://{store.missing}/lake"}):
        result = run(IngestMonth(service="green", month=month("2019-01")))

    assert str(result.failures["LakeFile"]) == (
        f"uploading to {store.scheme}://{store.missing}/lake/green/month=2019-01/green_tripdata_2019-01.parquet: {store.missing_why}"
    )


def test_wrong_credentials_fail_at_once_in_one_line_that_holds_no_credential(store, run, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = store.use_wrong_credentials(monkeypatch)
    started = time.monotonic()

    result = run(IngestMonth(service="green", month=month("2019-01")), broken_ok=True)

    assert time.monotonic() - started < 10  # refused, not retried
    errors = [error for _, error in result.broken + result.every_failure if isinstance(error, store.Error)]
    assert errors, (result.broken, result.every_failure)
    assert str(errors[0]) == f"checking {lake_url(store, 'green', '2019-01')}: {store.denied_why()}"
    assert wrong not in caplog.text and all(wrong not in str(e) for e in errors)
    assert store.objects() == {}


def test_the_doctor_writes_reads_and_deletes_an_object_in_the_lake(store):
    assert doctor.check_lake(store.lake) == store.doctor_passed()
    assert store.objects() == {}
    missing = f"{store.scheme}://{store.missing}/lake"
    assert doctor.check_lake(missing) == store.doctor_missing(missing)


@pytest.mark.parametrize("sink", [ExposeBigQuery, LoadBigQueryTable])
def test_a_bigquery_sink_with_the_lake_in_another_store_is_refused_by_name_before_it_loads(store, sink, run, monkeypatch):
    # No Google credentials anywhere: the refusal comes before anything would ask for them.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", f"/nonexistent/{store.name}/lake")
    with configured({("ingest", "sinks"): sink.name}):
        result = run(IngestMonth(service="green", month=month("2019-01")), broken_ok=True)
    assert result.started == [] and store.objects() == {}
    assert [type(error) for _, error in result.broken] == [WrongLake]
    with pytest.raises(WrongLake) as error:
        sink(service="green", month=month("2019-01")).run()  # the sink's first step: nothing loaded, nothing asked of BigQuery

    assert (error.value.sink, error.value.reads, error.value.root) == (sink.name, "gcs", store.lake)
    assert str(error.value) == (
        f"green 2019-01: the {sink.name} sink reads the lake from GCS, and [lake] root is {store.lake}; "
        f"set [lake] root to gs://bucket/prefix (config/gcp.cfg), or leave {sink.name} out of [ingest] sinks"
    )
