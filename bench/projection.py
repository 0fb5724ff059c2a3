"""The real-size projection: how long the whole TLC history takes, and what binds.

    python bench/projection.py --measure           # measure the rates on this machine (minutes)
    python bench/projection.py [--png docs/history-projection.png]

The history is the TLC's own list of its files (bench/history_metadata/: 487 files 2009-01..
2024-05, each with its real rows and bytes). The rates are measured on this machine by
bench/parquet_step.py's pipeline (the real Download and ToParquet tasks) on a full-size month of
each shape, the largest the TLC has published:

    yellow       16,146,923 rows  (2012-03)  the TLC's Parquet, modern layout
    yellow-2009  14,092,413 rows  (2009-01)  the legacy layout, every trip located in the zone shapes
    fhv          23,904,082 rows  (2018-12)  7 columns
    fhvhv        23,864,598 rows  (2019-03)  24 columns

--measure writes them, with their peak RSS, to bench/projection.json. The per-task overhead and
luigid's CPU per task come from bench/whole_history.py (its figures, in the same file, under
"history"). Then, per file: CPU seconds = tasks x overhead + rows / rate of its shape, network
seconds = bytes / bandwidth. A machine runs 2 workers on its 2 cores, so one month downloads
while another converts: its time is the larger of the CPU time over what the second worker
gains (measured by whole_history.py: a month's conversion already uses more than one core) and
the network time. N machines share the
files against one luigid, whose CPU per task is the third bound; a Postgres sink (one server)
is the fourth, at the load rate bench/postgres_load.py measures, times what up to [resources]
postgres loads at once gain over one (bench/postgres_parallel.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

from common import ROOT

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "projection.json"
POSTGRES_LOADS = 2  # luigi.cfg's [resources] postgres
SHAPES = {"yellow": 16_146_923, "yellow-2009": 14_092_413, "fhv": 23_904_082, "fhvhv": 23_864_598}
TASKS_PER_MONTH = 4  # Download, ToParquet, LakeFile, a sink (and IngestMonth, a wrapper)
BANDWIDTHS = {"100 Mbit/s": 100e6 / 8, "1 Gbit/s": 1e9 / 8}
MACHINES = (1, 2, 4, 8, 16)


def measure() -> dict:
    figures = {}
    for shape, rows in SHAPES.items():
        command = [
            sys.executable,
            str(HERE / "parquet_step.py"),
            "--source",
            "tlc",
            "--service",
            shape,
            "--rows",
            str(rows),
            "--only",
            "pipeline",
        ]
        out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        line = next(line for line in out.splitlines() if line.startswith("pipeline "))
        seconds, rate, peak = line.split()[1:4]
        figures[shape] = {"rows": rows, "seconds": float(seconds), "rows_per_s": float(rate.replace(",", "")), "peak_mb": float(peak)}
        print(f"{shape:<12} {rows:>12,} rows  {float(seconds):6.1f} s  {rate:>12} rows/s  {peak} MB")
    return figures


def shape_of(service: str, month: datetime.date) -> str:
    return (
        "yellow-2009"
        if service == "yellow" and month.year <= 2010
        else "fhvhv"
        if service == "fhvhv"
        else "fhv"
        if service == "fhv"
        else "yellow"
    )


def project(results: dict) -> tuple[list[str], dict]:
    import whole_history

    files = whole_history.published()
    rates, history = results["rates"], results["history"]
    # What a second worker gains on one machine, as whole_history.py measured it (a month's
    # conversion already runs on more than one core; a third and fourth worker gain nothing).
    walls = history["wall_by_workers"]
    workers_gain = walls["1"] / min(walls.values())
    cpu = sum(f["rows"] / rates[shape_of(f["service"], f["month"])]["rows_per_s"] for f in files)
    cpu += len(files) * TASKS_PER_MONTH * history["seconds_per_task"]
    total_bytes = sum(f["bytes"] for f in files)
    total_rows = sum(f["rows"] for f in files)
    luigid = len(files) * (TASKS_PER_MONTH + 1) * history["luigid_cpu_per_task"]
    # What loads at once up to [resources] postgres (2, luigi.cfg) gain over one, as
    # bench/postgres_parallel.py measured it (never less than one load alone).
    parallel = results["postgres_parallel"]["rows_per_s_by_loads"]
    loads_gain = max(parallel[n] for n in parallel if int(n) <= POSTGRES_LOADS) / parallel["1"]
    postgres = total_rows / (results["postgres"]["rows_per_s"] * loads_gain)
    lines = [
        f"{len(files)} files, {total_rows / 1e9:.2f} B rows, {total_bytes / 1e9:.1f} GB; {cpu / 3600:.2f} hours of one worker, "
        f"{workers_gain:.2f}x with 2 workers, "
        f"luigid {luigid / 60:.1f} CPU minutes, a Postgres sink {postgres / 3600:.1f} hours",
        "",
        "| machines (2 cores each) | " + " | ".join(f"{name} each" for name in BANDWIDTHS) + " | 1 Gbit/s each, and a Postgres sink |",
        "|---|" + "---|" * (len(BANDWIDTHS) + 1),
    ]
    grid = {}
    for n in MACHINES:
        cells = []
        for name, bandwidth in (*BANDWIDTHS.items(), ("postgres", BANDWIDTHS["1 Gbit/s"])):
            bounds = {"CPU": cpu / (workers_gain * n), "network": total_bytes / (bandwidth * n), "luigid": luigid}
            if name == "postgres":
                bounds["Postgres"] = postgres
            binds = max(bounds, key=bounds.get)
            grid[(n, name)] = bounds[binds] / 3600
            cells.append(
                f"{bounds[binds] * 60 / 3600:.0f} min ({binds})" if bounds[binds] < 3600 else f"{bounds[binds] / 3600:.1f} h ({binds})"
            )
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines, grid


def chart(grid: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for name in (*BANDWIDTHS, "postgres"):
        label = "1 Gbit/s, and a Postgres sink" if name == "postgres" else f"{name} per machine"
        ax.plot(MACHINES, [grid[(n, name)] for n in MACHINES], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(MACHINES, [str(n) for n in MACHINES])
    ax.set_xlabel("machines (2 cores each), one luigid")
    ax.set_ylabel("hours for the whole history")
    ax.set_title("NYC TLC 2009-01..2024-05: 487 files, 3.69 B rows, 65.5 GB", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", action="store_true", help="measure the rates on this machine first (bench/projection.json)")
    parser.add_argument("--png", type=Path, help="write the chart here")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.measure:
        results["rates"] = measure()
        results["measured"] = datetime.date.today().isoformat()
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    if "rates" not in results or "history" not in results:
        raise SystemExit(f"{RESULTS} lacks the rates (run with --measure) or the history figures (bench/whole_history.py)")
    lines, grid = project(results)
    print("\n".join(lines))
    if args.png:
        chart(grid, args.png)
        print(f"chart: {args.png}")


if __name__ == "__main__":
    sys.exit(main())
