"""The coverage report over a lake, DuckDB and Postgres where two months were broken by hand."""

from __future__ import annotations

import re
import shutil

import pyarrow.parquet as pq
from hypothesis import given
from hypothesis import strategies as st

from pipeline import IngestMonth, IngestRange, LakeFile, report

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


def test_a_month_nowhere_before_a_month_present_is_a_gap_and_the_columns_line_up(range_source, run, capsys):
    assert not run(*(IngestMonth(service="yellow", month=month(m)) for m in ("2020-01", "2020-03"))).failures
    size = LakeFile(service="yellow", month=month("2020-01")).output().record().source_size

    code = report.main(["--services", "yellow", "--first", "2020-01", "--last", "2020-04"])

    header, *rows, last = capsys.readouterr().out.splitlines()
    cells = {row.split()[1]: row.split() for row in rows}
    assert code == 1
    assert [cells[m][-1] for m in ("2020-01", "2020-02", "2020-03", "2020-04")] == ["ok", "missing", "ok", "nowhere"]
    assert last == "4 month(s): 2 ok, 1 missing, 0 differs, 1 nowhere"
    assert cells["2020-01"][2] == f"{int(size):,}"  # source bytes, formatted as the counts are
    # Every cell filled (a month nowhere too), each column at one place in every row: the names
    # start where their heading starts, the numbers end where theirs ends.
    spans = [[m.span() for m in re.finditer(r"\S+", line.replace("source bytes", "source_bytes"))] for line in (header, *rows)]
    assert {len(s) for s in spans} == {len(spans[0])}
    edges = [(s[0][0], s[1][0], *(end for _, end in s[2:-1]), s[-1][0]) for s in spans]
    assert set(edges) == {edges[0]}


def test_a_range_where_nothing_is_ingested_exits_1_with_one_line_saying_what_to_run(workspace, capsys):
    code = report.main(["--services", "yellow,zones", "--first", "2020-01", "--last", "2020-03"])

    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert len(out) == 1 and out[0].startswith("nothing of yellow,zones 2020-01..2020-03 is ingested anywhere")
    assert out[0].endswith("luigi --module pipeline IngestRange --services yellow,zones --first 2020-01 --last 2020-03")


PLACES = ("staged", "lake", "duckdb", "postgres")


@st.composite
def coverage(draw) -> list[report.Line]:
    """Lines of two services over a range of months, each month in a drawn set of places (with
    one count, or, now and then, two)."""
    lines = []
    for service in ("yellow", "green"):
        for n in range(draw(st.integers(1, 8))):
            line = report.Line(service, f"2020-{n + 1:02d}")
            for place in PLACES:
                if draw(st.booleans()):
                    line.counts[place] = draw(st.sampled_from([100, 100, 100, 99]))
                elif place != "staged":  # a cleaned staging area is left out of the counts
                    line.counts[place] = None
            lines.append(line)
    return lines


@given(coverage())
def test_each_state_and_the_exit_code_follow_the_rule(lines):
    report.mark_gaps(lines)
    code, last = report.verdict(lines, "yellow,green", "2020-01", "2020-08")

    for line in lines:
        present = [n for n in line.counts.values() if n is not None]
        later = [x for x in lines if x.service == line.service and x.month > line.month]
        if not present:  # a gap before a month present somewhere, else not ingested yet
            assert line.state == ("missing" if any(x.counts[p] is not None for x in later for p in x.counts) else "nowhere")
        elif len(present) < len(line.counts):
            assert line.state == "missing"
        else:
            assert line.state == ("ok" if len(set(present)) == 1 else "differs")
    if all(line.state == "nowhere" for line in lines):
        assert code == 1 and last.startswith("nothing of yellow,green 2020-01..2020-08 is ingested anywhere")
    else:
        assert code == (1 if {"missing", "differs"} & {line.state for line in lines} else 0)
        assert last.startswith(f"{len(lines)} month(s): ")
