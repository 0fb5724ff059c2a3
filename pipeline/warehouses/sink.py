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
from typing import ClassVar, Union

from pipeline.dataset_task import DatasetTask, SourcePin
from pipeline.errors import PipelineError
from pipeline.lake import LakeRecord, LakeTarget, lake_kind, lake_root
from pipeline.lake_file import LakeFile
from pipeline.targets.marker import MonthMarker

logger = logging.getLogger("pipeline.sink")

# The kinds of lake a sink may read: where from, and the root that is one.
LAKE_KINDS = {
    "local": ("local disk", "a local folder"),
    "gcs": ("GCS", "gs://bucket/prefix (config/gcp.cfg)"),
    "s3": ("S3", "s3://bucket/prefix"),
    "azure": ("Azure Blob Storage", "az://container/prefix"),
}
# A sink's `reads`: "any", one kind of LAKE_KINDS, or several.
Reads = Union[str, tuple[str, ...]]


class WrongLake(PipelineError, ValueError):
    """The sink cannot read the configured lake (a local one, a gs://, s3:// or az:// one)."""

    def __init__(self, label: str, sink: str, reads: Reads, root: str):
        self.label, self.sink, self.reads, self.root = label, sink, reads, root
        kinds = (reads,) if isinstance(reads, str) else reads
        where, roots = (_listed([LAKE_KINDS[kind][i] for kind in kinds]) for i in (0, 1))
        super().__init__(
            f"{label}: the {sink} sink reads the lake from {where}, and [lake] root is {root}; "
            f"set [lake] root to {roots}, or leave {sink} out of [ingest] sinks"
        )


def _listed(names: list[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def require_lake(label: str, sink: str, reads: Reads) -> None:
    """Refuse a lake of a kind the sink ``sink`` cannot read (``reads``: any, or the kinds it
    reads: local, gcs, s3, azure)."""
    if reads != "any" and lake_kind() not in ((reads,) if isinstance(reads, str) else reads):
        raise WrongLake(label, sink, reads, lake_root())


class Sink(SourcePin, DatasetTask):
    """A warehouse sink: see the module."""

    name: ClassVar[str]  # as [ingest] sinks names it
    reads: ClassVar[Reads] = "any"  # the lakes it reads: any, or their kinds (local, gcs, s3, azure)

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
        self.inputs_here()
        lake = self.input()
        record = lake.record()
        logger.info("%s: loading %s into the %s warehouse", self.label, lake.path, self.name)
        started = time.monotonic()
        where = self.load(lake, record)
        seconds = time.monotonic() - started
        rate = record.rows / max(seconds, 1e-9)
        logger.info("%s: %s rows loaded into %s (%.1f s, %.0f rows/s)", self.label, f"{record.rows:,}", where, seconds, rate)
        self.report(1, 1, f"{record.rows:,} rows in {where}")
