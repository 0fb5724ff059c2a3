"""The lake on Azure Blob Storage: the official azure-storage-blob SDK against Azurite (Microsoft's
emulator, the npm package), started by the test suite and reached the way users point the SDK at
an account (AZURE_STORAGE_CONNECTION_STRING, here naming the emulator as its BlobEndpoint). Same
tasks as the local, GCS and S3 lakes, switched by `[lake] root` alone."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import time

import pytest
from azure.storage.blob import BlobServiceClient
from hypothesis import given
from hypothesis import strategies as st

from pipeline import IngestMonth, Reingest, catalog, doctor, settings
from pipeline.convert import ToParquet
from pipeline.download import Download
from pipeline.lake import AzureLakeFile, lake_path, lake_target
from pipeline.lake_file import LakeFile
from pipeline.targets.azure import CREDENTIALS, AzureError, AzureTarget, md5_of
from pipeline.warehouses import duckdb_views
from pipeline.warehouses.bigquery import ExposeBigQuery
from pipeline.warehouses.sink import WrongLake

import servers
from conftest import configured
from lakes import MONTHS, lake_key
from mirror import data_rows, month, replaced

# The SDK's log of each request it sends (observed, not changed): what the tests count.
REQUESTS = "azure.core.pipeline.policies.http_logging_policy"


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """Azurite for the session, behind a proxy that can cut and garble uploads; DuckDB's azure
    extension installed from its wheel (offline)."""
    from duckdb_extensions import import_extension

    import_extension("azure")
    with servers.azurite_server(tmp_path_factory.mktemp("azurite")) as server:
        yield server


class Container:
    def __init__(self, name: str, server: dict):
        self.name, self.server, self.proxy = name, server, server["proxy"]
        self.lake = f"az://{name}/lake"
        self.client = BlobServiceClient.from_connection_string(server["connection_string"]).get_container_client(name)

    def blobs(self) -> dict:
        """Every committed blob with its properties (size, Content-MD5, metadata) as the service
        reports them."""
        return {blob.name: blob for blob in self.client.list_blobs(include=["metadata"])}

    def uncommitted(self) -> list:
        """The blocks staged but never committed, by the blobs they were staged for."""
        return [blob.name for blob in self.client.list_blobs(include=["uncommittedblobs"]) if blob.name not in self.blobs()]

    def empty(self) -> None:
        for name in self.blobs():
            self.client.delete_blob(name)


@pytest.fixture
def az(workspace, azurite, request, monkeypatch):
    """The lake in a container of this test's own; credentials only in the SDK's chain (the
    connection string variable), no other AZURE_* variable in the way."""
    for name in [k for k in os.environ if k.startswith("AZURE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite["connection_string"])
    name = ("t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()))[:60].strip("-")
    container = Container(name, azurite)
    container.client.create_container()
    with configured(
        {
            ("lake", "root"): container.lake,
            ("azure", "block_size_mib"): "1",
            ("azure", "attempts"): "2",
            ("azure", "timeout"): "5",
            ("ingest", "sinks"): "none",
        }
    ):
        yield container
    azurite["proxy"].reset(cut_after=None)


def md5(blob) -> bytes:
    return bytes(blob.content_settings.content_md5 or b"")


def staged(service: str, m: str) -> str:
    return ToParquet(service=service, month=month(m)).output().path


def test_three_months_land_whole_with_checksums_and_metadata_and_a_rerun_runs_nothing(az, run, mirror_files, mirror, caplog):
    caplog.set_level(logging.DEBUG)
    tasks = [IngestMonth(service=s, month=month(m)) for s, m in MONTHS]

    first = run(*tasks)

    assert not first.failures
    blobs = az.blobs()
    assert sorted(blobs) == sorted(lake_key(s, m) for s, m in MONTHS)  # exactly one blob a month
    for service, m in MONTHS:
        blob = blobs[lake_key(service, m)]
        params = {"service": service, "month": month(m)}
        with open(Download(**params).output()["meta"].path) as f:
            source = json.load(f)
        assert md5(blob) == md5_of(staged(service, m)) and blob.size == os.path.getsize(staged(service, m))
        served = mirror / "releases" / service / f"{service}_tripdata_{m}.csv.gz"
        assert blob.metadata["rows"] == str(data_rows(mirror_files[f"{service}/{service}_tripdata_{m}.csv.gz"]))
        assert blob.metadata["source_sha256"] == hashlib.sha256(served.read_bytes()).hexdigest()
        assert blob.metadata["source_url"] == source["url"] and blob.metadata["source_size"] == str(served.stat().st_size)
        record = LakeFile(**params).output().record()  # read through the one LakeRecord path
        assert record.metadata() == blob.metadata
    assert az.uncommitted() == []

    again = run(*tasks)

    assert again.started == [] and not again.failures
    assert az.server["key"] not in caplog.text  # the credential is in no log line


def requests_sent(caplog) -> list[str]:
    return [r.getMessage().split("\n")[0] for r in caplog.records if r.name == REQUESTS and "Request URL" in r.getMessage()]


def test_completeness_of_many_months_is_one_listing(az, run, caplog):
    assert not run(*[LakeFile(service=s, month=month(m)) for s, m in MONTHS]).failures
    yellow = [LakeFile(service="yellow", month=month(m)).output() for m in ("2019-03", "2020-01", "2020-07", "2021-01")]
    caplog.clear()
    caplog.set_level(logging.INFO, logger=REQUESTS)

    assert AzureLakeFile.bulk_exists(yellow) == [False, True, False, True]

    sent = requests_sent(caplog)
    assert len(sent) == 1 and f"/{az.name}?restype=" in sent[0], sent  # the container's listing (the values are redacted)


@given(
    picks=st.lists(
        st.tuples(st.sampled_from(["yellow", "green", "fhv", "fhvhv"]), st.integers(2009, 2025), st.integers(1, 12)),
        min_size=1,
        max_size=12,
        unique=True,
    ),
    uploaded=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_generated_months_are_answered_by_one_listing_exactly(az, tmp_path, caplog, picks, uploaded):
    az.empty()
    small = tmp_path / "small.parquet"
    small.write_bytes(b"PAR1" + os.urandom(100) + b"PAR1")
    targets = [AzureLakeFile(lake_path(catalog.SERVICES[s], month(f"{y}-{m:02d}"))) for s, y, m in picks]
    for target, up in zip(targets, uploaded):
        if up:
            target.upload(str(small), {"rows": "1"})
    caplog.clear()
    caplog.set_level(logging.INFO, logger=REQUESTS)

    found = AzureLakeFile.bulk_exists(targets)

    assert found == [bool(up) for up in uploaded[: len(targets)]]
    assert len(requests_sent(caplog)) == 1


def test_the_duckdb_view_over_the_azure_lake_counts_the_source_rows(az, run, workspace, mirror_files):
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
    assert f"'{az.lake}/green/month=*/*.parquet'" in views["green_tripdata"]
    warehouse = (workspace / "warehouse.duckdb").read_bytes()
    assert az.server["key"].encode() not in warehouse and all(az.server["key"] not in sql for sql in views.values())
    assert not run(IngestMonth(service="green", month=month("2019-01"))).started  # the markers are read over Azure too


def test_postgres_loads_from_the_azure_lake(az, pg, run, mirror_files):
    with configured({("ingest", "sinks"): "postgres"}):
        result = run(IngestMonth(service="fhvhv", month=month("2021-06")))

    assert not result.failures
    assert pg.count("fhvhv_tripdata", "2021-06") == data_rows(mirror_files["fhvhv/fhvhv_tripdata_2021-06.csv.gz"])
    assert list(az.blobs()) == [lake_key("fhvhv", "2021-06")]


def test_reingest_replaces_the_blob_whole(az, run, mirror, mirror_files):
    assert not run(IngestMonth(service="green", month=month("2019-01"))).failures
    csv = mirror_files["green/green_tripdata_2019-01.csv.gz"]
    shorter = gzip.compress(b"".join(csv.splitlines(keepends=True)[:11]))  # header + 10 rows

    with replaced(mirror / "releases" / "green" / "green_tripdata_2019-01.csv.gz", shorter):
        result = run(Reingest(services="green", first=month("2019-01"), last=month("2019-01")))

    assert not result.failures
    blobs = az.blobs()
    assert list(blobs) == [lake_key("green", "2019-01")]
    blob = blobs[lake_key("green", "2019-01")]
    assert blob.metadata["rows"] == "10" and blob.metadata["source_sha256"] == hashlib.sha256(shorter).hexdigest()
    assert md5(blob) == md5_of(staged("green", "2019-01"))


def test_an_upload_cut_midway_leaves_nothing_and_the_rerun_uploads_it(az, run):
    task = IngestMonth(service="yellow", month=month("2021-01"))
    lake_file = LakeFile(service="yellow", month=month("2021-01"))
    cuts = az.proxy.cuts
    az.proxy.reset(cut_after=64 * 1024)  # small requests pass; the upload's data is cut at 64 KiB

    cut = run(task)

    az.proxy.reset(cut_after=None)
    assert az.proxy.cuts > cuts
    error = cut.failures["LakeFile"]
    assert isinstance(error, AzureError) and str(error).startswith(f"uploading to {lake_file.output().path}: ")
    assert az.blobs() == {}  # nothing under the name: no block list was committed
    assert not lake_file.complete()

    rerun = run(task)

    assert not rerun.failures and [t for t in rerun.started if t.startswith("LakeFile")]
    assert md5(az.blobs()[lake_key("yellow", "2021-01")]) == md5_of(staged("yellow", "2021-01"))


@given(cut=st.integers(min_value=1, max_value=2600 * 1024))
def test_generated_cut_points_leave_the_blob_whole_or_absent(az, tmp_path, cut):
    az.empty()
    big = tmp_path / "big.parquet"
    if not big.exists():
        big.write_bytes(os.urandom(2 * 1024 * 1024 + 300 * 1024))  # three blocks of 1 MiB
    url = f"{az.lake}/green/month=2019-01/green_tripdata_2019-01.parquet"
    az.proxy.reset(cut_after=cut)
    try:
        with configured({("azure", "attempts"): "1"}):  # a cut block not tried again: the cut is where it fails
            AzureTarget(url).upload(str(big), {"rows": "1"})
    except AzureError as e:
        assert str(e).startswith(f"uploading to {url}: ")
    finally:
        az.proxy.reset(cut_after=None)
    blobs = az.blobs()
    assert blobs == {} or (md5(blobs[lake_key("green", "2019-01")]), blobs[lake_key("green", "2019-01")].size) == (
        md5_of(str(big)),
        big.stat().st_size,
    )


def test_an_upload_garbled_on_the_wire_is_refused_so_nothing_counts_as_done(az, run):
    assert not run(ToParquet(service="yellow", month=month("2021-01"))).failures
    az.proxy.reset(cut_after=None, flip_at=100_000)  # a byte of the file's data inverted

    error = run(LakeFile(service="yellow", month=month("2021-01"))).failures["LakeFile"]

    az.proxy.reset(cut_after=None)
    url = f"{az.lake}/yellow/month=2021-01/yellow_tripdata_2021-01.parquet"
    assert isinstance(error, AzureError) and str(error) == (
        f"uploading to {url}: a block was garbled on its way: the service's MD5 of it is not the one sent (Md5Mismatch); "
        "nothing was committed"
    )
    assert az.blobs() == {} and not LakeFile(service="yellow", month=month("2021-01")).complete()
    assert not run(LakeFile(service="yellow", month=month("2021-01"))).failures
    assert md5(az.blobs()[lake_key("yellow", "2021-01")]) == md5_of(staged("yellow", "2021-01"))


def test_a_blob_that_is_not_the_file_after_the_commit_is_removed(az, tmp_path):
    """The check after the commit: what the service reports of our commit (its ETag ours) is
    compared with the file and its record, and a blob that differs is removed (here the service
    reports another MD5 for it, as for a commit garbled on its way)."""
    ours = tmp_path / "ours.parquet"
    ours.write_bytes(os.urandom(1000))
    url = f"{az.lake}/green/month=2019-01/green_tripdata_2019-01.parquet"
    target = AzureTarget(url)
    properties = target.fs.properties

    def garbled(u):
        seen = properties(u)
        seen.content_settings.content_md5 = bytearray(16)
        return seen

    target.fs.properties = garbled  # type: ignore[method-assign]
    try:
        with pytest.raises(AzureError) as error:
            target.upload(str(ours), {"rows": "1"})
    finally:
        del target.fs.properties
    assert str(error.value).startswith(f"uploading to {url}: the blob (1000 bytes, MD5 00000000")
    assert str(error.value).endswith("garbled on its way, so the blob was removed; the next run uploads it again")
    assert az.blobs() == {}


def test_another_writers_blob_committed_before_our_check_is_left_as_it_is(az, tmp_path):
    """Two hosts upload one month (a host cut off, its step handed to another): when the other's
    commit lands between ours and our check, our check sees a blob that is not ours (its ETag) and
    leaves it (the other writer checks its own), failing our upload by name; never a removal of
    another writer's good blob."""
    ours, theirs = tmp_path / "ours.parquet", tmp_path / "theirs.parquet"
    ours.write_bytes(os.urandom(1000))
    theirs.write_bytes(os.urandom(1200))
    url = f"{az.lake}/green/month=2019-01/green_tripdata_2019-01.parquet"
    target = AzureTarget(url)
    other = az.client.get_blob_client(lake_key("green", "2019-01"))
    properties = target.fs.properties

    def another_writer_meanwhile(u):  # the other writer's commit lands between ours and the check
        other.upload_blob(theirs.read_bytes(), overwrite=True, metadata={"rows": "2"})
        return properties(u)

    target.fs.properties = another_writer_meanwhile  # type: ignore[method-assign]
    try:
        with pytest.raises(AzureError) as error:
            target.upload(str(ours), {"rows": "1"})
    finally:
        del target.fs.properties
    assert str(error.value) == f"uploading to {url}: another writer replaced the blob before it was checked, so it was left; run again"
    assert md5(az.blobs()[lake_key("green", "2019-01")]) == md5_of(str(theirs))


