"""Replica lakes (issue 29 #3): `[lake] replicas` lists more lakes, each holding a copy of every
file of the lake, each copy a step of its own (ReplicaFile) with its own completeness and record.
The invariant: after a run every replica holds each ingested month once, with the lake file's
record, and a run copies exactly the (month, replica) pairs that lack it: nothing else runs."""

from __future__ import annotations

import gzip
import itertools
import os
import shutil
import tempfile
from pathlib import Path

import luigi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import IngestRange, Reingest, catalog, report
from pipeline.lake import lake_path, lake_target

import servers
from conftest import bucket_name_for, configured, own_workspace
from mirror import RANGE_MONTHS, data_rows, month

SERVICES = ("yellow", "green")
PAIRS = [(service, m) for service, m in itertools.product(SERVICES, RANGE_MONTHS)]


def backfill() -> IngestRange:
    return IngestRange(services=",".join(SERVICES), first=month(RANGE_MONTHS[0]), last=month(RANGE_MONTHS[-1]))


def path_in(root: str, service: str, m: str) -> str:
    return lake_path(catalog.SERVICES[service], month(m), root)


def record(root: str, service: str, m: str):
    target = lake_target(path_in(root, service, m), root)
    return target.record() if target.exists() else None


def copies_started(started: list[str]) -> list[str]:
    return [task for task in started if task.startswith("ReplicaFile")]


def steps_started(started: list[str]) -> list[str]:
    """The steps that did work (not the flows that only wire them)."""
    return [task for task in started if not task.startswith(("Ingest", "PublishedMonths"))]


@pytest.fixture(scope="module")
def lake(tmp_path_factory, http_server):
    """A local lake holding every month of PAIRS (made once for the module): its root."""
    work = tmp_path_factory.mktemp("lake")
    with own_workspace(work, f"{http_server}/range"):
        assert luigi.build([backfill()], local_scheduler=True, log_level="WARNING")
    return work


@settings(max_examples=10)
@given(held=st.lists(st.sets(st.sampled_from(PAIRS)), min_size=1, max_size=3))
def test_a_run_copies_to_each_replica_exactly_the_months_it_lacks(lake, http_server, run, held):
    with tempfile.TemporaryDirectory() as tmp:
        replicas = [str(Path(tmp) / f"replica{i}") for i in range(len(held))]
        root = str(lake / "lake")
        # Each replica already holds some months (a replica that took part before).
        for replica, pairs in zip(replicas, held):
            for service, m in pairs:
                os.makedirs(os.path.dirname(path_in(replica, service, m)), exist_ok=True)
                shutil.copy2(path_in(root, service, m), path_in(replica, service, m))
        before = {(r, p): os.stat(path_in(r, *p)).st_mtime_ns for r, pairs in zip(replicas, held) for p in pairs}
        with configured(
            {
                ("source", "base_url"): f"{http_server}/range",
                ("lake", "root"): root,
                ("lake", "replicas"): ",".join(replicas),
                ("ingest", "staging"): str(lake / "staging"),
                ("ingest", "sinks"): "none",
            }
        ):
            result = run(backfill())
            assert not result.every_failure
            lacking = sum(len(PAIRS) - len(pairs) for pairs in held)
            assert len(copies_started(result.started)) == lacking
            assert steps_started(result.started) == copies_started(result.started)  # nothing but the copies ran
            for replica in replicas:
                for service, m in PAIRS:
                    assert record(replica, service, m) == record(root, service, m), (replica, service, m)
            assert {k: os.stat(path_in(k[0], *k[1])).st_mtime_ns for k in before} == before  # held copies untouched
            assert not steps_started(run(backfill()).started)  # a second run runs nothing


@pytest.fixture
def own_mirror(tmp_path, mirror, workspace):
    """The range mirror, copied for this test alone (it republishes a month), served over HTTP."""
    shutil.copytree(mirror / "range", tmp_path / "mirror" / "range")
    with servers.http_mirror(tmp_path / "mirror") as url:
        with configured({("source", "base_url"): f"{url}/range", ("ingest", "sinks"): "none"}):
            yield tmp_path / "mirror" / "range"


def test_an_s3_replica_added_later_backfills_follows_a_reingest_and_shows_in_the_report(
    own_mirror, workspace, aws, request, run, mirror_files, capsys
):
    root, folder = str(workspace / "lake"), str(workspace / "replica")
    assert not run(backfill()).every_failure
    bucket = bucket_name_for(request)
    aws.create_bucket(Bucket=bucket)
    replicas = [folder, f"s3://{bucket}/copy"]
    with configured({("lake", "replicas"): ",".join(replicas)}):
        # Added later: every month is copied to both, nothing else runs.
        result = run(backfill())
        assert len(copies_started(result.started)) == 2 * len(PAIRS) == len(steps_started(result.started))
        keys = [o["Key"] for o in aws.list_objects_v2(Bucket=bucket)["Contents"]]
        assert sorted(keys) == sorted(f"copy/{s}/month={m}/{s}_tripdata_{m}.parquet" for s, m in PAIRS)
        for replica in replicas:
            assert all(record(replica, s, m) == record(root, s, m) for s, m in PAIRS)

        # The report shows each lake; a copy lost is a month missing there, and the next run copies it alone.
        args = ["--services", ",".join(SERVICES), "--first", RANGE_MONTHS[0], "--last", RANGE_MONTHS[-1]]
        assert report.main(args) == 0
        shown = capsys.readouterr().out
        assert f"replica 1: {folder}\nreplica 2: s3://{bucket}/copy\n" in shown
        assert "replica 1  replica 2" in shown and f"{len(PAIRS)} month(s): {len(PAIRS)} ok" in shown
        aws.delete_object(Bucket=bucket, Key="copy/green/month=2020-03/green_tripdata_2020-03.parquet")
        assert report.main(args) == 1
        assert "1 missing" in capsys.readouterr().out
        again = steps_started(run(backfill()).started)
        assert len(again) == 1 and again[0].startswith("ReplicaFile_") and "_2020_03_" in again[0], again
        assert record(replicas[1], "green", "2020-03") == record(root, "green", "2020-03")
        assert report.main(args) == 0

        # A month republished and reingested: the lake and both replicas hold the new file.
        republished = gzip.compress(mirror_files["yellow/yellow_tripdata_2020-07.csv.gz"])
        (own_mirror / "yellow" / "yellow_tripdata_2020-02.csv.gz").write_bytes(republished)
        old = record(root, "yellow", "2020-02")
        assert not run(Reingest(services="yellow", first=month("2020-02"), last=month("2020-02"))).every_failure
        new = record(root, "yellow", "2020-02")
        assert new.source_sha256 != old.source_sha256 and new.rows == data_rows(mirror_files["yellow/yellow_tripdata_2020-07.csv.gz"])
        assert [record(replica, "yellow", "2020-02") for replica in replicas] == [new, new]
