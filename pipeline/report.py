"""The coverage report: for services and a range of months, where each month is and whether the
counts agree, from what the pipeline recorded (no download, nothing re-read from the source).

    python -m pipeline.report --services yellow,green,zones --first 2019-01 --last 2021-07 [--verify] [--png FILE]

Per month and service it shows the source file's size as recorded at download, the rows of the
Parquet file in staging and of the lake file (its record) and of its copy in each replica lake
(`[lake] replicas`: `replica 1`, ... in the order listed), and the rows each configured
warehouse's marker records; with --verify also the rows counted in DuckDB and Postgres
themselves. A month is in one of four states (`state`, the one place that decides it):

- `ok`: every place has it, with one count;
- `differs`: two places hold different counts;
- `missing`: some place lacks it while another has it, or no place has it although a later month
  of the service is somewhere: a gap, as the backfill treats it (it fails on such a month);
- `nowhere`: no place has it, and no later month of the service is anywhere either: not ingested
  yet (or not published yet), which is no problem, unless every line of the report is nowhere.

The exit code (`verdict`) is 1 when any month is missing or differs, so cron can run the report
after a backfill; 1 too, with one line saying what to run, when nothing of the range is anywhere
(a wrong lake, profile or range looks just like that); else 0. The staging area is a work area:
its copy is shown (`-` once cleaned) but never makes a month missing. --png draws the grid
(months x services, coloured by state, rows as bars); it needs the `report` extra (matplotlib).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Optional

from dateutil.relativedelta import relativedelta

from pipeline import catalog, settings
from pipeline.backfill import months_between
from pipeline.convert import ToParquet
from pipeline.download import Download, DownloadRecord
from pipeline.flows import SINKS
from pipeline.lake import LakeRecord, lake_path, lake_target, parquet_record
from pipeline.params import Month, Services, UsageError


@dataclasses.dataclass
class Line:
    service: str
    month: str  # "" for the zones
    source_size: Optional[int] = None  # bytes, as recorded at download (None: nothing recorded)
    counts: dict[str, Optional[int]] = dataclasses.field(default_factory=dict)  # place -> rows (None: not there)
    # A later month of the service is somewhere: this one, if nowhere, is a gap (see `state`).
    before_present: bool = False

    @property
    def anywhere(self) -> bool:
        return any(n is not None for n in self.counts.values())

    @property
    def state(self) -> str:
        present = [n for n in self.counts.values() if n is not None]
        if not present:
            return "missing" if self.before_present else "nowhere"
        if len(present) < len(self.counts):
            return "missing"
        return "ok" if len(set(present)) == 1 else "differs"


def mark_gaps(lines: list[Line]) -> None:
    """Mark each line that lies before a month of its service that is somewhere (the backfill's
    rule: a month missing before a month done is a gap, not the future). ``lines`` are in month
    order within each service."""
    for service in {line.service for line in lines}:
        own = [line for line in lines if line.service == service]
        last = max((i for i, line in enumerate(own) if line.anywhere), default=0)
        for line in own[:last]:
            line.before_present = True


# Each state, in the order the summary counts them, with its colour in the grid.
COLOURS = {"ok": "#4caf50", "missing": "#ffb300", "differs": "#e53935", "nowhere": "#e0e0e0"}


def verdict(lines: list[Line], services: str, first: str, last: str) -> tuple[int, str]:
    """The exit code and the report's last line: a count per state; when no line is anywhere,
    that and what to run instead."""
    if not any(line.anywhere for line in lines):
        return 1, (
            f"nothing of {services} {first}..{last} is ingested anywhere (the lake at {settings.lake().root}, "
            f"sinks: {settings.ingest().sinks}): check the profile (LUIGI_CONFIG_PATH) and the range, or ingest it: "
            f"luigi --module pipeline IngestRange --services {services} --first {first} --last {last}"
        )
    counts = ", ".join(f"{sum(1 for line in lines if line.state == s)} {s}" for s in COLOURS)
    return (1 if any(line.state in ("missing", "differs") for line in lines) else 0), f"{len(lines)} month(s): {counts}"


def counted_sinks(verify: bool) -> list[str]:
    """The configured sinks --verify counts in: those that count at no cost (not BigQuery, where
    a count is a billed query job; its markers are shown)."""
    return [sink for sink in settings.ingest().sink_names() if verify and SINKS[sink](service="zones").output().countable]


def replicas() -> dict[str, str]:
    """Each replica lake by the name its column has: `replica 1`, ... in the order listed."""
    return {f"replica {i}": root for i, root in enumerate(settings.lake().replica_roots(), 1)}


def places(verify: bool) -> list[str]:
    return ["staged", "lake", *replicas(), *settings.ingest().sink_names(), *(f"{sink} counted" for sink in counted_sinks(verify))]


def lake_record(path: str, root: Optional[str] = None) -> Optional[LakeRecord]:
    """The record of the lake file at ``path`` (in the lake at ``root``), or None when it is not there."""
    target = lake_target(path, root)
    return target.record() if target.exists() else None


def staged_rows(download: Download) -> Optional[int]:
    try:
        return parquet_record(download.clone(ToParquet).output().path).rows
    except OSError:
        return None


def recorded_size(download: Download, lake) -> Optional[int]:
    """The source file's size in bytes as the pipeline recorded it: the lake file's record, else
    the download's."""
    if lake is not None and lake.source_size:
        return int(lake.source_size)
    meta = download.output()["meta"]
    return DownloadRecord.read(meta.path).size if meta.exists() else None


