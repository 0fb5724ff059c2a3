"""The lake steps: ToParquet's file in staging -> the lake, as the month's one file (LakeFile),
and the lake's file -> each replica lake of `[lake] replicas` (ReplicaFile). Where a file goes and
what it records are pipeline/lake.py's (the layout, LakeRecord, the local and object-store
targets); this module is the tasks alone, so that the lake's layout sits below the steps that use
it."""

from __future__ import annotations

import logging

import luigi

from pipeline.convert import ToParquet
from pipeline.dataset_task import DatasetTask, SourcePin
from pipeline.lake import LakeTarget, lake_path, lake_target

# The name its lines had when the task lived in lake.py: a logging setup that names it keeps working.
logger = logging.getLogger("pipeline.lake")


class _PinnedFile(SourcePin, DatasetTask):
    """A lake file whose output is complete when it is there and, when pinned, made from the
    pinned source file (what its record says)."""

    def complete(self):
        # Asked one by one when pinned (Reingest's few months); backfills ask unpinned, in bulk.
        target = self.output()
        return target.exists() and (not self.source_sha256 or target.record().source_sha256 == self.source_sha256)


class LakeFile(_PinnedFile):
    """Put the month's Parquet file in the data lake (in place of an earlier one: readers see
    the old file or the new one, never a mix)."""

    def requires(self):
        return self.clone(ToParquet)

    def output(self) -> LakeTarget:
        return lake_target(lake_path(self.svc, self.month))

    def run(self):
        self.inputs_here()
        src, target = self.input().path, self.output()
        logger.info("%s: putting %s in the lake at %s", self.label, src, target.path)
        self.report(0, 1, f"to the lake at {target.path}")
        target.put(src)
        self.report(1, 1, f"in the lake at {target.path}")


class ReplicaFile(_PinnedFile):
    """Copy the month's lake file to a replica lake (one of `[lake] replicas`), with the same
    guarantees as the lake's own (whole or nothing, checked, its record as metadata). Each copy is
    a step of its own with its own completeness: a replica added later gets exactly the months it
    lacks, and a Reingest (a pinned source) replaces the copy too."""

    replica = luigi.Parameter(description="The replica lake's root: one of [lake] replicas")

    def requires(self):
        return self.clone(LakeFile)

    def output(self) -> LakeTarget:
        return lake_target(lake_path(self.svc, self.month, self.replica), self.replica)

    def run(self):
        self.inputs_here()
        lake, target = self.input(), self.output()
        logger.info("%s: copying %s to the replica lake at %s", self.label, lake.path, target.path)
        self.report(0, 1, f"to the replica at {target.path}")
        with lake.local_path() as path:
            target.put(path)
        self.report(1, 1, f"in the replica at {target.path}")
