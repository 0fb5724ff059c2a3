"""An S3 bucket as the source (issue 29 item 4): `[source] base_url = s3://bucket/prefix`, in either
layout, read with the official boto3 client against moto's server mode (which checks credentials),
reached as users reach an S3-compatible store (AWS_ENDPOINT_URL), into a local lake. The invariant:
whatever brings the bytes (download.TRANSPORTS), the same checks, the same records and the same
"not published" apply; so these are the HTTP source's cases, over S3."""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
import time
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pipeline import Download, IngestMonth, IngestRange, Republished, catalog, download
from pipeline.download import MonthNotPublished, S3SourceError, SourceError, TooBig
from pipeline.lake_file import LakeFile
from pipeline.targets import s3 as s3_target

from conftest import bucket_name_for, configured, s3_calls, set_source
from mirror import RANGE_MONTHS, data_rows, month


class Source:
    """A bucket of this test's own holding a mirror in the releases' layout under range/ (the
    consecutive months of mirror.RANGE_MONTHS) and in the TLC's under tlc/."""

    def __init__(self, name: str, mirror: Path, client):
        self.name, self.client = name, client
        for layout in ("range", "tlc"):
            for path in (mirror / layout).rglob("*"):
                if path.is_file():
                    self.put(f"{layout}/{path.relative_to(mirror / layout)}", path.read_bytes())

    def url(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=body)

    def body(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def headers(self, key: str) -> dict:
        return self.client.head_object(Bucket=self.name, Key=key)["ResponseMetadata"]["HTTPHeaders"]


@pytest.fixture
def bucket(workspace, aws, mirror, request):
    """The workspace (a local lake, no warehouse), its source the bucket's releases-layout mirror;
    credentials only in the SDK's chain (conftest's aws)."""
    name = bucket_name_for(request, "src-")
    aws.create_bucket(Bucket=name)
    with configured({("ingest", "sinks"): "none"}):
        source = Source(name, mirror, aws)
        set_source(source.url("range"))
        yield source


LAYOUTS = {
    # layout: ([source] kind, prefix, service, month, key under the prefix)
    "releases": ("releases", "range", "yellow", "2020-01", "yellow/yellow_tripdata_2020-01.csv.gz"),
    "tlc": ("tlc", "tlc", "yellow", "2021-02", "trip-data/yellow_tripdata_2021-02.parquet"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_month_from_an_s3_mirror_lands_with_its_rows_and_the_objects_validators_and_a_rerun_asks_nothing(bucket, run, mirror, layout):
    kind, prefix, service, m, key = LAYOUTS[layout]
    served = bucket.body(f"{prefix}/{key}")
    rows = data_rows(gzip.decompress(served)) if key.endswith(".gz") else None
    with configured({("source", "kind"): kind, ("source", "base_url"): bucket.url(prefix)}):
        assert download.source_url(catalog.SERVICES[service], month(m)) == bucket.url(f"{prefix}/{key}")  # the one URL builder

        first = run(IngestMonth(service=service, month=month(m)))

        assert not first.failures
        record = LakeFile(service=service, month=month(m)).output().record()
        head = bucket.headers(f"{prefix}/{key}")
        assert (record.source_url, record.source_sha256) == (bucket.url(f"{prefix}/{key}"), hashlib.sha256(served).hexdigest())
        assert (record.source_size, record.source_etag, record.source_last_modified) == (
            str(len(served)),
            head["etag"],
            head["last-modified"],
        )
        assert record.rows == (rows if rows is not None else record.rows) and record.rows > 0
        sent: list[str] = []
        hook = s3_calls(sent)
        try:
            again = run(IngestMonth(service=service, month=month(m)))
        finally:
            s3_target.client().meta.events.unregister("before-call.s3", hook)
    assert again.started == [] and not again.failures
    assert sent == []  # done is decided by the lake: the source is not asked


def test_a_range_ends_where_the_s3_mirror_ends_probing_only_the_months_after_it(bucket, run, caplog):
    caplog.set_level(logging.WARNING, logger="pipeline.backfill")
    sent: list[str] = []
    hook = s3_calls(sent)
    try:
        result = run(IngestRange(services="yellow", first=month("2020-01"), last=month("2020-06")))
    finally:
        s3_target.client().meta.events.unregister("before-call.s3", hook)

    assert not result.failures
    assert [IngestMonth(service="yellow", month=month(m)).complete() for m in RANGE_MONTHS] == [True] * 4
    assert [r.getMessage() for r in caplog.records] == [
        "yellow 2020-05..2020-06: not published at the source yet (2 month(s)); the range ends before it"
    ]
    # The probes: the newest months first, body-less (HeadObject), each missing one told from a
    # missing bucket by one listing; then the downloads.
    assert sorted(sent) == sorted(["HeadObject"] * 6 + ["ListObjectsV2"] * 2 + ["GetObject"] * 4)


def test_a_republished_object_is_reported_without_a_download_and_reingested(bucket, run, mirror_files):
    assert not run(IngestRange(services="yellow", first=month("2020-01"), last=month("2020-02"))).failures
    key = "range/yellow/yellow_tripdata_2020-02.csv.gz"
    before = bucket.headers(key)
    csv = mirror_files["yellow/yellow_tripdata_2020-01.csv.gz"]
    time.sleep(1.1)  # S3's Last-Modified has whole seconds: the new version's is later
    bucket.put(key, gzip.compress(b"".join(csv.splitlines(keepends=True)[:101])))  # header + 100 rows
    after = bucket.headers(key)
    check = Republished(services="yellow", first=month("2020-01"), last=month("2020-02"))
    sent: list[str] = []
    hook = s3_calls(sent)
    try:
        result = run(check)
    finally:
        s3_target.client().meta.events.unregister("before-call.s3", hook)

    assert not result.failures and [t.split("_")[0] for t in result.started] == ["Republished"]
    assert sent == ["HeadObject", "HeadObject"]  # one body-less request per month in the lake
    assert open(check.output().path).read() == (
        f"yellow 2020-02: republished: size {before['content-length']} -> {after['content-length']}, "
        f"etag {before['etag']} -> {after['etag']}, last_modified {before['last-modified']} -> {after['last-modified']}\n"
    )

    fixed = run(Republished(services="yellow", first=month("2020-01"), last=month("2020-02"), reingest=True))

    assert not fixed.failures and [t.split("_")[0] for t in fixed.started].count("Download") == 1
    record = LakeFile(service="yellow", month=month("2020-02")).output().record()
    assert (record.rows, record.source_etag, record.source_size) == (100, after["etag"], after["content-length"])
    assert LakeFile(service="yellow", month=month("2020-01")).output().record().rows == data_rows(csv)


def test_a_missing_month_is_the_same_not_published_line_as_over_http(bucket, run, http_server):
    s3_error = run(IngestMonth(service="yellow", month=month("2020-07"))).failures["Download"]
    set_source(f"{http_server}/range")
    http_error = run(IngestMonth(service="yellow", month=month("2020-07"))).failures["Download"]

    assert type(s3_error) is type(http_error) is MonthNotPublished
    assert str(s3_error) == f"yellow 2020-07 ({bucket.url('range/yellow/yellow_tripdata_2020-07.csv.gz')}): not published (HTTP 404)"
    assert str(s3_error).replace(bucket.url("range"), f"{http_server}/range") == str(http_error)
    assert s3_error.hint == http_error.hint
    assert download.published(bucket.url("range/yellow/yellow_tripdata_2020-07.csv.gz")) is None


def test_a_missing_bucket_is_one_clear_line_for_the_download_and_the_probe(bucket, run):
    set_source("s3://no-such-source-bucket/range")
    url = "s3://no-such-source-bucket/range/yellow/yellow_tripdata_2020-01.csv.gz"

    error = run(IngestMonth(service="yellow", month=month("2020-01"))).failures["Download"]
    with pytest.raises(S3SourceError) as probed:
        download.published(url)

    assert isinstance(error, S3SourceError) and error.bucket == "no-such-source-bucket"
    assert str(error) == f"yellow 2020-01 ({url}): bucket no-such-source-bucket does not exist (NoSuchBucket)"
    assert str(probed.value) == f"{url}: asking whether it is published: bucket no-such-source-bucket does not exist (NoSuchBucket)"


def test_wrong_credentials_fail_at_once_in_one_line_that_holds_no_credential(bucket, run, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-secret-5e2c8a"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    started = time.monotonic()

    error = run(IngestMonth(service="yellow", month=month("2020-01"))).failures["Download"]
    with pytest.raises(S3SourceError) as probed:
        download.published(bucket.url("range/yellow/yellow_tripdata_2020-01.csv.gz"))

    assert time.monotonic() - started < 10  # refused, not retried
    url = bucket.url("range/yellow/yellow_tripdata_2020-01.csv.gz")
    check = f"check {s3_target.CREDENTIALS} and their permissions"
    assert isinstance(error, S3SourceError)
    assert str(error) == f"yellow 2020-01 ({url}): access denied to bucket {bucket.name} (SignatureDoesNotMatch); {check}"
    # A HEAD's answer has no body, so no code: its status says it.
    assert str(probed.value) == f"{url}: asking whether it is published: access denied to bucket {bucket.name} (403); {check}"
    assert wrong not in caplog.text and wrong not in str(error) and wrong not in str(probed.value)
    assert not LakeFile(service="yellow", month=month("2020-01")).complete()


def test_no_credentials_at_all_is_one_line_naming_where_they_are_looked_for(bucket, run, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to wait for

    error = run(IngestMonth(service="yellow", month=month("2020-01"))).failures["Download"]

    url = bucket.url("range/yellow/yellow_tripdata_2020-01.csv.gz")
    assert str(error) == f"yellow 2020-01 ({url}): no AWS credentials were found; set {s3_target.CREDENTIALS}"


def test_the_objects_announced_length_bounds_it_before_its_body_is_read(bucket):
    """[source] max_size_mib, as over HTTP: the object's Content-Length is what the checks see."""
    key = "range/yellow/yellow_tripdata_2020-03.csv.gz"
    bucket.put(key, b"\x1f\x8b" + bytes(4 * download.NET_CHUNK))  # more than the first chunk read
    with configured({("source", "max_size_mib"): str(1 / 1024)}), pytest.raises(TooBig) as refused:
        Download(service="yellow", month=month("2020-03")).run()

    assert (refused.value.size, refused.value.announced) == (2 + 4 * download.NET_CHUNK, True)


def staged(workspace: Path) -> list[str]:
    return sorted(str(p.relative_to(workspace)) for p in (workspace / "staging").rglob("*") if p.is_file())


def test_a_truncated_object_fails_with_the_content_error_and_nothing_is_kept(bucket, run, workspace):
    key = "range/green/green_tripdata_2020-03.csv.gz"
    whole = bucket.body(key)
    bucket.put(key, whole[: len(whole) // 2])

    error = run(IngestMonth(service="green", month=month("2020-03"))).failures["Download"]

    assert isinstance(error, SourceError)
    assert str(error).startswith(f"green 2020-03 ({bucket.url(key)}): truncated or corrupt gzip (")
    assert str(error).endswith("; the download is incomplete")
    assert staged(workspace) == [] and not (workspace / "lake" / "green").exists()


@given(cut=st.integers(min_value=0, max_value=10**9))
@example(cut=0)
@example(cut=1)
def test_any_cut_of_an_object_is_refused_and_never_reaches_staging_or_the_lake(bucket, workspace, cut):
    key = "range/yellow/yellow_tripdata_2020-04.csv.gz"
    if not hasattr(bucket, "whole"):
        bucket.whole = bucket.body(key)
    cut %= len(bucket.whole)  # every strict prefix, from empty to one byte short
    bucket.put(key, bucket.whole[:cut])
    task = Download(service="yellow", month=month("2020-04"))

    with pytest.raises(SourceError) as refused:
        task.run()

    # Refused for what it holds (the content checks), not for how it came.
    assert re.match(
        rf"yellow 2020-04 \({re.escape(bucket.url(key))}\): (not a gzip file;|truncated or corrupt gzip \()", str(refused.value)
    )
    assert not task.complete() and staged(workspace) == []
