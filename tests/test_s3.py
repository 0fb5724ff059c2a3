"""The lake on S3: the official boto3 client against moto's server mode (an S3-compatible server
that checks credentials), started by the test suite and reached the way users point the SDK at an
S3-compatible store (AWS_ENDPOINT_URL). Same tasks as the local and GCS lakes, switched by
`[lake] root` alone."""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import json
import logging
import os
import time

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import IngestMonth, Reingest, catalog, settings
from pipeline.convert import ToParquet
from pipeline.download import Download
from pipeline.lake import S3LakeFile, lake_path, lake_target
from pipeline.lake_file import LakeFile
from pipeline.targets import s3 as s3_target
from pipeline.targets.s3 import S3Error, S3Target, crc32_of
from pipeline.warehouses import duckdb_views
from pipeline.warehouses.bigquery import ExposeBigQuery
from pipeline.warehouses.bigquery_table import LoadBigQueryTable
from pipeline.warehouses.sink import WrongLake

from conftest import bucket_name_for, configured, s3_calls
from lakes import MONTHS, lake_key
from mirror import data_rows, month, replaced
from servers import etag_of

MIB = 1024 * 1024


class Bucket:
    def __init__(self, name: str, server: dict):
        self.name, self.server, self.proxy = name, server, server["proxy"]
        self.lake = f"s3://{name}/lake"
        self.client = boto3.session.Session().client("s3")

    def objects(self) -> dict[str, dict]:
        """Every object, with its metadata and checksum (as the service reports them)."""
        keys = [o["Key"] for o in self.client.list_objects_v2(Bucket=self.name).get("Contents", [])]
        return {key: self.client.head_object(Bucket=self.name, Key=key, ChecksumMode="ENABLED") for key in keys}

    def unfinished_uploads(self) -> list:
        return self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", [])

    def empty(self) -> None:
        for key in self.objects():
            self.client.delete_object(Bucket=self.name, Key=key)


@pytest.fixture
def s3(workspace, s3_server, aws, request):
    """The lake in a bucket of this test's own, credentials only in the SDK's chain (conftest's aws)."""
    name = bucket_name_for(request)
    aws.create_bucket(Bucket=name)
    with configured({("lake", "root"): f"s3://{name}/lake", ("ingest", "sinks"): "none"}):
        yield Bucket(name, s3_server)
    s3_server["proxy"].reset(cut_after=None)


def test_three_months_land_whole_with_checksums_and_metadata_and_a_rerun_runs_nothing(s3, run, mirror_files, mirror, caplog):
    caplog.set_level(logging.DEBUG)
    tasks = [IngestMonth(service=s, month=month(m)) for s, m in MONTHS]

    first = run(*tasks)

    assert not first.failures
    objects = s3.objects()
    assert sorted(objects) == sorted(lake_key(s, m) for s, m in MONTHS)  # exactly one object a month
    for service, m in MONTHS:
        head = objects[lake_key(service, m)]
        params = {"service": service, "month": month(m)}
        staged = ToParquet(**params).output().path
        with open(Download(**params).output()["meta"].path) as f:
            source = json.load(f)
        assert head["ChecksumCRC32"] == crc32_of(staged) and head["ContentLength"] == os.path.getsize(staged)
        served = mirror / "releases" / service / f"{service}_tripdata_{m}.csv.gz"
        assert head["Metadata"] == {
            "rows": str(data_rows(mirror_files[f"{service}/{service}_tripdata_{m}.csv.gz"])),
            "source_sha256": hashlib.sha256(served.read_bytes()).hexdigest(),
            "source_url": source["url"],
            "source_size": str(served.stat().st_size),
            "source_etag": etag_of(served),
            "source_last_modified": email.utils.formatdate(served.stat().st_mtime, usegmt=True),
        }
        record = LakeFile(**params).output().record()  # read through the one LakeRecord path
        assert record.rows == int(head["Metadata"]["rows"]) and record.source_sha256 == head["Metadata"]["source_sha256"]
    assert s3.unfinished_uploads() == []

    again = run(*tasks)

    assert again.started == [] and not again.failures
    assert s3.server["secret"] not in caplog.text  # the credential is in no log line


