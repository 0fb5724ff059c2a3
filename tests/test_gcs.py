"""The lake on GCS: the official google-cloud-storage client against fake-gcs-server, started by
the test suite. Same tasks as the local lake, switched by `[lake] root` alone."""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import time

import pytest

from pipeline import IngestMonth
from pipeline.convert import ToParquet
from pipeline.download import Download
from pipeline.lake_file import LakeFile
from pipeline.targets.gcs import CallFailed, ChunkSizeRefused, GarbledUpload, GCSError, GCSFileSystem, GCSTarget, crc32c_of
from pipeline.targets.gcs import client as gcs_client

from conftest import configured
from mirror import data_rows, month
from servers import etag_of

MONTHS = [("yellow", "2021-01"), ("yellow", "2020-01"), ("green", "2019-01")]


def test_three_months_land_whole_with_checksums_and_metadata_and_a_rerun_runs_nothing(gcs, run, mirror_files, mirror):
    tasks = [IngestMonth(service=s, month=month(m)) for s, m in MONTHS]

    first = run(*tasks)

    assert not first.failures
    objects = gcs.objects()
    assert sorted(objects) == sorted(f"lake/{s}/month={m}/{s}_tripdata_{m}.parquet" for s, m in MONTHS)
    for service, m in MONTHS:
        blob = objects[f"lake/{service}/month={m}/{service}_tripdata_{m}.parquet"]
        params = {"service": service, "month": month(m)}
        staged = ToParquet(**params).output().path
        with open(Download(**params).output()["meta"].path) as f:
            source = json.load(f)
        assert blob.crc32c == crc32c_of(staged)  # the object is byte for byte the local file
        served = mirror / "releases" / service / f"{service}_tripdata_{m}.csv.gz"
        assert blob.metadata == {
            "rows": str(data_rows(mirror_files[f"{service}/{service}_tripdata_{m}.csv.gz"])),
            "source_sha256": hashlib.sha256(served.read_bytes()).hexdigest(),
            "source_url": source["url"],
            "source_size": str(served.stat().st_size),
            "source_etag": etag_of(served),
            "source_last_modified": email.utils.formatdate(served.stat().st_mtime, usegmt=True),
        }
        assert blob.size == os.path.getsize(staged)

    again = run(*tasks)

    assert again.started == [] and not again.failures


def test_the_target_reads_lists_checks_in_bulk_and_removes(gcs, run):
    assert not run(*[IngestMonth(service=s, month=month(m)) for s, m in MONTHS]).failures
    fs = GCSFileSystem()
    yellow = [LakeFile(service="yellow", month=month(m)).output().path for m in ("2019-03", "2020-01", "2020-07", "2021-01")]

    requests = []  # every HTTP request the storage client sends (observed, not changed)
    hook = lambda response, *args, **kwargs: requests.append((response.request.method, response.request.path_url))  # noqa: E731
    gcs_client()._http.hooks["response"].append(hook)
    try:
        assert fs.existing(yellow) == {yellow[1], yellow[3]}
    finally:
        gcs_client()._http.hooks["response"].remove(hook)
    assert len(requests) == 1 and requests[0][0] == "GET" and "/o?" in requests[0][1]  # one listing for all four months
    assert sorted(fs.listdir(f"{gcs.lake}/yellow")) == sorted([yellow[1], yellow[3]])
    target = GCSTarget(yellow[3])
    with target.open("r") as f:
        assert f.read() == open(ToParquet(service="yellow", month=month("2021-01")).output().path, "rb").read()
    target.remove()
    assert not target.exists() and GCSTarget(yellow[1]).exists()
    with pytest.raises(ValueError, match="read-only through open"):
        target.open("w")


def test_an_upload_cut_midway_leaves_no_object_and_the_rerun_completes(gcs, run):
    task = IngestMonth(service="yellow", month=month("2021-01"))
    lake_file = LakeFile(service="yellow", month=month("2021-01"))
    proxy = gcs.server["proxy"]
    # Small requests (bucket and object lookups) pass; the upload's data is cut at 64 KiB.
    cuts = proxy.cuts
    proxy.reset(cut_after=64 * 1024)

    cut = run(task)

    proxy.reset(cut_after=None)
    assert proxy.cuts > cuts
    error = cut.failures["LakeFile"]
    assert isinstance(error, CallFailed)
    assert (error.doing, error.url) == ("uploading to", lake_file.output().path)
    assert str(error).startswith(f"uploading to {lake_file.output().path}: ")
    assert gcs.objects() == {}  # never a partial object under the final name
    assert not lake_file.complete()

    rerun = run(task)

    assert not rerun.failures
    assert [t for t in rerun.started if t.startswith("LakeFile")]
    blob = gcs.objects()["lake/yellow/month=2021-01/yellow_tripdata_2021-01.parquet"]
    assert blob.crc32c == crc32c_of(ToParquet(service="yellow", month=month("2021-01")).output().path)


def test_a_big_upload_cut_between_chunks_resumes_where_it_stopped(gcs, tmp_path):
    # The client sends files up to 8 MiB in one request; bigger ones (every real month) go as a
    # resumable upload in chunks. 1 MiB chunks of a 9 MiB file, and every connection cut after
    # 5 MiB: each retry must resume from the server's offset, or it would be cut forever.
    big = tmp_path / "big.parquet"
    big.write_bytes(os.urandom(9 * 1024 * 1024 + 1000))
    proxy = gcs.server["proxy"]
    cuts = proxy.cuts
    proxy.reset(cut_after=5 * 1024 * 1024)
    url = f"{gcs.lake}/yellow/month=2019-01/yellow_tripdata_2019-01.parquet"

    with configured({("gcs", "chunk_size_kib"): "1024", ("gcs", "retry_deadline"): "60"}):
        GCSTarget(url).upload(str(big), {"rows": "1"})

    proxy.reset(cut_after=None)
    assert proxy.cuts - cuts == 2
    blob = gcs.objects()["lake/yellow/month=2019-01/yellow_tripdata_2019-01.parquet"]
    assert blob.size == big.stat().st_size and blob.crc32c == crc32c_of(str(big))
    assert blob.metadata == {"rows": "1"}


