"""What every warehouse sink is: a step that puts a lake file into one warehouse and marks it there.

A sink declares its name (as `[ingest] sinks` spells it), which kind of lake it can read, its
marker (`output`: the row in the warehouse's marker table that says the month is there) and its
load (`load`: the rows in, counted against the lake file's, and the marker written with them, or
nothing). The rest is here, once: it requires the lake file, refuses a lake it cannot read, logs
and reports the load with its time.
"""

from __future__ import annotations

import logging
import time
from typing import ClassVar

from pipeline.dataset_task import DatasetTask, SourcePin
from pipeline.errors import PipelineError
from pipeline.lake import LakeRecord, LakeTarget, is_remote, lake_root
from pipeline.lake_file import LakeFile
from pipeline.targets.marker import MonthMarker

logger = logging.getLogger("pipeline.sink")

# Which lakes a sink reads: where from, and what to do when the configured lake is the other kind.
LAKE_KINDS = {
    "local": ("local disk", "set [ingest] sinks to the warehouses that read a gs:// lake (bigquery, postgres) or none"),
    "gcs": ("GCS", "set it to gs://bucket/prefix (config/gcp.cfg)"),
}


class WrongLake(PipelineError, ValueError):
    """The sink cannot read the configured lake (a local one, a gs:// one)."""

    def __init__(self, label: str, sink: str, reads: str, root: str):
        self.label, self.sink, self.reads, self.root = label, sink, reads, root
        where, advice = LAKE_KINDS[reads]
        super().__init__(f"{label}: the {sink} sink reads the lake from {where}, and [lake] root is {root}; {advice}")


def require_lake(label: str, sink: str, reads: str) -> None:
    """Refuse a lake of the kind the sink ``sink`` cannot read (``reads``: local, gcs or any)."""
    if reads != "any" and is_remote() != (reads == "gcs"):
        raise WrongLake(label, sink, reads, lake_root())


class Sink(SourcePin, DatasetTask):
    """A warehouse sink: see the module."""

    name: ClassVar[str]  # as [ingest] sinks names it
    reads: ClassVar[str] = "any"  # the lakes it reads: local, gcs or any

    def requires(self):
        return self.clone(LakeFile)

    def output(self) -> MonthMarker:
        raise NotImplementedError

    def load(self, lake: LakeTarget, record: LakeRecord) -> str:
        """Put the lake file's ``record.rows`` rows into the warehouse and write the marker (with
        them, where the warehouse has transactions), or raise having marked nothing; where the rows
        are now, for the log."""
        raise NotImplementedError

    def run(self):
        require_lake(self.label, self.name, self.reads)
        lake = self.input()
        record = lake.record()
        logger.info("%s: loading %s into the %s warehouse", self.label, lake.path, self.name)
        started = time.monotonic()
        where = self.load(lake, record)
        seconds = time.monotonic() - started
        rate = record.rows / max(seconds, 1e-9)
        logger.info("%s: %s rows loaded into %s (%.1f s, %.0f rows/s)", self.label, f"{record.rows:,}", where, seconds, rate)
        self.report(1, 1, f"{record.rows:,} rows in {where}")
