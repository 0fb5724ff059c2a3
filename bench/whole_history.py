"""Benchmark: the whole TLC history in one command, through a real luigid, with 1, 2 and 4 workers.

    python bench/whole_history.py [--rows 200] [--workers 1 2 4]

A loopback mirror in the TLC's layout holds every trip file the TLC's own metadata lists
(bench/history_metadata/, copied from ../shared/data/tlc/metadata: 487 files, 2009-01..2024-05),
each with that file's own column names and its era's physical types (the genuine files'
types where we have them: green before and from 2023-02; the documented change points
otherwise), scaled down to --rows rows, plus the zone lookup and the zone shapes. Yellow
2009-2010 are real legacy rows, located in the real shapes.

For each worker count, on a lake and warehouse of its own, it runs

    luigi --module pipeline IngestRange --services yellow,green,fhv,fhvhv,zones \\
        --first 2009-01 --last 2024-05 --source-kind tlc --workers N

against one luigid (started here, on 127.0.0.1), then the same command again, and reports: the
wall time, per month and per task; luigid's CPU seconds and memory; how long the visualiser's
task list takes to answer with every task listed; how long the identical re-run takes to decide
there is nothing to do; and anything refused.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from common import CACHE, ROOT

sys.path.insert(0, str(ROOT / "tests"))
import servers  # noqa: E402
import tlc_parquet  # noqa: E402

METADATA = Path(__file__).resolve().parent / "history_metadata"
FIRST, LAST = "2009-01", "2024-05"
SERVICES = "yellow,green,fhv,fhvhv,zones"


def published() -> list[dict]:
    """Every file the TLC's metadata lists: service, month, column names."""
    files = []
    for path in sorted(METADATA.glob("*_tripmetadata_*.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                files.append(
                    {
                        "name": row["file_name"],
                        "service": row["file_record_type"],
                        "month": datetime.date(int(row["file_year"]), int(row["file_month"]), 1),
                        "columns": row["file_column_names"].split(","),
                        "rows": int(row["file_num_rows"]),
                        "bytes": int(row["file_size_bytes"]),
                    }
                )
    return files


def _era_types(service: str, month: datetime.date):
    """The physical type of each column name (lower case) in that service's files of that month,
    where it is not DOUBLE; every time is TIMESTAMP(us) in every era (see _column)."""
    import pyarrow as pa

    i32, i64, f64, s, null = pa.int32(), pa.int64(), pa.float64(), pa.string(), pa.null()
    late = month >= datetime.date(2023, 2, 1)  # the TLC rewrote its writer: INT32 ids, INT64 codes
    ids = i32 if late else i64
    if service == "green":  # as the genuine files of 2020-04 and 2023-02 have them (../shared/data/tlc/parquet)
        codes, flag, ehail = (i64, pa.large_string(), f64) if late else (f64, s, null)
        return {
            "vendorid": ids,
            "store_and_fwd_flag": flag,
            "pulocationid": ids,
            "dolocationid": ids,
            **dict.fromkeys(("ratecodeid", "passenger_count", "payment_type", "trip_type"), codes),
            "ehail_fee": ehail,
        }
    if service == "yellow":
        codes = f64 if datetime.date(2018, 7, 1) <= month < datetime.date(2023, 2, 1) else i64
        fee_null = datetime.date(2011, 2, 1) <= month <= datetime.date(2017, 12, 1) or (
            datetime.date(2018, 2, 1) <= month <= datetime.date(2020, 7, 1) or month == datetime.date(2020, 10, 1)
        )
        return {
            "vendorid": ids,
            "passenger_count": codes,
            "ratecodeid": codes,
            "pulocationid": ids,
            "dolocationid": ids,
            "payment_type": i64,
            "store_and_fwd_flag": s,
            "congestion_surcharge": f64 if month >= datetime.date(2019, 1, 1) else i32,
            "airport_fee": i32 if fee_null else f64,
        }
    if service == "fhv":
        return {
            "pulocationid": f64,
            "dolocationid": f64,
            "sr_flag": f64,
            "dispatching_base_num": s,
            "affiliated_base_number": s,
        }
    return {"trip_time": i64, "pulocationid": i64, "dolocationid": i64}


def _column(name: str, type_, month: datetime.date, n: int):
    """Plausible values for a column of the modern layouts, by its name and physical type."""
    import pyarrow as pa

    key = name.lower()
    if "datetime" in key:  # every service's times are TIMESTAMP(us) in every era
        type_ = pa.timestamp("us")
    start = datetime.datetime.combine(month, datetime.time())
    if pa.types.is_null(type_):
        return pa.nulls(n)
    if key in ("airport_fee", "congestion_surcharge") and type_ == pa.int32():
        return pa.nulls(n, type_)  # the TLC's all-null INT32 columns
    if pa.types.is_timestamp(type_):
        shift = datetime.timedelta(minutes=12) if "dropoff" in key else datetime.timedelta(0)
        return pa.array([start + datetime.timedelta(minutes=17 * i) + shift for i in range(n)], type_)
    if "locationid" in key:
        values = [1 + (7 * i) % 265 for i in range(n)]
    elif pa.types.is_string(type_) or pa.types.is_large_string(type_):
        text = {"hvfhs_license_num": "HV0003", "store_and_fwd_flag": "N"}.get(key, "N" if "flag" in key else "B02510")
        return pa.array([text] * n, type_)
    elif key in ("vendorid", "ratecodeid", "payment_type", "trip_type", "passenger_count", "sr_flag"):
        values = [1 + i % 2 for i in range(n)]
    elif key == "trip_time":
        values = [600 + i for i in range(n)]
    else:
        values = [round(2.5 + (i % 40) * 0.25, 2) for i in range(n)]
    return pa.array([float(v) for v in values] if pa.types.is_floating(type_) else values, type_)


def build_mirror(rows: int) -> Path:
    """The mirror's root (it holds tlc/trip-data/ and tlc/misc/), built once per --rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = CACHE / f"history-{rows}"
    if (root / "done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    trips = root / "tlc" / "trip-data"
    trips.mkdir(parents=True)
    legacy = tlc_parquet.legacy_files()
    for file in published():
        service, month, names = file["service"], file["month"], file["columns"]
        if service == "yellow" and month.year <= 2010:
            sample = legacy[f"yellow_tripdata_{month.year}-01.parquet"]
            table = pa.Table.from_batches((sample.take([i % sample.num_rows for i in range(rows)])).to_batches())
            table = table.select([n for n in names if n in table.column_names])
            if "__index_level_0__" in names and "__index_level_0__" not in table.column_names:
                table = table.append_column("__index_level_0__", pa.array(range(rows), pa.int64()))
        else:
            types = _era_types(service, month)
            table = pa.table({n: _column(n, types.get(n.lower(), pa.float64()), month, rows) for n in names})
        assert table.column_names == names, (file["name"], table.column_names, names)
        pq.write_table(table, trips / file["name"])
    misc = root / "tlc" / "misc"
    misc.mkdir()
    misc.joinpath("taxi+_zone_lookup.csv").write_bytes((tlc_parquet.DATA / "taxi+_zone_lookup.2024-07.csv").read_bytes())
    misc.joinpath("taxi_zones.zip").write_bytes((tlc_parquet.DATA / "zones" / "taxi_zones.zip").read_bytes())
    (root / "done").write_text("")
    return root


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def task_list(port: int, status: str) -> tuple[float, int]:
    query = urllib.parse.urlencode({"data": json.dumps({"status": status, "upstream_status": "", "search": ""})})
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/task_list?{query}", timeout=300) as answer:
        tasks = json.load(answer)["response"]
    return time.perf_counter() - started, len(tasks)


def ingest(work: Path, base_url: str, port: int, workers: int) -> subprocess.CompletedProcess:
    profile = work / "bench.cfg"
    profile.write_text(
        "[core]\nno_configure_logging = false\n"
        f"[source]\nkind = tlc\nbase_url = {base_url}\nattempts = 2\nbackoff = 0.1\n"
        f"[lake]\nroot = {work / 'lake'}\n[ingest]\nstaging = {work / 'staging'}\n[duckdb]\npath = {work / 'warehouse.duckdb'}\n"
    )
    command = [
        str(Path(sys.executable).with_name("luigi")),
        "--module",
        "pipeline",
        "IngestRange",
        "--services",
        SERVICES,
        "--first",
        FIRST,
        "--last",
        LAST,
        "--workers",
        str(workers),
        "--scheduler-host",
        "127.0.0.1",
        "--scheduler-port",
        str(port),
    ]
    env = dict(os.environ, LUIGI_CONFIG_PATH=str(profile), NYC_TLC_HOME=str(ROOT))
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)


def refused(out: subprocess.CompletedProcess) -> list[str]:
    """The failed tasks of luigi's execution summary, and one line of each kind of error."""
    summary = out.stderr.partition("===== Luigi Execution Summary =====")[2]
    failed = summary.partition(" failed:\n")[2].partition("\n* ")[0].splitlines() if " failed:\n" in summary else []
    errors = sorted(
        {line.split(": ", 1)[0] + ": " + line.split("): ", 1)[-1][:160] for line in out.stderr.splitlines() if "Error: " in line}
    )
    return [line.strip() for line in failed] + errors[:10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200, help="rows per file in the mirror")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()

    files = published()
    started = time.perf_counter()
    root = build_mirror(args.rows)
    print(f"mirror: {len(files)} trip files ({FIRST}..{LAST}) of {args.rows} rows, built in {time.perf_counter() - started:.0f} s")
    months = len(files)
    with servers.http_mirror(root) as url:
        for workers in args.workers:
            work = CACHE / f"history-run-{workers}"
            shutil.rmtree(work, ignore_errors=True)
            (work / "luigid").mkdir(parents=True)
            with servers.luigid(work, work / "luigid") as scheduler:
                port, pid = scheduler["port"], scheduler["pid"]
                cpu0 = cpu_seconds(pid)
                t0 = time.perf_counter()
                first = ingest(work, f"{url}/tlc", port, workers)
                wall = time.perf_counter() - t0
                cpu = cpu_seconds(pid) - cpu0
                rss, peak = memory_mb(pid)
                answer, done = task_list(port, "DONE")
                t0 = time.perf_counter()
                again = ingest(work, f"{url}/tlc", port, workers)
                decide = time.perf_counter() - t0
                lake_files = sum(1 for _ in (work / "lake").rglob("*.parquet"))
            print(f"\n--workers {workers}: exit {first.returncode}, re-run exit {again.returncode}")
            per_task = wall / max(done, 1)
            print(f"  wall {wall:,.0f} s for {months} months: {wall / months:.2f} s a month, {per_task:.3f} s a task ({done:,} DONE)")
            print(f"  lake files: {lake_files} (487 months + the zones + the zone shapes = 489)")
            print(f"  luigid: {cpu:.1f} CPU s during the run, RSS {rss:.0f} MB (peak {peak:.0f} MB)")
            print(f"  visualiser task list (DONE, {done:,} tasks): {answer:.2f} s")
            nothing = "nothing to do" if "Did not run any tasks" in again.stderr else "it ran tasks"
            print(f"  identical re-run: {decide:.1f} s to decide ({nothing})")
            problems = refused(first)
            print("  refused: " + ("nothing" if first.returncode == 0 and not problems else "\n    " + "\n    ".join(problems)))
            if first.returncode:
                (work / "first-run.log").write_text(first.stderr)
                print(f"  (the run's log: {work / 'first-run.log'})")
            else:  # what bench/projection.py takes: the cost of a task beyond its rows, what workers gain
                record_for_projection(workers, wall, wall / done, cpu / done, args.rows)


def record_for_projection(workers: int, wall: float, seconds_per_task: float, luigid_cpu_per_task: float, rows: int) -> None:
    path = Path(__file__).resolve().parent / "projection.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    history = results.setdefault("history", {})
    history.setdefault("wall_by_workers", {})[str(workers)] = round(wall, 1)
    if workers == 1:
        history.update(seconds_per_task=round(seconds_per_task, 4), luigid_cpu_per_task=round(luigid_cpu_per_task, 4))
    history.update(rows_per_file=rows, measured=datetime.date.today().isoformat())
    path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
