"""The coverage report over a lake, DuckDB and Postgres where two months were broken by hand."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq

from pipeline import IngestRange, LakeFile, report

from conftest import configured
from mirror import data_rows, month


def test_a_month_deleted_from_postgres_and_a_lake_file_replaced_with_fewer_rows_are_flagged(
    range_source, pg, run, mirror_files, tmp_path, capsys
):
    with configured({("ingest", "sinks"): "duckdb,postgres"}):
        assert not run(IngestRange(services="yellow,zones", first=month("2020-01"), last=month("2020-03"))).failures
        pg.query(f"DELETE FROM \"{pg.schema}\".yellow_tripdata WHERE source_month = '2020-01-01'; SELECT 1")  # by hand
        lake_file = LakeFile(service="yellow", month=month("2020-02")).output().path
        table = pq.read_table(lake_file)
        pq.write_table(table.slice(0, 100), tmp_path / "fewer.parquet")
        shutil.copyfile(tmp_path / "fewer.parquet", lake_file)  # replaced by hand
        png = tmp_path / "coverage.png"

        code = report.main(["--services", "yellow,zones", "--first", "2020-01", "--last", "2020-03", "--verify", "--png", str(png)])

    out = capsys.readouterr().out
    rows = data_rows(mirror_files["yellow/yellow_tripdata_2020-01.csv.gz"])
    lines = {tuple(line.split()[:2]): line.split() for line in out.splitlines()[1:] if line.split()[:1] in (["yellow"], ["zones"])}
    assert code == 1
    assert lines[("yellow", "2020-01")][-1] == "missing" and lines[("yellow", "2020-01")][-2] == "-"  # Postgres counted
    assert lines[("yellow", "2020-02")][-1] == "differs" and "100" in lines[("yellow", "2020-02")]
    assert lines[("yellow", "2020-03")][-1] == "ok" and lines[("yellow", "2020-03")].count(f"{rows:,}") == 6
    assert lines[("zones", "-")][-1] == "ok"
    assert "4 month(s): 2 ok, 1 missing, 1 differs, 0 nowhere" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_range_all_done_everywhere_exits_0(range_source, run):
    assert not run(IngestRange(services="yellow", first=month("2020-01"), last=month("2020-01"))).failures

    assert report.main(["--services", "yellow", "--first", "2020-01", "--last", "2020-01", "--verify"]) == 0
