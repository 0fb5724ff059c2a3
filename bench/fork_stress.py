"""Stress: many short tasks in forked task processes, to show no worker hangs at a fork.

luigi forks a process for each task when --workers is more than 1, while its worker runs its
keep-alive thread (Python 3.12 and later warn: "This process is multi-threaded, use of fork() may
lead to deadlocks in the child"). This runs `IngestRange` of the course's months (yellow and green
2019-01..2021-07 and the zones: 62 months, some hundreds of short tasks, small real samples from the test mirror) with
--workers N and a local scheduler, ROUNDS times, each on a fresh lake and under a time limit, with
whatever Python runs it, and prints per round: exit code, seconds, fork warnings, or HUNG.

    python bench/fork_stress.py --rounds 3 --workers 4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import mirror as mirrors  # noqa: E402  (the test suite's mirror and server)
import servers  # noqa: E402

WARNING = "use of fork() may lead to deadlocks"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--limit", type=int, default=600, help="seconds a round may take before it counts as hung")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fork-stress-"))
    built = mirrors.build(root / "mirror", mirrors.files())
    luigi = str(Path(sys.executable).with_name("luigi"))
    print(f"Python {sys.version.split()[0]}, --workers {args.workers}")
    with servers.http_mirror(built) as url:
        for round_ in range(args.rounds):
            work = root / f"round{round_}"
            command = [luigi, "--module", "pipeline", "IngestRange", "--services", "yellow,green,zones", "--first", "2019-01",
                       "--last", "2021-07", "--local-scheduler", "--workers", str(args.workers), "--no-lock",
                       "--source-base-url", f"{url}/course", "--lake-root", str(work / "lake"),
                       "--ingest-staging", str(work / "staging"), "--duckdb-path", str(work / "warehouse.duckdb")]  # fmt: skip
            env = {**os.environ, "PYTHONWARNINGS": "default::DeprecationWarning"}  # the warning, shown once per process
            started = time.monotonic()
            try:
                done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.limit, env=env)
            except subprocess.TimeoutExpired:
                print(f"round {round_}: HUNG (no end in {args.limit} s)", flush=True)
                continue
            seconds = time.monotonic() - started
            print(f"round {round_}: exit {done.returncode}, {seconds:.0f} s, fork warnings {done.stderr.count(WARNING)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
