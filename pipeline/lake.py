"""Parquet -> lake. The lake layout lives here and nowhere else:

    {root}/{service}/month={YYYY-MM}/{service}_tripdata_{YYYY-MM}.parquet
    {root}/zones/taxi_zone_lookup.parquet

One predictable path per service and month. The `month=` folder is a hive-style partition key,
so warehouses that read the lake (DuckDB here, a BigQuery external table later) get the source
month as a column and can skip every other month's file.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
from typing import Optional

import luigi

from pipeline import catalog, settings
from pipeline.convert import ToParquet
from pipeline.dataset_task import DatasetTask, atomic_path

logger = logging.getLogger("pipeline.lake")

PARTITION_KEY = "month"


def lake_root() -> str:
    root = settings.lake().root
    if "://" in root:
        raise ValueError(f"[lake] root = {root}: only a local directory is supported so far")
    return root


def lake_path(svc: catalog.Service, month: Optional[datetime.date]) -> str:
    name = svc.file_stem(month) + ".parquet"
    if svc.monthly:
        return os.path.join(lake_root(), svc.name, f"{PARTITION_KEY}={catalog.month_str(month)}", name)
    return os.path.join(lake_root(), svc.name, name)


def lake_glob(svc: catalog.Service) -> str:
    """Every month of a service in the lake."""
    if svc.monthly:
        return os.path.join(lake_root(), svc.name, f"{PARTITION_KEY}=*", "*.parquet")
    return os.path.join(lake_root(), svc.name, "*.parquet")


class LakeFile(DatasetTask):
    """Put the month's Parquet file in the data lake."""

    def requires(self):
        return self.clone(ToParquet)

    def output(self):
        return luigi.LocalTarget(lake_path(self.svc, self.month))

    def run(self):
        src, dst = self.input().path, self.output().path
        logger.info("%s: copying %s to the lake at %s", self.label, src, dst)
        self.report(0, 1, "copying to the lake")
        with atomic_path(self.output()) as tmp:
            shutil.copyfile(src, tmp)
            if os.path.getsize(tmp) != os.path.getsize(src):
                raise OSError(f"{self.label}: copy to {tmp} is incomplete")
        self.report(1, 1, f"in the lake at {dst}")