def test_completeness_of_many_months_is_one_listing(s3, run):
    assert not run(*[LakeFile(service=s, month=month(m)) for s, m in MONTHS]).failures
    yellow = [LakeFile(service="yellow", month=month(m)).output() for m in ("2019-03", "2020-01", "2020-07", "2021-01")]
    sent: list[str] = []
    hook = s3_calls(sent)
    try:
        assert S3LakeFile.bulk_exists(yellow) == [False, True, False, True]
    finally:
        s3_target.client().meta.events.unregister("before-call.s3", hook)
    assert sent == ["ListObjectsV2"]


@given(
    picks=st.lists(
        st.tuples(st.sampled_from(["yellow", "green", "fhv", "fhvhv"]), st.integers(2009, 2025), st.integers(1, 12)),
        min_size=1,
        max_size=12,
        unique=True,
    ),
    uploaded=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_generated_months_are_answered_by_one_listing_exactly(s3, tmp_path, picks, uploaded):
    s3.empty()
    small = tmp_path / "small.parquet"
    small.write_bytes(b"PAR1" + os.urandom(100) + b"PAR1")
    targets = [S3LakeFile(lake_path(catalog.SERVICES[s], month(f"{y}-{m:02d}"))) for s, y, m in picks]
    for target, up in zip(targets, uploaded):
        if up:
            target.upload(str(small), {"rows": "1"})
    sent: list[str] = []
    hook = s3_calls(sent)
    try:
        found = S3LakeFile.bulk_exists(targets)
    finally:
        s3_target.client().meta.events.unregister("before-call.s3", hook)
    assert found == [bool(up) for up in uploaded[: len(targets)]]
    assert sent == ["ListObjectsV2"]


def test_the_duckdb_view_over_the_s3_lake_counts_the_source_rows(s3, run, workspace, mirror_files):
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
    assert f"'{s3.lake}/green/month=*/*.parquet'" in views["green_tripdata"]
    warehouse = (workspace / "warehouse.duckdb").read_bytes()
    for secret in (s3.server["secret"], s3.server["key_id"]):
        assert secret.encode() not in warehouse and all(secret not in sql for sql in views.values())
    assert not run(IngestMonth(service="green", month=month("2019-01"))).started  # the markers are read over S3 too


def test_postgres_loads_from_the_s3_lake(s3, pg, run, mirror_files):
    with configured({("ingest", "sinks"): "postgres"}):
        result = run(IngestMonth(service="fhvhv", month=month("2021-06")))

    assert not result.failures
    assert pg.count("fhvhv_tripdata", "2021-06") == data_rows(mirror_files["fhvhv/fhvhv_tripdata_2021-06.csv.gz"])
    assert list(s3.objects()) == [lake_key("fhvhv", "2021-06")]


def test_reingest_replaces_the_object_whole(s3, run, mirror, mirror_files):
    assert not run(IngestMonth(service="green", month=month("2019-01"))).failures
    csv = mirror_files["green/green_tripdata_2019-01.csv.gz"]
    shorter = gzip.compress(b"".join(csv.splitlines(keepends=True)[:11]))  # header + 10 rows

    with replaced(mirror / "releases" / "green" / "green_tripdata_2019-01.csv.gz", shorter):
        result = run(Reingest(services="green", first=month("2019-01"), last=month("2019-01")))

    assert not result.failures
    objects = s3.objects()
    assert list(objects) == [lake_key("green", "2019-01")]
    head = objects[lake_key("green", "2019-01")]
    assert head["Metadata"]["rows"] == "10" and head["Metadata"]["source_sha256"] == hashlib.sha256(shorter).hexdigest()
    assert head["ChecksumCRC32"] == crc32_of(ToParquet(service="green", month=month("2019-01")).output().path)


def test_an_upload_cut_midway_leaves_nothing_and_the_rerun_uploads_it(s3, run):
    task = IngestMonth(service="yellow", month=month("2021-01"))
    lake_file = LakeFile(service="yellow", month=month("2021-01"))
    cuts = s3.proxy.cuts
    s3.proxy.reset(cut_after=64 * 1024)  # small requests pass; the upload's data is cut at 64 KiB

    cut = run(task)

    s3.proxy.reset(cut_after=None)
    assert s3.proxy.cuts > cuts
    error = cut.failures["LakeFile"]
    assert isinstance(error, S3Error) and str(error).startswith(f"uploading to {lake_file.output().path}: ")
    assert s3.objects() == {} and s3.unfinished_uploads() == []  # nothing under the name; the upload aborted
    assert not lake_file.complete()

    rerun = run(task)

    assert not rerun.failures and [t for t in rerun.started if t.startswith("LakeFile")]
    head = s3.objects()[lake_key("yellow", "2021-01")]
    assert head["ChecksumCRC32"] == crc32_of(ToParquet(service="yellow", month=month("2021-01")).output().path)


def test_a_multipart_upload_cut_in_a_part_leaves_nothing(s3, tmp_path):
    big = tmp_path / "big.parquet"
    big.write_bytes(os.urandom(11 * MIB))  # three parts of 5 MiB
    url = f"{s3.lake}/yellow/month=2019-01/yellow_tripdata_2019-01.parquet"
    s3.proxy.reset(cut_after=3 * MIB)

    with pytest.raises(S3Error) as error:
        S3Target(url).upload(str(big), {"rows": "1"})

    s3.proxy.reset(cut_after=None)
    assert str(error.value).startswith(f"uploading to {url}: ")
    assert s3.objects() == {} and s3.unfinished_uploads() == []
    S3Target(url).upload(str(big), {"rows": "1"})
    head = s3.objects()["lake/yellow/month=2019-01/yellow_tripdata_2019-01.parquet"]
    assert head["ChecksumCRC32"] == crc32_of(str(big)) and head["ContentLength"] == 11 * MIB


@given(cut=st.integers(min_value=1, max_value=320 * 1024))
def test_generated_cut_points_leave_the_object_whole_or_absent(s3, tmp_path, cut):
    s3.empty()
    small = tmp_path / "small.parquet"
    if not small.exists():
        small.write_bytes(os.urandom(300 * 1024))
    url = f"{s3.lake}/green/month=2019-01/green_tripdata_2019-01.parquet"
    s3.proxy.reset(cut_after=cut)
    try:
        S3Target(url).upload(str(small), {"rows": "1"})
    except S3Error as e:
        assert str(e).startswith(f"uploading to {url}: ")
    finally:
        s3.proxy.reset(cut_after=None)
    objects = s3.objects()
    assert objects == {} or objects["lake/green/month=2019-01/green_tripdata_2019-01.parquet"]["ChecksumCRC32"] == crc32_of(str(small))
    assert s3.unfinished_uploads() == []


def test_an_upload_garbled_on_the_wire_is_removed_so_nothing_counts_as_done(s3, run):
    assert not run(ToParquet(service="yellow", month=month("2021-01"))).failures
    local = ToParquet(service="yellow", month=month("2021-01")).output().path
    s3.proxy.reset(cut_after=None, flip_at=100_000)  # a byte of the file's data inverted

    error = run(LakeFile(service="yellow", month=month("2021-01"))).failures["LakeFile"]

    s3.proxy.reset(cut_after=None)
    url = f"{s3.lake}/yellow/month=2021-01/yellow_tripdata_2021-01.parquet"
    assert isinstance(error, S3Error) and str(error).startswith(f"uploading to {url}: the object's CRC32 ")
    assert f"is not the local file's {crc32_of(local)} ({local}): the upload was garbled on its way" in str(error)
    assert str(error).endswith("so the object was removed; the next run uploads it again")
    assert s3.objects() == {} and not LakeFile(service="yellow", month=month("2021-01")).complete()
    assert not run(LakeFile(service="yellow", month=month("2021-01"))).failures
    assert s3.objects()[lake_key("yellow", "2021-01")]["ChecksumCRC32"] == crc32_of(local)


def test_another_writers_object_put_before_our_check_is_left_as_it_is(s3, tmp_path):
    """Two hosts upload one month (a host cut off, its step handed to another): when the other's
    object lands between our upload and our check, its record is not ours, so our check leaves it
    (the other writer checks its own) and fails our upload by name: never a removal of another
    writer's good object."""
    ours, theirs = tmp_path / "ours.parquet", tmp_path / "theirs.parquet"
    ours.write_bytes(os.urandom(1000))
    theirs.write_bytes(os.urandom(1200))
    url = f"{s3.lake}/green/month=2019-01/green_tripdata_2019-01.parquet"
    target = S3Target(url)
    head = target.fs.head

    def another_writer_meanwhile(u):  # the other writer's object lands between ours and the check
        s3.client.put_object(Bucket=s3.name, Key=lake_key("green", "2019-01"), Body=theirs.read_bytes(), Metadata={"rows": "2"})
        return head(u)

    target.fs.head = another_writer_meanwhile  # type: ignore[method-assign]
    try:
        with pytest.raises(S3Error) as error:
            target.upload(str(ours), {"rows": "1"})
    finally:
        del target.fs.head
    assert str(error.value) == f"uploading to {url}: another writer replaced the object before it was checked, so it was left; run again"
    body = s3.client.get_object(Bucket=s3.name, Key=lake_key("green", "2019-01"))["Body"].read()
    assert body == theirs.read_bytes()


def test_a_bucket_that_does_not_exist_is_one_clear_line(s3, run):
    with configured({("lake", "root"): "s3://no-such-bucket-here/lake"}):
        result = run(IngestMonth(service="green", month=month("2019-01")))

    assert str(result.failures["LakeFile"]) == (
        "uploading to s3://no-such-bucket-here/lake/green/month=2019-01/green_tripdata_2019-01.parquet: "
        "bucket no-such-bucket-here does not exist (NoSuchBucket)"
    )


def test_wrong_credentials_fail_at_once_in_one_line_that_holds_no_credential(s3, run, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-secret-4d1e9b"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    started = time.monotonic()

    result = run(IngestMonth(service="green", month=month("2019-01")), broken_ok=True)

    assert time.monotonic() - started < 10  # refused, not retried
    errors = [error for _, error in result.broken + result.every_failure if isinstance(error, S3Error)]
    assert errors, (result.broken, result.every_failure)
    assert str(errors[0]) == (
        f"checking {s3.lake}/green/month=2019-01/green_tripdata_2019-01.parquet: access denied to bucket {s3.name} (403); "
        f"check {s3_target.CREDENTIALS} and their permissions"
    )
    assert wrong not in caplog.text and all(wrong not in str(e) for e in errors)
    assert s3.objects() == {}


@pytest.mark.parametrize("sink", [ExposeBigQuery, LoadBigQueryTable])
def test_a_bigquery_sink_with_an_s3_lake_is_refused_by_name_before_it_loads(s3, sink, run, monkeypatch):
    # No Google credentials anywhere: the refusal comes before anything would ask for them.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(s3.lake.replace("s3://", "/nonexistent/")))
    with configured({("ingest", "sinks"): sink.name}):
        result = run(IngestMonth(service="green", month=month("2019-01")), broken_ok=True)
    assert result.started == [] and s3.objects() == {}
    assert [type(error) for _, error in result.broken] == [WrongLake]
    with pytest.raises(WrongLake) as error:
        sink(service="green", month=month("2019-01")).run()  # the sink's first step: nothing loaded, nothing asked of BigQuery

    assert (error.value.sink, error.value.reads, error.value.root) == (sink.name, "gcs", s3.lake)
    assert str(error.value) == (
        f"green 2019-01: the {sink.name} sink reads the lake from GCS, and [lake] root is {s3.lake}; "
        f"set [lake] root to gs://bucket/prefix (config/gcp.cfg), or leave {sink.name} out of [ingest] sinks"
    )


def test_s3_lake_roots_are_accepted_and_other_schemes_still_refused():
    assert settings.lake_root_problem("s3://bucket/prefix") is None
    assert settings.lake_root_problem("s3://bucket") is None
    assert settings.lake_root_problem("s3:///prefix") == "a s3:// lake needs its bucket: s3://bucket/prefix"
    assert settings.lake_root_problem("hdfs://namenode/lake").startswith("hdfs:// is not a lake this pipeline writes")
    assert type(lake_target("s3://bucket/lake/x.parquet")) is S3LakeFile
