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
import dataclasses
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
from pipeline.dataset_task import DatasetTask, SourcePin, atomic_path
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


@dataclasses.dataclass(frozen=True)
class LakeRecord:
    """What we know about a lake file: the Parquet footer's `tlc.*` keys, which a GCS object
    also carries as its metadata."""

    rows: int
    source_sha256: str
    source_url: str
    # The source's validators when it was downloaded ("" where the server sent none, or for
    # files written before they were recorded): what tells a republished file.
    source_size: str = ""
    source_etag: str = ""
    source_last_modified: str = ""

    def metadata(self) -> dict[str, str]:
        return {field.name: str(getattr(self, field.name)) for field in dataclasses.fields(self)}

    @classmethod
    def of(cls, values: dict[str, str]) -> LakeRecord:
        fields = {field.name for field in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in values.items() if k in fields}, "rows": int(values.get("rows") or 0)})


def lake_record(target: LakeTarget) -> LakeRecord:
    """The record of a lake file (or of a Parquet file in staging): from the object's metadata
    on GCS (no download), from the footer's `tlc.*` keys on disk."""
    if isinstance(target, GCSTarget):
        return LakeRecord.of(target.fs.stat(target.path).metadata or {})
    parquet = pq.ParquetFile(target.path)
    footer = {k.decode().removeprefix("tlc."): v.decode() for k, v in (parquet.schema_arrow.metadata or {}).items()}
    return LakeRecord.of({**footer, "rows": str(parquet.metadata.num_rows)})


class LakeFile(SourcePin, DatasetTask):
    """Put the month's Parquet file in the data lake (in place of an earlier one: readers see
    the old file or the new one, never a mix)."""

    def requires(self):
        return self.clone(ToParquet)

    def output(self):
        return lake_target(lake_path(self.svc, self.month))

    def complete(self):
        # Asked one by one when pinned (Reingest's few months); backfills ask unpinned, in bulk.
        target = self.output()
        return target.exists() and (not self.source_sha256 or lake_record(target).source_sha256 == self.source_sha256)

    def run(self):
        src, target = self.input().path, self.output()
        logger.info("%s: putting %s in the lake at %s", self.label, src, target.path)
        self.report(0, 1, f"to the lake at {target.path}")
        if isinstance(target, GCSTarget):
            target.upload(src, lake_record(luigi.LocalTarget(src)).metadata())
        else:
            with atomic_path(target, lake_root()) as tmp:
                shutil.copyfile(src, tmp)
                if os.path.getsize(tmp) != os.path.getsize(src):
                    raise OSError(f"{self.label}: copy to {tmp} is incomplete")
        self.report(1, 1, f"in the lake at {target.path}")
