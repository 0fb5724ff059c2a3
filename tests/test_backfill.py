"""Backfills: IngestRange over consecutive months of several services, decided in bulk, ending
cleanly where the source's months end."""

from __future__ import annotations

import datetime
import email.utils
import gzip
import logging
import os
import re

import duckdb
import pyarrow.parquet as pq
import pytest

from pipeline import IngestMonth, IngestRange, IngestZones, Reingest
from pipeline.backfill import PublishedMonths
from pipeline.lake_file import LakeFile
from pipeline.warehouses import duckdb_views

from conftest import configured, set_source
from mirror import RANGE_MONTHS, data_rows, month, replaced
from servers import MirrorHandler, etag_of


def counts(path) -> dict[tuple[str, str], int]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {(s, m): n for s, m, n in con.execute("SELECT service, month, rows FROM _ingested").fetchall()}


def test_a_backfill_ingests_every_published_month_and_ends_where_the_source_ends(range_source, run, mirror_files, caplog):
    caplog.set_level(logging.WARNING, logger="pipeline.backfill")

    result = run(IngestRange(services="yellow,green,zones", first=month("2020-01"), last=month("2020-06")))

    assert not result.failures
    yellow_rows = data_rows(mirror_files["yellow/yellow_tripdata_2020-01.csv.gz"])
    green_rows = data_rows(mirror_files["green/green_tripdata_2019-01.csv.gz"])
    assert counts(range_source / "warehouse.duckdb") == {
        **{("yellow", m): yellow_rows for m in RANGE_MONTHS},
        **{("green", m): green_rows for m in RANGE_MONTHS},
        ("zones", ""): 265,
    }
    tail = sorted(r.getMessage() for r in caplog.records)
    assert tail == [
        f"{s} 2020-05..2020-06: not published at the source yet (2 month(s)); the range ends before it" for s in ("green", "yellow")
    ]


def test_the_same_backfill_again_decides_in_bulk_and_runs_nothing(range_source, run, monkeypatch):
    task = IngestRange(services="yellow,green", first=month("2020-01"), last=month("2020-04"))
    assert not run(task).failures
    queries = []
    original = duckdb_views._exposed
    monkeypatch.setattr(duckdb_views, "_exposed", lambda path: queries.append(path) or original(path))
    MirrorHandler.hits.clear()

    again = run(IngestRange(services="yellow,green", first=month("2020-01"), last=month("2020-04")))

    assert again.started == [] and not again.failures
    assert len(queries) == 2  # one marker query per service for its 4 months, not one per month
    assert MirrorHandler.hits == {}  # nothing missing, so the source is not even asked


def test_a_month_missing_in_the_middle_is_an_error_not_the_end(range_source, run, http_server, mirror):
    with replaced(mirror / "range" / "green" / "green_tripdata_2020-02.csv.gz", None):
        result = run(IngestRange(services="green", first=month("2020-01"), last=month("2020-04")))

    assert "green 2020-02 (" in str(result.failures["Download"]) and "not published (HTTP 404)" in str(result.failures["Download"])
    assert [IngestMonth(service="green", month=month(m)).complete() for m in RANGE_MONTHS] == [True, False, True, True]


def test_months_missing_before_a_month_already_done_are_a_gap_not_the_end(range_source, run, mirror):
    assert not run(IngestMonth(service="yellow", month=month("2020-04"))).failures
    gap = [mirror / "range" / "yellow" / f"yellow_tripdata_2020-0{m}.csv.gz" for m in (2, 3)]
    with replaced(gap[0], None), replaced(gap[1], None):
        result = run(IngestRange(services="yellow", first=month("2020-01"), last=month("2020-04")))

    assert "not published (HTTP 404)" in str(result.failures["Download"])
    assert [IngestMonth(service="yellow", month=month(m)).complete() for m in RANGE_MONTHS] == [True, False, False, True]