def report(services: list[str], months: list, verify: bool) -> list[Line]:
    sinks = settings.ingest().sink_names()
    # Each sink's marker, for where its marker table is: the zones' stands for every month's.
    markers = {sink: SINKS[sink](service="zones").output() for sink in sinks}
    marked = {sink: type(m).marked_rows(m.where()) for sink, m in markers.items()}
    counted = {
        sink: {service: type(markers[sink]).counted_rows(markers[sink].where(), service) for service in services}
        for sink in counted_sinks(verify)
    }
    copies = replicas()
    lines = []
    for service in services:
        svc = catalog.SERVICES[service]
        for month in months if svc.monthly else [None]:
            download = Download(service=service, month=month)
            key = catalog.month_key(month)
            lake = lake_record(lake_path(svc, month))
            line = Line(service, key, recorded_size(download, lake))
            line.counts["staged"] = staged_rows(download)
            line.counts["lake"] = lake.rows if lake else None
            for place, root in copies.items():
                copy = lake_record(lake_path(svc, month, root), root)
                line.counts[place] = copy.rows if copy else None
            for sink in sinks:
                line.counts[sink] = marked[sink].get((service, key))
            for sink, by_service in counted.items():
                line.counts[f"{sink} counted"] = by_service[service].get(key)
            if line.counts["staged"] is None:  # staging is a work area: cleaning it loses nothing
                del line.counts["staged"]
            lines.append(line)
    mark_gaps(lines)
    return lines


def number(n: Optional[int]) -> str:
    """A count or a size as the table shows it: thousands separated, `-` where there is none."""
    return "-" if n is None else f"{n:,}"


def table(lines: list[Line], verify: bool) -> str:
    """One row a line: the names left-aligned, the numbers right-aligned, every cell filled."""
    columns = ["service", "month", "source bytes", *places(verify), "state"]
    rows = [
        [line.service, line.month or "-", number(line.source_size), *(number(line.counts.get(p)) for p in places(verify)), line.state]
        for line in lines
    ]
    widths = [max(len(x) for x in column) for column in zip(columns, *rows)]
    numeric = range(2, len(columns) - 1)
    return "\n".join(
        "  ".join(x.rjust(w) if i in numeric else x.ljust(w) for i, (x, w) in enumerate(zip(row, widths))).rstrip()
        for row in [columns, *rows]
    )


def picture(lines: list[Line], path: str) -> None:
    """The grid: one column a month, one row a service, coloured by state, with the lake's rows
    as a bar in each cell."""
    try:  # the report extra, for --png alone
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch, Rectangle
    except ImportError:
        raise UsageError("--png needs matplotlib: pip install -e '.[report]'") from None
    services = list(dict.fromkeys(line.service for line in lines))
    months = sorted({line.month for line in lines if line.month})
    most = max((n for line in lines for n in line.counts.values() if n), default=1)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(months) + 2), 0.7 * len(services) + 1.5))
    for line in lines:
        y = services.index(line.service)
        xs = [months.index(line.month)] if line.month else range(len(months) or 1)
        for x in xs:
            ax.add_patch(Rectangle((x, y), 0.95, 0.9, color=COLOURS[line.state]))
            rows = line.counts.get("lake") or 0
            if rows:  # from the cell's foot up (the y axis is inverted)
                height = 0.7 * rows / most
                ax.add_patch(Rectangle((x + 0.1, y + 0.8 - height), 0.15, height, color="#263238"))
    ax.set_xlim(0, max(len(months), 1))
    ax.set_ylim(0, len(services))
    ax.set_xticks([i + 0.5 for i in range(len(months))], months, rotation=90, fontsize=7)
    ax.set_yticks([i + 0.45 for i in range(len(services))], services)
    ax.invert_yaxis()  # the first service on top
    ax.legend(handles=[Patch(color=c, label=s) for s, c in COLOURS.items()], loc="upper left", bbox_to_anchor=(1, 1), fontsize=8)
    ax.set_title("Where each month is (bar: rows in the lake)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=Services().check, default=",".join(catalog.SERVICES), help="comma-separated, zones included")
    parser.add_argument("--first", type=Month().check, required=True, help="YYYY-MM, included")
    parser.add_argument("--last", type=Month().check, required=True, help="YYYY-MM, included")
    parser.add_argument("--verify", action="store_true", help="also count the rows in DuckDB and Postgres themselves")
    parser.add_argument("--png", help="write the grid to this PNG file (needs the report extra)")
    args = parser.parse_args(argv)
    first, last = Month().parse(args.first), Month().parse(args.last)
    if first > last:
        parser.error(f"--first {args.first} is after --last {args.last}")
    months = [first + relativedelta(months=n) for n in range(months_between(first, last) + 1)]
    lines = report(Services.names(args.services), months, args.verify)
    code, last_line = verdict(lines, args.services, args.first, args.last)
    if any(line.anywhere for line in lines):  # else a table of nothing would bury the one line that matters
        for place, root in replicas().items():
            print(f"{place}: {root}")
        print(table(lines, args.verify))
        if args.png:
            try:
                picture(lines, args.png)
            except UsageError as e:
                parser.error(str(e))
            print(f"wrote {args.png}")
    print(last_line)
    return code


if __name__ == "__main__":
    sys.exit(main())
