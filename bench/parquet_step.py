"""Benchmark: download-from-file + Parquet steps on a full-size month, against references.

Builds a month of yellow trips from the real rows in tests/data (repeated to the requested row
count, CRLF like the published files, gzip level 6), then runs, each in its own process so peak
RSS is its own:

  pipeline   the real Download and ToParquet tasks (luigi, local scheduler, file:// mirror)
  reference  pyarrow.csv.read_csv of the whole file, then pyarrow.parquet.write_table
             (what the course's flows do)
  duckdb     DuckDB's COPY (SELECT * FROM read_csv(...)) TO parquet

and prints wall time, rows/s and peak RSS, with each reference's figures as a ratio to ours, and
the time of each pipeline step (Download hashes the file and inflates its first 4 MiB, ToParquet
proves the gzip stream whole as it converts it: work the references do not do). Each approach
runs --repeat times (3), interleaved, and its median wall time is what is compared. Each one's
clock runs while it imports what it uses (the pipeline luigi, pyarrow and the package, with one
luigi.build per step; the reference pyarrow; DuckDB duckdb), and each runs with the allocator it
would have on its own (the pipeline chooses Arrow's jemalloc; the reference has Arrow's default).

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

from common import (
    CACHE,
    DEFAULT_ROWS,
    FIXTURES,
    MONTH,
    ROOT,
    build_fixture_month,
    build_month,
    build_tlc_month,
    measure,
    report,
    run_rounds,
)


def run_pipeline(src: Path, work: Path) -> tuple[int, dict]:
    import luigi
    import luigi.configuration

    from pipeline import catalog
    from pipeline.convert import ToParquet
    from pipeline.download import Download
    from pipeline.lake import parquet_record
    from pipeline.zone_shapes import ZoneShapes

    kind = "tlc" if src.suffix == ".parquet" else "releases"
    service, month = service_of(src)
    published = work / "mirror" / catalog.SOURCES[kind].path(catalog.SERVICES[service], month)
    published.parent.mkdir(parents=True)
    published.symlink_to(src)
    shapes = work / "mirror" / catalog.ZONE_SHAPES.path
    shapes.parent.mkdir(parents=True, exist_ok=True)
    shapes.symlink_to(ROOT / "tests" / "data" / "tlc" / "zones" / "taxi_zones.zip")
    config = luigi.configuration.get_config()
    config.set("source", "kind", kind)
    config.set("source", "base_url", (work / "mirror").as_uri())
    config.set("ingest", "staging", str(work / "staging"))
    config.set("lake", "root", str(work / "lake"))
    params = {"service": service, "month": month}
    steps = {}
    # One at a time, to time each step; the zone shapes only where the month needs them.
    legacy = catalog.legacy_month(catalog.SERVICES[service], month)
    for step in (ZoneShapes, Download, ToParquet) if legacy else (Download, ToParquet):
        task = step() if step is ZoneShapes else step(**params)
        started = time.perf_counter()
        if not luigi.build([task], local_scheduler=True, log_level="WARNING"):
            raise SystemExit(f"pipeline run failed at {step.__name__}")
        steps[step.__name__] = time.perf_counter() - started
    return parquet_record(ToParquet(**params).output().path).rows, steps


def run_reference(src: Path, work: Path) -> tuple[int, dict]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if src.suffix == ".parquet":  # read it all, make it the catalog's schema (the columns it has), write it
        import pyarrow as pa

        schema = pa.ipc.read_schema(pa.py_buffer(schema_file(src).read_bytes()))
        table = pq.read_table(src)
        by_key = {name.lower(): name for name in table.column_names}
        fields = [f for f in schema if f.name.lower() in by_key]
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


def service_of(src: Path) -> tuple[str, object]:
    """The service and month a built month stands for: yellow_tripdata_1369765.csv.gz is yellow
    2021-01, yellow-2009_tripdata_... is yellow 2009-01 (the legacy layout)."""
    import datetime

    shape = src.name.split("_")[0]
    service, _, year = shape.partition("-")
    return service, datetime.date.fromisoformat(f"{year}-01-01" if year else f"{MONTH}-01")


def schema_file(src: Path) -> Path:
    """Where main() leaves the catalog's schema of a TLC month's service for the reference. The
    course's code writes its schema out in its own source: importing this package (luigi, and the
    allocator it chooses) to read the catalog's is not the reference's cost, nor its behaviour.
    Importing pyarrow is, and its clock runs while it does, as DuckDB's does while it imports
    duckdb and the pipeline's while it imports luigi, pyarrow and the package."""
    return src.with_name(src.name + ".schema")


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
        choices=["yellow", *FIXTURES],
        default="yellow",
        help="with --source tlc, a month shaped like this service's: fhvhv (24 columns; try --rows 20000000), fhv (7 columns), "
        "yellow-2009 (the legacy layout, located in the zone shapes; the pipeline only)",
    )
    parser.add_argument("--only", choices=list(APPROACHES), action="append", help="run only these (repeatable)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each approach, interleaved; the median wall time is reported (default 3)"
    )
    parser.add_argument("--child", choices=list(APPROACHES), help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory(dir=CACHE) as work:
            return measure(lambda: APPROACHES[args.child](args.src, Path(work)))

    if args.service != "yellow" and args.source != "tlc":
        parser.error(f"--service {args.service} is a TLC Parquet month: add --source tlc")
    if args.service == "yellow-2009" and set(args.only or []) - {"pipeline"}:
        parser.error("--service yellow-2009: only the pipeline reads the legacy layout")
    if args.service != "yellow":
        src = build_fixture_month(args.service, args.rows)
        args.only = ["pipeline"] if args.service == "yellow-2009" else args.only
    else:
        src = build_tlc_month(args.rows) if args.source == "tlc" else build_month(args.rows)
    if src.suffix == ".parquet":
        from pipeline import catalog

        schema_file(src).write_bytes(catalog.SERVICES[service_of(src)[0]].schema.serialize().to_pybytes())
    print(f"month: {src.name}, {args.rows:,} rows, {src.stat().st_size / 1e6:.1f} MB")
    results = run_rounds(__file__, args.only or list(APPROACHES), lambda name, round_: ["--src", str(src)], args.repeat)
    report(results, args.rows)


if __name__ == "__main__":
    sys.exit(main())
