"""What the benchmarks share: a full-size month built from real rows, and running each approach
in its own process so that its peak RSS is its own."""

from __future__ import annotations

import gzip
import json
import os
import resource
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


def measure(approach: Callable[[], tuple[int, dict]]) -> None:
    """In a child process: run the approach, print rows, seconds, peak RSS and step times as JSON."""
    started = time.perf_counter()
    rows, steps = approach()
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": peak_mb, "steps": steps}))


def run_child(script: str, name: str, args: list[str], env: dict | None = None) -> dict:
    """Run ``script --child name args...`` and return what its measure() printed."""
    out = subprocess.run([sys.executable, script, "--child", name, *args], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))
    if out.returncode:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(results: dict[str, dict], rows: int, ours: str = "pipeline") -> None:
    """One line per approach: wall time, rows/s, peak RSS, and each one's ratio to ours."""
    mine = results.get(ours)
    print(f"{'approach':<10} {'wall s':>8} {'rows/s':>12} {'peak RSS MB':>12}   vs {ours} (rows/s, memory)")
    for name, r in results.items():
        if r["rows"] != rows:
            raise SystemExit(f"{name} produced {r['rows']} rows, expected {rows}")
        ratio = ""
        if mine and name != ours:
            ratio = (f"   {ours} does {r['seconds'] / mine['seconds']:.2f}x its rows/s, "
                     f"uses {mine['peak_mb'] / r['peak_mb']:.2f}x its memory")
        print(f"{name:<10} {r['seconds']:>8.2f} {rows / r['seconds']:>12,.0f} {r['peak_mb']:>12.0f}{ratio}")
        for step, seconds in r["steps"].items():
            print(f"  {step:<10} {seconds:>6.2f} {rows / seconds:>12,.0f}")