def test_a_container_that_does_not_exist_is_one_clear_line(az, run):
    with configured({("lake", "root"): "az://no-such-container/lake"}):
        result = run(IngestMonth(service="green", month=month("2019-01")))

    assert str(result.failures["LakeFile"]) == (
        "uploading to az://no-such-container/lake/green/month=2019-01/green_tripdata_2019-01.parquet: "
        "container no-such-container does not exist (ContainerNotFound)"
    )


def test_wrong_credentials_fail_at_once_in_one_line_that_holds_no_credential(az, azurite, run, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "V3Jvbmcta2V5LTRkMWU5Yg=="  # a key of the right form, not the account's
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite["connection_string"].replace(azurite["key"], wrong))
    started = time.monotonic()

    result = run(IngestMonth(service="green", month=month("2019-01")), broken_ok=True)

    assert time.monotonic() - started < 10  # refused, not retried
    errors = [error for _, error in result.broken + result.every_failure if isinstance(error, AzureError)]
    assert errors, (result.broken, result.every_failure)
    assert str(errors[0]) == (
        f"checking {az.lake}/green/month=2019-01/green_tripdata_2019-01.parquet: access denied to container {az.name} "
        f"(AuthorizationFailure); check {CREDENTIALS} and their permissions"
    )
    assert wrong not in caplog.text and all(wrong not in str(e) for e in errors)
    assert az.blobs() == {}


def test_the_doctor_writes_reads_and_deletes_a_blob_in_the_lake(az):
    assert doctor.check_lake(az.lake) == doctor.passed("lake", f"{az.lake}: a blob written, read back and deleted")
    assert az.blobs() == {}
    check = doctor.check_lake("az://no-such-container/lake")
    assert check == doctor.failed(
        "lake",
        "cannot write, read and delete a blob under az://no-such-container/lake: container no-such-container does not exist "
        "(ContainerNotFound)",
        f"check that the container exists and that {CREDENTIALS} may write, read and delete blobs in it",
    )


def test_a_bigquery_sink_with_an_azure_lake_is_refused_by_name_before_it_loads(az):
    with pytest.raises(WrongLake) as error:
        ExposeBigQuery(service="green", month=month("2019-01")).run()

    assert (error.value.reads, error.value.root) == ("gcs", az.lake)


def test_azure_lake_roots_are_accepted_and_dispatched():
    assert settings.lake_root_problem("az://container/prefix") is None
    assert settings.lake_root_problem("az://container") is None
    assert settings.lake_root_problem("az:///prefix") == "a az:// lake needs its container: az://container/prefix"
    assert type(lake_target("az://container/lake/x.parquet")) is AzureLakeFile
