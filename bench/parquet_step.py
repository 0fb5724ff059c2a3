"""Benchmark: download-from-file + Parquet steps on a full-size month, against references.

Builds a month of yellow trips from the real rows in tests/data (repeated to the requested row
count, CRLF like the published files, gzip level 6), then runs, each in its own process so peak
RSS is its own:

  pipeline   the real Download and ToParquet tasks (luigi, local scheduler, file:// mirror)
  reference  pyarrow.csv.read_csv of the whole file, then pyarrow.parquet.write_table
             (what the course's flows do)
  duckdb     DuckDB's COPY (SELECT * FROM read_csv(...)) TO parquet

and prints wall time, rows/s and peak RSS, with each reference's figures as a ratio to ours, and
the time of each pipeline step (Download also gunzips the whole file once to prove it whole, and
hashes it: work the references do not do).

    python bench/parquet_step.py                 # 1,369,765 rows, like yellow 2021-01
    python bench/parquet_step.py --rows 7667792  # like yellow 2019-01

With --source tlc the month is a Parquet file as the TLC publishes it (DOUBLE passenger_count and
so on, 1Mi-row row groups), and the references are pyarrow.parquet.read_table + cast to the
catalog schema + write_table, and DuckDB's COPY of read_parquet:

    python bench/parquet_step.py --source tlc --rows 7667792

With --service fhvhv the TLC month is shaped like fhvhv's (24 columns; its biggest months hold
about 20M rows), to show that memory stays flat at that size:

    python bench/parquet_step.py --source tlc --service fhvhv --rows 20000000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import CACHE, DEFAULT_ROWS, MONTH, build_fhvhv_month, build_month, build_tlc_month, measure, report, run_child


def run_pipeline(src: Path, work: Path) -> tuple[int, dict]:
    import luigi
    import luigi.configuration

    from pipeline import catalog
    from pipeline.convert import ToParquet
    from pipeline.download import Download
    from pipeline.lake import parquet_record

    kind = "tlc" if src.suffix == ".parquet" else "releases"
    service = service_of(src)
    month = luigi.date_interval.Month.parse(MONTH).date_a
    published = work / "mirror" / catalog.SOURCES[kind].path(catalog.SERVICES[service], month)
    published.parent.mkdir(parents=True)
    published.symlink_to(src)
    config = luigi.configuration.get_config()
    config.set("source", "kind", kind)
    config.set("source", "base_url", (work / "mirror").as_uri())
    config.set("ingest", "staging", str(work / "staging"))
    params = {"service": service, "month": month}
    steps = {}
    for step in (Download, ToParquet):  # one at a time, to time each step
        started = time.perf_counter()
        if not luigi.build([step(**params)], local_scheduler=True, log_level="WARNING"):
            raise SystemExit(f"pipeline run failed at {step.__name__}")
        steps[step.__name__] = time.perf_counter() - started
    return parquet_record(ToParquet(**params).output().path).rows, steps


def run_reference(src: Path, work: Path) -> tuple[int, dict]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from pipeline import catalog

    if src.suffix == ".parquet":  # read it all, make it the catalog's schema (the columns it has), write it
        import pyarrow as pa

        table = pq.read_table(src)
        by_key = {name.lower(): name for name in table.column_names}
        fields = [f for f in catalog.SERVICES[service_of(src)].schema if f.name.lower() in by_key]
        table = table.select([by_key[f.name.lower()] for f in fields]).rename_columns([f.name for f in fields]).cast(pa.schema(fields))
    else:
        table = pacsv.read_csv(src)
    pq.write_table(table, work / "reference.parquet")
    return table.num_rows, {}


def run_duckdb(src: Path, work: Path) -> tuple[int, dict]:
    import duckdb

    con = duckdb.connect()
    out = work / "duckdb.parquet"
    reader = "read_parquet" if src.suffix == ".parquet" else "read_csv"
    con.execute(f"COPY (SELECT * FROM {reader}('{src}')) TO '{out}' (FORMAT parquet)")
    return con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0], {}


def service_of(src: Path) -> str:
    return src.name.split("_")[0]  # yellow_tripdata_1369765.csv.gz


APPROACHES = {"pipeline": run_pipeline, "reference": run_reference, "duckdb": run_duckdb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument(
        "--source",
        choices=["releases", "tlc"],
        default="releases",
        help="the month as the releases' csv.gz (default) or as the TLC's Parquet",
    )
    parser.add_argument(
        "--service",
        choices=["yellow", "fhvhv"],
        default="yellow",
        help="fhvhv (with --source tlc): a month shaped like fhvhv's, 24 columns (try --rows 20000000)",
    )
    parser.add_argument("--only", choices=list(APPROACHES), action="append", help="run only these (repeatable)")
    parser.add_argument("--child", choices=list(APPROACHES), help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory(dir=CACHE) as work:
            return measure(lambda: APPROACHES[args.child](args.src, Path(work)))

    if args.service == "fhvhv" and args.source != "tlc":
        parser.error("--service fhvhv is a TLC Parquet month: add --source tlc")
    if args.service == "fhvhv":
        src = build_fhvhv_month(args.rows)
    else:
        src = build_tlc_month(args.rows) if args.source == "tlc" else build_month(args.rows)
    print(f"month: {src.name}, {args.rows:,} rows, {src.stat().st_size / 1e6:.1f} MB")
    results = {name: run_child(__file__, name, ["--src", str(src)]) for name in args.only or list(APPROACHES)}
    report(results, args.rows)


if __name__ == "__main__":
    sys.exit(main())
