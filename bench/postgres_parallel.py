"""Benchmark: loads into one Postgres from 1, 2 and 4 connections at once, each a distinct month,
what `[resources] postgres` caps (luigi.cfg).

Builds yellow months of the real rows in tests/data (see common.py; one file, served as each month
2021-01.. of a file:// mirror), puts them in a local lake with the real Download, ToParquet and
LakeFile tasks (not timed), starts a throwaway Postgres on 127.0.0.1, then for each count N starts N
processes at once, each the real LoadPostgres task (luigi, local scheduler) of its own month into
one schema, and prints the wall time until all are done (each process's start included, as a worker
pays it per task) and the rows per second over all of them.

    python bench/postgres_parallel.py                          # 1,369,765 rows a month
    python bench/postgres_parallel.py --connections 1,2,4 --rows 500000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import CACHE, DEFAULT_ROWS, ROOT, build_month

sys.path.insert(0, str(ROOT / "tests"))
from servers import postgres_server  # noqa: E402  (the test suite's throwaway server)

PASSWORD = "bench"
MONTHS = ("2021-01", "2021-02", "2021-03", "2021-04", "2021-05", "2021-06", "2021-07", "2021-08")


def prepare_lake(src: Path, rows: int, months: tuple[str, ...]) -> Path:
    """Each of ``months`` in a lake, made by the real steps up to the lake (once per size)."""
    import luigi
    import luigi.configuration

    from pipeline.lake_file import LakeFile

    work = CACHE / f"parallel_{rows}"
    for month in months:
        link = work / "mirror" / "yellow" / f"yellow_tripdata_{month}.csv.gz"
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src)
    config = luigi.configuration.get_config()
    config.set("core", "no_configure_logging", "true")
    config.set("source", "base_url", (work / "mirror").as_uri())
    config.set("ingest", "staging", str(work / "staging"))
    config.set("lake", "root", str(work / "lake"))
    tasks = [LakeFile(service="yellow", month=luigi.date_interval.Month.parse(m).date_a) for m in months]
    if not luigi.build(tasks, local_scheduler=True, log_level="WARNING"):
        raise SystemExit("could not build the lake months")
    return work / "lake"


def child(lake: str, schema: str, month: str) -> None:
    import luigi
    import luigi.configuration

    from pipeline.warehouses.postgres import LoadPostgres

    config = luigi.configuration.get_config()
    config.set("core", "no_configure_logging", "true")
    config.set("lake", "root", lake)
    config.set("postgres", "schema", schema)
    task = LoadPostgres(service="yellow", month=luigi.date_interval.Month.parse(month).date_a)
    if not luigi.build([task], local_scheduler=True, log_level="WARNING"):
        raise SystemExit(f"LoadPostgres {month} failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--connections", default="1,2,4", help="loads at once, comma-separated (default 1,2,4)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every count, interleaved; the median wall is reported (default 3)")
    parser.add_argument("--child", nargs=3, metavar=("LAKE", "SCHEMA", "MONTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    counts = [int(n) for n in args.connections.split(",")]
    months = MONTHS[: max(counts)]
    src = build_month(args.rows)
    lake = prepare_lake(src, args.rows, months)
    print(f"month: {src.name}, {args.rows:,} rows; {os.cpu_count()} CPUs")
    with postgres_server(PASSWORD) as pg:
        env = {**os.environ, "PGHOST": pg["host"], "PGPORT": str(pg["port"]), "PGUSER": pg["user"]}
        env.update(PGDATABASE=pg["database"], PGPASSWORD=PASSWORD)
        walls: dict[int, list[float]] = {n: [] for n in counts}
        for round_ in range(args.repeat):  # interleaved, so a busy moment of the machine hits every count alike
            for n in counts:
                started = time.perf_counter()
                schema = f"bench_{n}_{round_}"
                children = [subprocess.Popen([sys.executable, __file__, "--child", str(lake), schema, m], env=env) for m in months[:n]]
                if any(c.wait() for c in children):
                    raise SystemExit(f"a load of {n} at once failed")
                walls[n].append(time.perf_counter() - started)
        print(f"| loads at once | wall (s, median of {args.repeat}) | rows/s in all | rows/s per load |")
        print("|---|---|---|---|")
        for n in counts:
            wall = statistics.median(walls[n])
            print(f"| {n} | {wall:.1f} | {n * args.rows / wall:,.0f} | {args.rows / wall:,.0f} |")


if __name__ == "__main__":
    sys.exit(main())
