"""Parquet -> lake. The lake layout lives here and nowhere else:

    {root}/{service}/month={YYYY-MM}/{service}_tripdata_{YYYY-MM}.parquet
    {root}/zones/taxi_zone_lookup.parquet

`[lake] root` is a local directory (the embedded default) or gs://bucket/prefix: the same tasks
serve both, the target type follows the root. One predictable path per service and month. The
`month=` folder is a hive-style partition key, so warehouses that read the lake (DuckDB here, a
BigQuery external table) get the source month as a column and can skip every other month's file.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import posixpath
import shutil
import tempfile
from typing import Iterator, Optional, Union

import luigi
import pyarrow.parquet as pq

from pipeline import catalog, settings
from pipeline.convert import ToParquet
from pipeline.dataset_task import DatasetTask, atomic_path
from pipeline.targets.gcs import SCHEME, GCSTarget

logger = logging.getLogger("pipeline.lake")

PARTITION_KEY = "month"

LakeTarget = Union[luigi.LocalTarget, GCSTarget]


def lake_root() -> str:
    return settings.lake().root


def is_remote() -> bool:
    return lake_root().startswith(SCHEME)


def _join(*parts: str) -> str:
    return posixpath.join(*parts) if is_remote() else os.path.join(*parts)


def lake_path(svc: catalog.Service, month: Optional[datetime.date]) -> str:
    name = svc.file_stem(month) + ".parquet"
    if svc.monthly:
        return _join(lake_root(), svc.name, f"{PARTITION_KEY}={catalog.month_str(month)}", name)
    return _join(lake_root(), svc.name, name)


def lake_glob(svc: catalog.Service) -> str:
    """Every month of a service in the lake."""
    if svc.monthly:
        return _join(lake_root(), svc.name, f"{PARTITION_KEY}=*", "*.parquet")
    return _join(lake_root(), svc.name, "*.parquet")


def lake_target(path: str) -> LakeTarget:
    return GCSTarget(path) if path.startswith(SCHEME) else luigi.LocalTarget(path)


@contextlib.contextmanager
def local_copy(target: LakeTarget) -> Iterator[str]:
    """A local path to the lake file: the file itself, or a checked download of the object that
    is removed afterwards (warehouses that load rows read the lake this way)."""
    if isinstance(target, luigi.LocalTarget):
        yield target.path
        return
    os.makedirs(settings.ingest().staging, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.ingest().staging, prefix="lake-") as tmp:
        path = os.path.join(tmp, posixpath.basename(target.path))
        target.download(path)
        yield path


class LakeFile(DatasetTask):
    """Put the month's Parquet file in the data lake."""

    def requires(self):
        return self.clone(ToParquet)

    def output(self):
        return lake_target(lake_path(self.svc, self.month))

    def run(self):
        src, target = self.input().path, self.output()
        logger.info("%s: putting %s in the lake at %s", self.label, src, target.path)
        self.report(0, 1, f"to the lake at {target.path}")
        if isinstance(target, GCSTarget):
            parquet = pq.ParquetFile(src)
            footer = {k.decode(): v.decode() for k, v in (parquet.schema_arrow.metadata or {}).items()}
            target.upload(src, {"rows": str(parquet.metadata.num_rows),
                                "source_sha256": footer.get("tlc.source_sha256", ""),
                                "source_url": footer.get("tlc.source_url", "")})
        else:
            with atomic_path(target, lake_root()) as tmp:
                shutil.copyfile(src, tmp)
                if os.path.getsize(tmp) != os.path.getsize(src):
                    raise OSError(f"{self.label}: copy to {tmp} is incomplete")
        self.report(1, 1, f"in the lake at {target.path}")