def test_a_range_far_into_the_future_asks_nothing_of_months_not_over_and_each_month_after_the_source_once(range_source, run, caplog):
    """A source may skip a month, so every month after the source's last that is over is asked (once,
    body-less, several at a time); a month not over yet is never asked: 2099 costs what today costs."""
    caplog.set_level(logging.WARNING, logger="pipeline.backfill")
    MirrorHandler.hits.clear()

    result = run(IngestRange(services="yellow", first=month("2020-01"), last=month("2099-12")))

    assert not result.failures
    assert [IngestMonth(service="yellow", month=month(m)).complete() for m in RANGE_MONTHS] == [True] * 4
    asked = {
        m[1]: n
        for path, n in MirrorHandler.hits.items()
        if (m := re.fullmatch(r"/range/yellow/yellow_tripdata_(\d{4}-\d{2})\.csv\.gz", path)) and m[1] > "2020-04"
    }
    this_month = datetime.date.today().strftime("%Y-%m")
    over = [f"{y}-{m:02d}" for y in range(2020, 2100) for m in range(1, 13) if "2020-04" < f"{y}-{m:02d}" < this_month]
    assert asked == dict.fromkeys(over, 1)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith("yellow 2020-05..2099-12: not published at the source yet (956 month(s))")


def test_the_range_is_exactly_first_to_last_however_far_back(range_source):
    # The TLC publishes both services from 2015-01 at the latest, so nothing clamps the start.
    with configured({("source", "kind"): "tlc"}):
        task = IngestRange(services="yellow,fhv", first=month("2015-01"), last=month("2020-12"))

        ranges = list(task.requires())

    assert [r.of_params["service"] for r in ranges] == ["yellow", "fhv"]
    for r in ranges:
        assert isinstance(r, PublishedMonths)
        now = datetime.datetime.now()
        covered = r.finite_datetimes(
            max(r.moving_start(now), datetime.datetime(2015, 1, 1)), min(r.moving_stop(now), datetime.datetime(2021, 1, 1))
        )
        assert len(covered) == 72 and r.task_limit == 72  # no 13-month or 50-task clamp
        assert covered[0] == datetime.datetime(2015, 1, 1) and covered[-1] == datetime.datetime(2020, 12, 1)


def test_bad_ranges_are_refused_clearly():
    with pytest.raises(ValueError, match="--first 2020-05 is after --last 2020-01"):
        list(IngestRange(services="yellow", first=month("2020-05"), last=month("2020-01")).requires())
    with pytest.raises(ValueError, match="unknown taxis; known: yellow, green, fhv, fhvhv, zones"):
        list(IngestRange(services="yellow,taxis", first=month("2020-01"), last=month("2020-01")).requires())


