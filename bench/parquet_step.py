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
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "tlc" / "yellow_tripdata_2021-01.head.csv"
CACHE = ROOT / "bench" / ".cache"
MONTH = "2021-01"


def build_month(rows: int) -> Path:
    path = CACHE / f"yellow_tripdata_{rows}.csv.gz"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    # The sample was stored with LF; the published file is CRLF (see tests/data/tlc/SOURCES.md).
    header, *lines = (line + b"\r\n" for line in SAMPLE.read_bytes().splitlines())
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wb", compresslevel=6) as out:
        out.write(header)
        full, rest = divmod(rows, len(lines))
        block = b"".join(lines)
        for _ in range(full):
            out.write(block)
        out.write(b"".join(lines[:rest]))
    tmp.rename(path)
    return path


def run_pipeline(src: Path, work: Path) -> tuple[int, dict]:
    import luigi
    import luigi.configuration

    from pipeline.convert import ToParquet, parquet_rows
    from pipeline.download import Download

    mirror = work / "mirror" / "yellow"
    mirror.mkdir(parents=True)
    (mirror / f"yellow_tripdata_{MONTH}.csv.gz").symlink_to(src)
    config = luigi.configuration.get_config()
    config.set("source", "base_url", (work / "mirror").as_uri())
    config.set("ingest", "staging", str(work / "staging"))
    params = {"service": "yellow", "month": luigi.date_interval.Month.parse(MONTH).date_a}
    steps = {}
    for step in (Download, ToParquet):  # one at a time, to time each step
        started = time.perf_counter()
        if not luigi.build([step(**params)], local_scheduler=True, log_level="WARNING"):
            raise SystemExit(f"pipeline run failed at {step.__name__}")
        steps[step.__name__] = time.perf_counter() - started
    return parquet_rows(ToParquet(**params).output().path), steps


def run_reference(src: Path, work: Path) -> tuple[int, dict]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pacsv.read_csv(src)
    pq.write_table(table, work / "reference.parquet")
    return table.num_rows, {}


def run_duckdb(src: Path, work: Path) -> tuple[int, dict]:
    import duckdb

    con = duckdb.connect()
    out = work / "duckdb.parquet"
    con.execute(f"COPY (SELECT * FROM read_csv('{src}')) TO '{out}' (FORMAT parquet)")
    return con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0], {}


APPROACHES = {"pipeline": run_pipeline, "reference": run_reference, "duckdb": run_duckdb}


def child(name: str, src: Path) -> None:
    with tempfile.TemporaryDirectory(dir=CACHE) as work:
        started = time.perf_counter()
        rows, steps = APPROACHES[name](src, Path(work))
        seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": peak_mb, "steps": steps}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_369_765)
    parser.add_argument("--only", choices=list(APPROACHES), action="append", help="run only these (repeatable)")
    parser.add_argument("--child", choices=list(APPROACHES), help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.src)

    src = build_month(args.rows)
    print(f"month: {src.name}, {args.rows:,} rows, {src.stat().st_size / 1e6:.1f} MB gzip")
    results = {}
    for name in args.only or list(APPROACHES):
        out = subprocess.run([sys.executable, __file__, "--child", name, "--src", str(src)],
                             cwd=ROOT, check=True, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        if results[name]["rows"] != args.rows:
            raise SystemExit(f"{name} produced {results[name]['rows']} rows, expected {args.rows}")
    ours = results.get("pipeline")
    print(f"{'approach':<10} {'wall s':>8} {'rows/s':>12} {'peak RSS MB':>12}   vs pipeline (time, memory)")
    for name, r in results.items():
        ratio = ""
        if ours and name != "pipeline":
            ratio = f"   {r['seconds'] / ours['seconds']:.2f}x time, {r['peak_mb'] / ours['peak_mb']:.2f}x memory"
        print(f"{name:<10} {r['seconds']:>8.2f} {args.rows / r['seconds']:>12,.0f} {r['peak_mb']:>12.0f}{ratio}")
        for step, seconds in r["steps"].items():
            print(f"  {step:<8} {seconds:>8.2f} {args.rows / seconds:>12,.0f}")


if __name__ == "__main__":
    main()
