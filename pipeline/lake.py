"""The lake: its layout, what a lake file records, and the targets that hold one. The layout lives
here and nowhere else:

    {root}/{service}/month={YYYY-MM}/{service}_tripdata_{YYYY-MM}.parquet
    {root}/zones/taxi_zone_lookup.parquet
    {root}/zone_shapes/taxi_zones.parquet       (the zones' polygons, for the legacy months)

`[lake] root` is a local directory (the embedded default), gs://bucket/prefix, s3://bucket/prefix or
az://container/prefix: the same tasks serve all four, the target type follows the root (lake_target), and every kind of
lake file offers the same operations (put, record, local_path). What a lake file records of its source (LakeRecord: rows,
source sha256 and URL, the source's validators) is the Parquet footer's `tlc.*` keys, written
(footer) and read (parquet_record) here and nowhere else. One predictable path per service and month. The
`month=` folder is a hive-style partition key, so warehouses that read the lake (DuckDB here, a
BigQuery external table) get the source month as a column and can skip every other month's file.

The step that puts a month in the lake, LakeFile, is pipeline/lake_file.py: it sits above convert,
this module below it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import posixpath
import shutil
import tempfile
from typing import Any, Iterator, Mapping, Optional, Union

import luigi
import pyarrow.parquet as pq

from pipeline import catalog, settings
from pipeline.dataset_task import atomic_path
from pipeline.targets import azure, gcs, s3
from pipeline.targets.azure import AzureTarget
from pipeline.targets.gcs import GCSTarget
from pipeline.targets.s3 import S3Target

PARTITION_KEY = "month"
# The Parquet footer's keys that the pipeline writes start with it (other writers' keys, pandas'
# or Arrow's, do not clash).
FOOTER_PREFIX = "tlc."


def lake_root() -> str:
    return settings.lake().root


def lake_kind(root: Optional[str] = None) -> str:
    """Which kind of lake ``root`` (default: `[lake] root`) is: local, or an OBJECT_LAKES kind
    (what a sink's `reads` names)."""
    return _object_lake(root or lake_root())[0]


def is_remote() -> bool:
    return lake_kind() != "local"


def _join(root: str, *parts: str) -> str:
    """``parts`` under ``root``: a URL's path for a lake in an object store, else the system's."""
    return (posixpath.join if lake_kind(root) != "local" else os.path.join)(root.rstrip("/"), *parts)


def lake_path(svc: catalog.Service, month: Optional[datetime.date], root: Optional[str] = None) -> str:
    """Where the month's file is in the lake at ``root`` (default: `[lake] root`; a replica's
    files are laid out the same way)."""
    name = svc.file_stem(month) + ".parquet"
    if svc.monthly:
        return _join(root or lake_root(), svc.name, f"{PARTITION_KEY}={catalog.month_str(month)}", name)
    return _join(root or lake_root(), svc.name, name)


def shapes_path(shapes: catalog.Shapes) -> str:
    """The zone shapes' one file: `{root}/zone_shapes/taxi_zones.parquet`."""
    return _join(lake_root(), shapes.name, posixpath.splitext(shapes.shapefile)[0] + ".parquet")


def service_folder(svc: catalog.Service) -> str:
    """The folder of the service's files; for a monthly service, its `month=` folders under it
    are the hive partitions (what a hive-partitioned reader is given as its prefix)."""
    return _join(lake_root(), svc.name)


def lake_glob(svc: catalog.Service) -> str:
    """Every month of a service in the lake, as one pattern (DuckDB's read_parquet)."""
    if svc.monthly:
        return _join(service_folder(svc), f"{PARTITION_KEY}=*", "*.parquet")
    return _join(service_folder(svc), "*.parquet")


def lake_wildcard(svc: catalog.Service) -> str:
    """Every file of a service in the lake, with the single trailing `*` that BigQuery's source
    URIs allow (it matches across folders)."""
    return _join(service_folder(svc), "*") if svc.monthly else lake_glob(svc)


@dataclasses.dataclass(frozen=True)
class LakeRecord:
    """What we know about a lake file: the Parquet footer's `tlc.*` keys, which a GCS, S3 or
    Azure object also carries as its metadata."""

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
        known: dict[str, Any] = {k: v for k, v in values.items() if k in fields}
        return cls(**{**known, "rows": int(values.get("rows") or 0)})


def footer(values: Mapping[str, object]) -> dict[str, str]:
    """``values`` (a LakeRecord's fields, and the service and month) as the `tlc.*` keys of a
    Parquet footer: what a file ToParquet or ZoneShapes writes carries, and parquet_record reads."""
    return {f"{FOOTER_PREFIX}{k}": str(v) for k, v in values.items()}


def parquet_record(path: str) -> LakeRecord:
    """The record a Parquet file written with its footer carries: its footer's `tlc.*` keys and
    its row count. The one place a lake file's row count and source are read (a GCS object
    carries the same record as its metadata, written from here)."""
    parquet = pq.ParquetFile(path)
    keys = {k.decode().removeprefix(FOOTER_PREFIX): v.decode() for k, v in (parquet.schema_arrow.metadata or {}).items()}
    return LakeRecord.of({**keys, "rows": str(parquet.metadata.num_rows)})


class LocalLakeFile(luigi.LocalTarget):
    """A lake file on local disk, in the lake at ``root`` (default: `[lake] root`). The same
    three operations as GCSLakeFile, so that no step asks which kind of lake it has."""

    def __init__(self, path: str, root: Optional[str] = None):
        super().__init__(path)
        self.root = root or lake_root()

    def put(self, src: str) -> None:
        """``src`` (a Parquet file in staging) in place of this file, by an atomic rename."""
        with atomic_path(self, self.root) as tmp:
            shutil.copyfile(src, tmp)
            if os.path.getsize(tmp) != os.path.getsize(src):
                raise OSError(f"copy of {src} to {tmp} is incomplete")

    def record(self) -> LakeRecord:
        return parquet_record(self.path)

    @contextlib.contextmanager
    def local_path(self) -> Iterator[str]:
        """The file's path on local disk: the file itself."""
        yield self.path


class _ObjectLakeFile:
    """What a lake file in an object store does the same whichever store: its target class gives
    upload(path, metadata) and download(path)."""

    path: str

    def put(self, src: str) -> None:
        """``src`` uploaded whole (an object replaces an earlier one atomically), with its record
        as the object's metadata."""
        self.upload(src, parquet_record(src).metadata())  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def local_path(self) -> Iterator[str]:
        """A checked download of the object in the staging area, removed afterwards (warehouses
        that load rows read the lake this way)."""
        os.makedirs(settings.ingest().staging, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=settings.ingest().staging, prefix="lake-") as tmp:
            path = os.path.join(tmp, posixpath.basename(self.path))
            self.download(path)  # type: ignore[attr-defined]
            yield path


class GCSLakeFile(_ObjectLakeFile, GCSTarget):
    """A lake file in a GCS bucket (see LocalLakeFile)."""

    def record(self) -> LakeRecord:
        """From the object's metadata: no download."""
        return LakeRecord.of(self.fs.stat(self.path).metadata or {})


class S3LakeFile(_ObjectLakeFile, S3Target):
    """A lake file in an S3 bucket (see LocalLakeFile)."""

    def record(self) -> LakeRecord:
        """From the object's user metadata: no download."""
        return LakeRecord.of(self.fs.head(self.path).get("Metadata") or {})


class AzureLakeFile(_ObjectLakeFile, AzureTarget):
    """A lake file in an Azure Blob Storage container (see LocalLakeFile)."""

    def record(self) -> LakeRecord:
        """From the blob's metadata: no download."""
        return LakeRecord.of(self.fs.properties(self.path).metadata or {})


LakeTarget = Union[LocalLakeFile, GCSLakeFile, S3LakeFile, AzureLakeFile]

# The lakes in an object store, by the scheme their URLs start with: the kind's name (as a sink's
# `reads` names it) and its lake file. The one table a lake's URL is dispatched by; any other path
# is a local lake (settings.LakeRoot refuses the other schemes before anything runs).
OBJECT_LAKES: dict[str, tuple[str, type[LakeTarget]]] = {
    gcs.SCHEME: ("gcs", GCSLakeFile),
    s3.SCHEME: ("s3", S3LakeFile),
    azure.SCHEME: ("azure", AzureLakeFile),
}


def _object_lake(path: str) -> tuple[str, type[LakeTarget]]:
    return next((kind for scheme, kind in OBJECT_LAKES.items() if path.startswith(scheme)), ("local", LocalLakeFile))


def lake_target(path: str, root: Optional[str] = None) -> LakeTarget:
    """The lake file at ``path``, in the lake at ``root`` (default: `[lake] root`)."""
    kind = _object_lake(path)[1]
    return kind(path, root) if kind is LocalLakeFile else kind(path)