def test_reingest_replaces_exactly_the_months_asked_for_in_every_sink(range_source, pg, run, mirror, mirror_files):
    with configured({("ingest", "sinks"): "duckdb,postgres"}):
        assert not run(IngestRange(services="yellow", first=month("2020-01"), last=month("2020-02"))).failures
        before = dict(pg.query(f'SELECT month, marked_at FROM "{pg.schema}"._ingested'))
        # The source re-publishes February with fewer rows (the TLC does re-issue files).
        csv = mirror_files["yellow/yellow_tripdata_2020-01.csv.gz"]
        shorter = b"".join(csv.splitlines(keepends=True)[:101])  # header + 100 rows
        with replaced(mirror / "range" / "yellow" / "yellow_tripdata_2020-02.csv.gz", gzip.compress(shorter)):
            result = run(Reingest(services="yellow", first=month("2020-02"), last=month("2020-02")))

    assert not result.failures
    full = data_rows(csv)
    assert pg.count("yellow_tripdata", "2020-02") == 100 and pg.count("yellow_tripdata", "2020-01") == full
    assert counts(range_source / "warehouse.duckdb") == {("yellow", "2020-01"): full, ("yellow", "2020-02"): 100}
    with duckdb.connect(str(range_source / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT month, count(*) FROM yellow_tripdata GROUP BY 1 ORDER BY 1").fetchall() == [
            ("2020-01", full),
            ("2020-02", 100),
        ]
    after = dict(pg.query(f'SELECT month, marked_at FROM "{pg.schema}"._ingested'))
    assert after["2020-01"] == before["2020-01"] and after["2020-02"] > before["2020-02"]
    started = [t.split("_")[0] for t in result.started]
    assert sorted(set(started)) == ["Download", "ExposeDuckDB", "IngestMonth", "LakeFile", "LoadPostgres", "Reingest", "ToParquet"]
    assert started.count("Download") == 1  # February only


def test_reingest_with_the_source_gone_keeps_the_old_month_in_every_sink(range_source, pg, run, mirror, http_server):
    with configured({("ingest", "sinks"): "duckdb,postgres"}):
        assert not run(IngestMonth(service="yellow", month=month("2020-02"))).failures
        lake_file = LakeFile(service="yellow", month=month("2020-02")).output().path
        before = (
            pg.count("yellow_tripdata", "2020-02"),
            pg.markers(),
            counts(range_source / "warehouse.duckdb"),
            open(lake_file, "rb").read(),
        )
        with replaced(mirror / "range" / "yellow" / "yellow_tripdata_2020-02.csv.gz", None):  # the source answers 404
            result = run(Reingest(services="yellow", first=month("2020-02"), last=month("2020-02")))

        assert str(result.failures["Download"]) == (
            f"yellow 2020-02 ({http_server}/range/yellow/yellow_tripdata_2020-02.csv.gz): not published (HTTP 404)"
        )
        assert (
            pg.count("yellow_tripdata", "2020-02"),
            pg.markers(),
            counts(range_source / "warehouse.duckdb"),
            open(lake_file, "rb").read(),
        ) == before
        with duckdb.connect(str(range_source / "warehouse.duckdb"), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM yellow_tripdata").fetchone()[0] == before[0]
        assert IngestMonth(service="yellow", month=month("2020-02")).complete()


@pytest.mark.parametrize("via", ["http", "file"])
def test_republished_months_are_reported_without_downloads_and_reingested_on_request(range_source, run, mirror, mirror_files, via):
    from pipeline import Republished

    if via == "file":  # a file:// mirror: the file's own size and modification time tell
        set_source((mirror / "range").as_uri())
    assert not run(IngestRange(services="yellow,zones", first=month("2020-01"), last=month("2020-03"))).failures
    republished = mirror / "range" / "yellow" / "yellow_tripdata_2020-02.csv.gz"
    original, then, etag = republished.read_bytes(), email.utils.formatdate(republished.stat().st_mtime, usegmt=True), etag_of(republished)
    csv = mirror_files["yellow/yellow_tripdata_2020-01.csv.gz"]
    with replaced(republished, gzip.compress(b"".join(csv.splitlines(keepends=True)[:101]))):  # header + 100 rows
        os.utime(republished, (1700000000, 1700000000))
        MirrorHandler.hits.clear()
        check = Republished(services="yellow,zones", first=month("2020-01"), last=month("2020-04"))
        result = run(check)
        assert not result.failures
        assert [t.split("_")[0] for t in result.started] == ["Republished"]  # no download, no reingest
        changed_etag = f"etag {etag} -> {etag_of(republished)}, " if via == "http" else ""  # a file has none
        assert open(check.output().path).read() == (
            f"yellow 2020-02: republished: size {len(original)} -> {republished.stat().st_size}, "
            f"{changed_etag}last_modified {then} -> Tue, 14 Nov 2023 22:13:20 GMT\n"
        )
        if via == "http":
            assert sum(MirrorHandler.hits.values()) == 4  # one body-less request per month in the lake, zones included

        fixed = run(Republished(services="yellow,zones", first=month("2020-01"), last=month("2020-04"), reingest=True))

    assert not fixed.failures
    assert [t.split("_")[0] for t in fixed.started].count("Download") == 1  # February only
    full = data_rows(csv)
    assert counts(range_source / "warehouse.duckdb") == {
        ("yellow", "2020-01"): full,
        ("yellow", "2020-02"): 100,
        ("yellow", "2020-03"): full,
        ("zones", ""): 265,
    }


def test_a_range_over_any_single_step_decides_in_bulk_too(range_source, run):
    assert not run(IngestRange(services="green", first=month("2020-01"), last=month("2020-02"))).failures
    lake = PublishedMonths(
        of=LakeFile,
        of_params={"service": "green"},
        param_name="month",
        start=month("2020-01"),
        stop=month("2020-05"),
        months_back=1000,
        task_limit=10,
    )

    missing = lake.requires()

    assert [t.month for t in missing] == [month("2020-03"), month("2020-04")]
    assert LakeFile.bulk_complete.__func__(lambda **kw: LakeFile(service="green", **kw), [month(m) for m in RANGE_MONTHS]) == [
        month("2020-01"),
        month("2020-02"),
    ]


def test_reingest_of_the_zones_runs_and_replaces_their_lake_file(range_source, run, mirror):
    assert not run(IngestZones()).failures
    lake_file = LakeFile(service="zones").output().path
    # The source re-publishes the lookup with a zone renamed (the TLC did so in 2024).
    published = mirror / "range" / "misc" / "taxi_zone_lookup.csv"
    original = published.read_bytes()
    renamed = original.replace(b'265,"Unknown","NA"', b'265,"N/A","Outside of NYC"')
    assert renamed != original
    with replaced(published, renamed):
        result = run(Reingest(services="zones", first=month("2020-01"), last=month("2020-01")))

    assert not result.failures
    assert [t.split("_")[0] for t in result.started].count("Download") == 1
    zones = pq.read_table(lake_file).to_pylist()
    assert len(zones) == 265 and zones[-1] == {"LocationID": 265, "Borough": "N/A", "Zone": "Outside of NYC", "service_zone": "N/A"}


def test_a_range_from_before_a_service_began_starts_where_the_source_begins_it(workspace, run, tlc, tmp_path, caplog):
    """The whole history in one command: green's files begin in 2014-01 at the TLC, fhvhv's in
    2019-02. Asking from 2009-01 is not a gap of five years for green, and not an error."""
    mirror = tmp_path / "tlc"
    (mirror / "trip-data").mkdir(parents=True)
    for m in ("2014-01", "2014-02"):
        (mirror / "trip-data" / f"green_tripdata_{m}.parquet").write_bytes(tlc["trip-data/green_tripdata_2024-01.parquet"])
    (mirror / "trip-data" / "fhvhv_tripdata_2019-02.parquet").write_bytes(tlc["trip-data/fhvhv_tripdata_2021-06.parquet"])

    with configured({("source", "base_url"): mirror.as_uri()}), caplog.at_level(logging.INFO, logger="pipeline.backfill"):
        green = run(IngestRange(services="green", first=month("2009-01"), last=month("2014-02")))
        fhvhv = run(IngestRange(services="fhvhv", first=month("2018-06"), last=month("2019-02")))

    assert not green.failures and not fhvhv.failures
    assert [t.split("_")[0] for t in green.started].count("Download") == 2  # 2014-01 and 2014-02, nothing asked before
    assert (
        IngestMonth(service="green", month=month("2014-01")).complete() and IngestMonth(service="fhvhv", month=month("2019-02")).complete()
    )
    assert "green: the tlc source publishes it from 2014-01; 2009-01..2013-12 are left out" in caplog.text
    assert "fhvhv: the tlc source publishes it from 2019-02; 2018-06..2019-01 are left out" in caplog.text
