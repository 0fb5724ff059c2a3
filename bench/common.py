"""What the benchmarks share: a full-size month built from real rows, and running each approach
in its own process so that its peak RSS is its own."""

from __future__ import annotations

import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "tlc" / "yellow_tripdata_2021-01.head.csv"
CACHE = ROOT / "bench" / ".cache"
MONTH = "2021-01"
DEFAULT_ROWS = 1_369_765  # yellow 2021-01
# The environment the bench was started in, for every child: importing the package here (to build
# a month, or read the catalog) sets Arrow's allocator in os.environ (pipeline/__init__.py), and
# the references must run as they would on their own. The pipeline's child sets it for itself.
START_ENV = dict(os.environ)


def build_month(rows: int) -> Path:
    """A yellow month of ``rows`` rows: the real 2021-01 sample rows repeated, CRLF like the
    published files, gzip level 6 (the size comes out close to the real file's)."""
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


def build_tlc_month(rows: int, row_group_rows: int = 1 << 20) -> Path:
    """A yellow month of ``rows`` rows as the TLC publishes it: Parquet, with the physical types
    of 2019-2022 (passenger_count and RatecodeID DOUBLE, ids INT64, airport_fee DOUBLE), in
    pyarrow's default row groups of 1Mi rows. The rows are the real 2021-01 sample, repeated."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = CACHE / f"yellow_tripdata_{rows}.parquet"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    f64, i64 = pa.float64(), pa.int64()
    sample = pacsv.read_csv(
        SAMPLE,
        convert_options=pacsv.ConvertOptions(
            column_types={
                "VendorID": i64,
                "passenger_count": f64,
                "RatecodeID": f64,
                "PULocationID": i64,
                "DOLocationID": i64,
                "payment_type": i64,
                "tpep_pickup_datetime": pa.timestamp("us"),
                "tpep_dropoff_datetime": pa.timestamp("us"),
            }
        ),
    )
    sample = sample.append_column("airport_fee", pa.array([0.0] * sample.num_rows, f64))
    return _write_repeated(path, sample, rows, row_group_rows)


# The tests' TLC-layout fixtures (tests/tlc_parquet.py) a month can be made of: real rows, in
# the TLC's physical types and names for that service and era.
FIXTURES = {
    "fhvhv": "fhvhv_tripdata_2021-06.parquet",  # 24 columns
    "fhv": "fhv_tripdata_2019-02.parquet",  # 7 columns, mixed-case names
    "yellow-2009": "yellow_tripdata_2009-01.parquet",  # the legacy layout, real coordinates
}


def build_fixture_month(shape: str, rows: int, row_group_rows: int = 1 << 20) -> Path:
    """A month of ``rows`` rows as the TLC publishes it, shaped like ``shape``'s fixture (FIXTURES),
    its rows repeated, in row groups of 1Mi rows."""
    import io

    import pyarrow.parquet as pq

    sys.path.insert(0, str(ROOT / "tests"))
    import mirror
    import tlc_parquet

    path = CACHE / f"{shape}_tripdata_{rows}.parquet"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    sample = pq.read_table(io.BytesIO(tlc_parquet.build(mirror.files())[f"trip-data/{FIXTURES[shape]}"]))
    return _write_repeated(path, sample, rows, row_group_rows)


def _write_repeated(path: Path, sample, rows: int, row_group_rows: int) -> Path:
    """``sample``'s rows repeated to ``rows`` rows, written to ``path`` in row groups of
    ``row_group_rows`` (one group in memory at a time)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    group = pa.concat_tables([sample] * (row_group_rows // sample.num_rows + 1)).slice(0, row_group_rows)
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, group.schema) as writer:
        left = rows
        while left > 0:
            part = group.slice(0, min(left, row_group_rows))
            writer.write_table(part, row_group_size=row_group_rows)
            left -= part.num_rows
    tmp.rename(path)
    return path


def measure(approach: Callable[[], tuple[int, dict]]) -> None:
    """In a child process: run the approach, print rows, seconds, peak RSS and step times as JSON."""
    started = time.perf_counter()
    rows, steps = approach()
    seconds = time.perf_counter() - started
    peak_mb = peak_rss_mb()
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": peak_mb, "steps": steps}))


def peak_rss_mb() -> float:
    """This process's peak resident set since it started its program: /proc's VmHWM. (getrusage's
    ru_maxrss survives exec on Linux, so a child would report its parent's peak when that is
    higher, as it is after the parent built a month.)"""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def run_child(script: str, name: str, args: list[str], env: dict | None = None) -> dict:
    """Run ``script --child name args...`` and return what its measure() printed."""
    out = subprocess.run(
        [sys.executable, script, "--child", name, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(START_ENV, PYTHONPATH=str(ROOT), **(env or {})),
    )
    if out.returncode:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_rounds(
    script: str, names: list[str], args_of: Callable[[str, int], list[str]], repeat: int, env: dict | None = None
) -> dict[str, dict]:
    """Run each approach ``repeat`` times, interleaved (a, b, c, a, b, c, ...), so that a slow
    spell of the machine falls on every approach alike; ``args_of(name, round)`` gives a child's
    arguments. Each approach's median wall time (and its steps'), and its highest peak RSS."""
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for round_ in range(repeat):
        for name in names:
            runs[name].append(run_child(script, name, args_of(name, round_), env))
    return {name: _summary(done) for name, done in runs.items()}


def _summary(runs: list[dict]) -> dict:
    rows = {r["rows"] for r in runs}
    if len(rows) != 1:
        raise SystemExit(f"the runs produced different row counts: {sorted(rows)}")
    return {
        "rows": rows.pop(),
        "seconds": statistics.median(r["seconds"] for r in runs),
        "peak_mb": max(r["peak_mb"] for r in runs),
        "steps": {step: statistics.median(r["steps"][step] for r in runs) for step in runs[0]["steps"]},
        "runs": len(runs),
    }


def report(results: dict[str, dict], rows: int, ours: str = "pipeline") -> None:
    """One line per approach: wall time, rows/s, peak RSS, and each one's ratio to ours."""
    mine = results.get(ours)
    runs = {r.get("runs", 1) for r in results.values()}
    if runs != {1}:
        print(f"median wall time of {', '.join(map(str, sorted(runs)))} runs each, interleaved; the highest peak RSS")
    print(f"{'approach':<10} {'wall s':>8} {'rows/s':>12} {'peak RSS MB':>12}   vs {ours} (rows/s, memory)")
    for name, r in results.items():
        if r["rows"] != rows:
            raise SystemExit(f"{name} produced {r['rows']} rows, expected {rows}")
        ratio = ""
        if mine and name != ours:
            ratio = (
                f"   {ours} does {r['seconds'] / mine['seconds']:.2f}x its rows/s, uses {mine['peak_mb'] / r['peak_mb']:.2f}x its memory"
            )
        print(f"{name:<10} {r['seconds']:>8.2f} {rows / r['seconds']:>12,.0f} {r['peak_mb']:>12.0f}{ratio}")
        for step, seconds in r["steps"].items():
            print(f"  {step:<10} {seconds:>6.2f} {rows / seconds:>12,.0f}")
