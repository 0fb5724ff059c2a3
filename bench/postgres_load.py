"""Benchmark: the Postgres load step on a full-size month, against the physical limit and the
course's way.

Builds a month of yellow trips from the real rows in tests/data (see common.py), puts it in a lake
with the real Download, ToParquet and LakeFile tasks (not timed), starts a throwaway Postgres on
127.0.0.1, then runs, each in its own process so peak RSS is its own, each into a
fresh table on the same server:

  pipeline   the real LoadPostgres task (luigi, local scheduler): Parquet -> binary COPY (ADBC),
             swapped in as the month's partition, counted, marker written, one transaction
  raw_copy   COPY ... FROM STDIN (FORMAT csv) of the same month as an uncompressed CSV file through
             psycopg2, into a table with the same column types: the physical limit
  pandas     the course's ingest: pandas.read_csv in 100,000-row chunks, DataFrame.to_sql
             (needs `pip install pandas sqlalchemy`; skipped with a note when missing; pandas
             wants SQLAlchemy 2 and luigid's task history SQLAlchemy < 2, so use another venv)

and prints wall time, rows/s and peak RSS, with our rows/s as a ratio of each.

    python bench/postgres_load.py                   # 1,369,765 rows, like yellow 2021-01
    python bench/postgres_load.py --rows 7667792    # like yellow 2019-01
    python bench/postgres_load.py --skip pandas     # pandas takes minutes on big months
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib.util
import shutil
import sys
from pathlib import Path

from common import CACHE, DEFAULT_ROWS, MONTH, ROOT, build_month, measure, report, run_rounds

sys.path.insert(0, str(ROOT / "tests"))
from servers import postgres_server  # noqa: E402  (the test suite's throwaway server)

PASSWORD = "bench"


def prepare_lake(src: Path, rows: int) -> Path:
    """The month in a lake, made by the real pipeline steps up to the lake (once per size)."""
    import luigi
    import luigi.configuration

    from pipeline.lake_file import LakeFile

    work = CACHE / f"lake_{rows}"
    mirror = work / "mirror" / "yellow" / f"yellow_tripdata_{MONTH}.csv.gz"
    if not mirror.exists():
        mirror.parent.mkdir(parents=True, exist_ok=True)
        mirror.symlink_to(src)
    config = luigi.configuration.get_config()
    config.set("core", "no_configure_logging", "true")  # keep the report readable
    config.set("source", "base_url", (work / "mirror").as_uri())
    config.set("ingest", "staging", str(work / "staging"))
    config.set("lake", "root", str(work / "lake"))
    task = LakeFile(service="yellow", month=luigi.date_interval.Month.parse(MONTH).date_a)
    if not luigi.build([task], local_scheduler=True, log_level="WARNING"):
        raise SystemExit("could not build the lake month")
    shutil.rmtree(work / "staging", ignore_errors=True)
    return work / "lake"


def plain_csv(src: Path) -> Path:
    path = src.with_suffix("")  # .csv
    if not path.exists():
        with gzip.open(src) as f, open(path.with_suffix(".tmp"), "wb") as out:
            shutil.copyfileobj(f, out, 1 << 20)
        path.with_suffix(".tmp").rename(path)
    return path


def run_pipeline(lake: Path, schema: str) -> tuple[int, dict]:
    import luigi
    import luigi.configuration

    from pipeline.warehouses.postgres import LoadPostgres

    config = luigi.configuration.get_config()
    config.set("lake", "root", str(lake))
    config.set("postgres", "schema", schema)
    if not luigi.build(
        [LoadPostgres(service="yellow", month=luigi.date_interval.Month.parse(MONTH).date_a)], local_scheduler=True, log_level="WARNING"
    ):
        raise SystemExit("LoadPostgres failed")
    return _count(f"{schema}.yellow_tripdata"), {}


def _connect():
    import psycopg2

    return psycopg2.connect("")  # everything from the PG* environment


def _count(table: str) -> int:
    with contextlib.closing(_connect()) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return cur.fetchone()[0]


def run_raw_copy(csv_path: Path, schema: str) -> tuple[int, dict]:
    from pipeline.catalog import YELLOW
    from pipeline.warehouses.postgres import PG_TYPES

    columns = ", ".join(f'"{c.name}" {PG_TYPES[c.type]}' for c in YELLOW.columns)
    with open(csv_path, "rb") as f:
        header = f.readline().decode().strip().split(",")
        f.seek(0)
        with contextlib.closing(_connect()) as conn, conn, conn.cursor() as cur:
            cur.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.yellow_tripdata ({columns})")
            names = ", ".join(f'"{n}"' for n in header)
            cur.copy_expert(f"COPY {schema}.yellow_tripdata ({names}) FROM STDIN WITH (FORMAT csv, HEADER)", f, size=1 << 20)
    return _count(f"{schema}.yellow_tripdata"), {}


def run_pandas(src: Path, schema: str) -> tuple[int, dict]:
    import pandas as pd
    from sqlalchemy import create_engine

    engine = create_engine("postgresql+psycopg2://")  # PG* environment
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    # As the course does it: the first chunk's head creates the table, then 100k-row chunks.
    chunks = pd.read_csv(src, iterator=True, chunksize=100_000)
    first = True
    for df in chunks:
        df.tpep_pickup_datetime = pd.to_datetime(df.tpep_pickup_datetime)
        df.tpep_dropoff_datetime = pd.to_datetime(df.tpep_dropoff_datetime)
        if first:
            df.head(0).to_sql("yellow_tripdata", engine, schema=schema, if_exists="replace")
            first = False
        df.to_sql("yellow_tripdata", engine, schema=schema, if_exists="append")
    return _count(f"{schema}.yellow_tripdata"), {}


APPROACHES = {"pipeline": run_pipeline, "raw_copy": run_raw_copy, "pandas": run_pandas}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--skip", choices=list(APPROACHES), action="append", default=[], help="leave out (repeatable)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each approach, interleaved; the median wall time is reported (default 3)"
    )
    parser.add_argument("--child", choices=list(APPROACHES), help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return measure(lambda: APPROACHES[args.child](args.input, args.schema))

    src = build_month(args.rows)
    print(f"month: {src.name}, {args.rows:,} rows, {src.stat().st_size / 1e6:.1f} MB gzip")
    inputs = {"pipeline": prepare_lake(src, args.rows), "raw_copy": plain_csv(src), "pandas": src}
    chosen = [n for n in APPROACHES if n not in args.skip]
    if "pandas" in chosen and not all(importlib.util.find_spec(m) for m in ("pandas", "sqlalchemy")):
        print("pandas: skipped (pip install pandas sqlalchemy to run it)")
        chosen.remove("pandas")
    with postgres_server(PASSWORD) as pg:
        env = {"PGHOST": pg["host"], "PGPORT": str(pg["port"]), "PGUSER": pg["user"], "PGDATABASE": pg["database"], "PGPASSWORD": PASSWORD}
        results = run_rounds(
            __file__, chosen, lambda name, round_: ["--input", str(inputs[name]), "--schema", f"bench_{name}_{round_}"], args.repeat, env
        )
    report(results, args.rows)


if __name__ == "__main__":
    sys.exit(main())
