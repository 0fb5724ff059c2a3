"""The lake step: ToParquet's file in staging -> the lake, as the month's one file. Where it goes
and what it records are pipeline/lake.py's (the layout, LakeRecord, the local and GCS targets);
this module is the task alone, so that the lake's layout sits below the steps that use it."""

from __future__ import annotations

import logging

from pipeline.convert import ToParquet
from pipeline.dataset_task import DatasetTask, SourcePin
from pipeline.lake import LakeTarget, lake_path, lake_target

# The name its lines had when the task lived in lake.py: a logging setup that names it keeps working.
logger = logging.getLogger("pipeline.lake")


class LakeFile(SourcePin, DatasetTask):
    """Put the month's Parquet file in the data lake (in place of an earlier one: readers see
    the old file or the new one, never a mix)."""

    def requires(self):
        return self.clone(ToParquet)

    def output(self) -> LakeTarget:
        return lake_target(lake_path(self.svc, self.month))

    def complete(self):
        # Asked one by one when pinned (Reingest's few months); backfills ask unpinned, in bulk.
        target = self.output()
        return target.exists() and (not self.source_sha256 or target.record().source_sha256 == self.source_sha256)

    def run(self):
        self.inputs_here()
        src, target = self.input().path, self.output()
        logger.info("%s: putting %s in the lake at %s", self.label, src, target.path)
        self.report(0, 1, f"to the lake at {target.path}")
        target.put(src)
        self.report(1, 1, f"in the lake at {target.path}")