def test_a_chunk_size_gcs_does_not_take_is_refused(gcs, run):
    with configured({("gcs", "chunk_size_kib"): "1000"}):
        result = run(IngestMonth(service="green", month=month("2019-01")))

    error = result.failures["LakeFile"]
    assert "chunk_size_kib = 1000: GCS takes chunks of a multiple of 256 KiB" in str(error)
    assert isinstance(error, ChunkSizeRefused) and error.chunk_size_kib == 1000


def test_a_bucket_that_does_not_exist_is_named_in_the_error(gcs, run):
    with configured({("lake", "root"): "gs://no-such-bucket-here/lake"}):
        result = run(IngestMonth(service="green", month=month("2019-01")))

    message = str(result.failures["LakeFile"])
    assert message.startswith(
        "uploading to gs://no-such-bucket-here/lake/green/month=2019-01/green_tripdata_2019-01.parquet: "
        "bucket no-such-bucket-here or the object does not exist (404"
    )


def test_the_duckdb_sink_refuses_a_gcs_lake_clearly(gcs, run):
    """Refused by name before anything runs (the flow's requires): no step starts."""
    with configured({("ingest", "sinks"): "duckdb"}):
        result = run(IngestMonth(service="green", month=month("2019-01")), broken_ok=True)

    assert result.started == []
    [(_, error)] = result.broken
    assert "the duckdb sink reads the lake from local disk, S3 or Azure Blob Storage, and [lake] root is gs://" in str(error)
    assert (error.label, error.sink, error.reads, error.root) == ("green 2019-01", "duckdb", ("local", "s3", "azure"), gcs.lake)
    assert gcs.objects() == {}


def test_postgres_loads_from_the_gcs_lake(gcs, pg, run, mirror_files):
    with configured({("ingest", "sinks"): "postgres"}):
        result = run(IngestMonth(service="fhvhv", month=month("2021-06")))

    assert not result.failures
    assert pg.count("fhvhv_tripdata", "2021-06") == data_rows(mirror_files["fhvhv/fhvhv_tripdata_2021-06.csv.gz"])
    assert list(gcs.objects()) == ["lake/fhvhv/month=2021-06/fhvhv_tripdata_2021-06.parquet"]


def test_every_gcs_call_is_bounded_by_the_gcs_settings(gcs, monkeypatch):
    import servers

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{servers.free_port()}")  # nobody answers
    target = LakeFile(service="green", month=month("2019-01")).output()
    with configured({("gcs", "retry_deadline"): "2", ("gcs", "timeout"): "1"}):
        for call in (target.exists, lambda: target.fs.stat(target.path), lambda: GCSTarget.bulk_exists([target])):
            started = time.monotonic()
            with pytest.raises(GCSError) as error:
                call()
            assert time.monotonic() - started < 10, call  # the client's own default gives up after 120 s
            assert f"gs://{gcs.name}/lake/green/month=2019-01/" in str(error.value)
            assert isinstance(error.value, CallFailed) and error.value.url.startswith(f"gs://{gcs.name}/lake/green/month=2019-01/")


def test_an_upload_garbled_on_the_wire_is_refused_and_removed_so_nothing_counts_as_done(gcs, run):
    assert not run(ToParquet(service="yellow", month=month("2021-01"))).failures
    local = ToParquet(service="yellow", month=month("2021-01")).output().path
    gcs.server["proxy"].reset(cut_after=None, flip_at=100_000)  # a byte of the file's data inverted

    error = run(LakeFile(service="yellow", month=month("2021-01"))).failures["LakeFile"]

    gcs.server["proxy"].reset(cut_after=None)
    url = f"{gcs.lake}/yellow/month=2021-01/yellow_tripdata_2021-01.parquet"
    assert isinstance(error, GarbledUpload) and error.url == url
    assert str(error).startswith(f"uploading to {url}: the object's crc32c ")
    assert f"is not the local file's {crc32c_of(local)} ({local}): the upload was garbled on its way" in str(error)
    assert str(error).endswith("so the object was removed; the next run uploads it again")
    assert gcs.objects() == {} and not LakeFile(service="yellow", month=month("2021-01")).complete()
    assert not run(LakeFile(service="yellow", month=month("2021-01"))).failures
    assert gcs.objects()["lake/yellow/month=2021-01/yellow_tripdata_2021-01.parquet"].crc32c == crc32c_of(local)


def test_a_big_upload_garbled_on_the_wire_is_refused_and_removed(gcs, tmp_path):
    big = tmp_path / "big.parquet"
    big.write_bytes(os.urandom(9 * 1024 * 1024 + 1000))  # resumable, chunk by chunk
    url = f"{gcs.lake}/yellow/month=2019-01/yellow_tripdata_2019-01.parquet"
    gcs.server["proxy"].reset(cut_after=None, flip_at=3 * 1024 * 1024)

    with configured({("gcs", "chunk_size_kib"): "1024"}), pytest.raises(GCSError) as error:
        GCSTarget(url).upload(str(big), {"rows": "1"})

    gcs.server["proxy"].reset(cut_after=None)
    assert str(error.value).startswith(f"uploading to {url}: ") and "garbled" in str(error.value)
    assert isinstance(error.value, GarbledUpload) and error.value.url == url
    assert gcs.objects() == {}
