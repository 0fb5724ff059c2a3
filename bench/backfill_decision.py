"""Benchmark: deciding that a backfill has nothing to do, in bulk against month by month.

Sets up 480 complete months (yellow, green, fhv, fhvhv x 2011-01..2020-12) in a local lake with
the duckdb and postgres sinks on (a throwaway Postgres on 127.0.0.1, the test suite's), then times
the no-op decision two ways, each on a fresh task cache, as a new `luigi` process would make it:

  bulk        IngestRange(...).complete(): PublishedMonths asks IngestMonth.bulk_complete, which
              asks each kind of output once for all months of a service
  per_task    luigi's own RangeMonthly(of=IngestMonth, ...) for each service, clamps opened the
              same way: every month's LakeFile, DuckDB marker and Postgres marker checked alone

The state is made by running the real pipeline for one month per service, then copying its lake
file to the other months' paths and writing their marker rows: the decision reads only files and
markers, so this is the state a real 480-month backfill leaves.

    python bench/backfill_decision.py
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import CACHE, ROOT

sys.path.insert(0, str(ROOT / "tests"))
from servers import postgres_server  # noqa: E402

SERVICES = ("yellow", "green", "fhv", "fhvhv")
FIRST, LAST = datetime.date(2011, 1, 1), datetime.date(2020, 12, 1)
SAMPLES = {  # a real month per service, from the test data
    "yellow": ("yellow_tripdata_2021-01.head.csv", "2021-01"),
    "green": ("green_tripdata_2019-01.head.csv", "2019-01"),
    "fhv": ("s3_2020-09_first1024B/fhv_tripdata_2019-01.first1024B.csv", "2019-01"),
    "fhvhv": ("fhvhv_tripdata_2021-06.head.csv", "2021-06"),
}


def months():
    m = FIRST
    while m <= LAST:
        yield m
        m = (m.replace(day=28) + datetime.timedelta(days=4)).replace(day=1)


def set_up(work: Path) -> None:
    import gzip

    import duckdb
    import luigi

    from pipeline import IngestMonth
    from pipeline.catalog import SERVICES as CATALOG
    from pipeline.lake import lake_path
    from pipeline.warehouses import postgres

    for service, (sample, month) in SAMPLES.items():
        text = (ROOT / "tests" / "data" / "tlc" / sample).read_bytes()
        src = work / "mirror" / service / f"{service}_tripdata_{month}.csv.gz"
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(gzip.compress(text[: text.rfind(b"\n") + 1]))
    tasks = [IngestMonth(service=s, month=datetime.date.fromisoformat(m + "-01")) for s, (_, m) in SAMPLES.items()]
    if not luigi.build(tasks, local_scheduler=True, log_level="WARNING"):
        raise SystemExit("could not ingest the sample months")
    con = duckdb.connect(str(work / "warehouse.duckdb"))
    conn = postgres.connect()
    with conn.cursor() as cur:
        for service, (_, month) in SAMPLES.items():
            svc = CATALOG[service]
            real = lake_path(svc, datetime.date.fromisoformat(month + "-01"))
            for m in months():
                path = lake_path(svc, m)
                if path != real:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    shutil.copyfile(real, path)
                month_ = m.strftime("%Y-%m")
                con.execute("INSERT OR REPLACE INTO _ingested (service, month, rows, marked_at) VALUES (?, ?, 1, now())", [service, month_])
                cur.execute(
                    "INSERT INTO public._ingested (service, month, rows) VALUES ($1, $2, 1) ON CONFLICT DO NOTHING", [service, month_]
                )
    conn.commit()
    conn.close()
    con.close()


def decide_bulk() -> bool:
    from pipeline import IngestRange

    return IngestRange(services=",".join(SERVICES), first=FIRST, last=LAST).complete()


def decide_per_task() -> bool:
    from luigi.tools.range import RangeMonthly

    from pipeline import IngestMonth, IngestRange

    ranges = list(IngestRange(services=",".join(SERVICES), first=FIRST, last=LAST).requires())
    plain = [
        RangeMonthly(
            of=IngestMonth,
            of_params=r.of_params,
            param_name="month",
            start=r.start,
            stop=r.stop,
            months_back=r.months_back,
            months_forward=r.months_forward,
            task_limit=r.task_limit,
        )
        for r in ranges
    ]
    return all(r.complete() for r in plain)


def timed(decide) -> float:
    import luigi.task_register

    luigi.task_register.Register.clear_instance_cache()
    started = time.perf_counter()
    if not decide():
        raise SystemExit(f"{decide.__name__}: the range is not complete")
    return time.perf_counter() - started


def main() -> None:
    import luigi.configuration

    # No options; --help says what it does instead of running it.
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp, postgres_server("bench") as pg:
        work = Path(tmp)
        os.environ.update(
            PGHOST=pg["host"], PGPORT=str(pg["port"]), PGUSER=pg["user"], PGDATABASE=pg["database"], PGPASSWORD=pg["password"]
        )
        config = luigi.configuration.get_config()
        for (section, key), value in {
            ("core", "no_configure_logging"): "true",
            ("source", "base_url"): (work / "mirror").as_uri(),
            ("lake", "root"): str(work / "lake"),
            ("ingest", "staging"): str(work / "staging"),
            ("duckdb", "path"): str(work / "warehouse.duckdb"),
            ("ingest", "sinks"): "duckdb,postgres",
        }.items():
            config.set(section, key, value)
        set_up(work)
        count = len(SERVICES) * len(list(months()))
        bulk = timed(decide_bulk)
        per_task = timed(decide_per_task)
        print(
            f"no-op decision for {count} complete months ({', '.join(SERVICES)} x "
            f"{FIRST:%Y-%m}..{LAST:%Y-%m}), sinks duckdb + postgres, local lake:"
        )
        print(f"  bulk (IngestRange)              {bulk:8.3f} s")
        print(f"  per task (luigi's RangeMonthly) {per_task:8.3f} s")
        print(f"  bulk is {per_task / bulk:.0f}x faster")


if __name__ == "__main__":
    main()
