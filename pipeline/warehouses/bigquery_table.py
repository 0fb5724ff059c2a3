"""Lake on GCS -> a native BigQuery table per service, loaded month by month: the sink
`bigquery_table`. Where the external tables (bigquery.py) read the lake in place, this copies it
into BigQuery storage, where queries prune by month and by cluster and cost what they read.

- `yellow_tripdata` (and so on) is partitioned by the month of the source file: MONTH
  partitions by ingestion time, each month's rows loaded into the partition `$YYYYMM` of its
  file, so a month's stragglers (pickups dated outside it) stay with their file's month; a query
  names the month with `_PARTITIONTIME = TIMESTAMP '2021-01-01'`. Not a partition column: a load
  job cannot add a column the file lacks, and a load into a column-partitioned table's decorator
  must find every row's value inside that partition. Clustered by pickup time, then pickup zone:
  a time range narrower than a month and a zone are what trip queries filter on, in that order
  of how often. The zones are a plain table, replaced whole.
- The table is created once with the catalog's schema (times as DATETIME, as in the external
  tables), and refused with what differs when an existing one does not fit.
- A month is one load job from its lake object into its partition, write-truncate: loading a
  month again replaces exactly that month. Never a CREATE OR REPLACE of the table, never a query.
- Exactly once: the job id is derived from the dataset, the table (its creation time), the month
  and the source file's sha256, so a retried or repeated submission finds the job already there
  (409) and waits for it instead of loading twice. A job that failed is followed by the same id
  with the next number. The marker row, in `{dataset}._ingested_native`, is written only after
  the job succeeded with as many rows as the lake file has.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Optional, cast

from pipeline import catalog, retry, settings
from pipeline.lake import LakeRecord, LakeTarget
from pipeline.warehouses.bigquery import (
    BigQueryError,
    BigQueryMarker,
    _fields,
    _named,
    client,
    dataset_id,
    ensure_dataset,
    refuse_misfit,
)
from pipeline.warehouses.dialects import BIGQUERY, fits
from pipeline.warehouses.sink import Sink

if TYPE_CHECKING:
    from google.cloud import bigquery as bq

logger = logging.getLogger("pipeline.bigquery")

PARTITION_TYPE = "MONTH"
ZONE_COLUMN = "PULocationID"


def clustering(svc: catalog.Service) -> Optional[list[str]]:
    return [svc.pickup_column, ZONE_COLUMN] if svc.monthly and svc.pickup_column else None


def native_table_id(client_: bq.Client, svc: catalog.Service) -> str:
    return f"{dataset_id(client_)}.{svc.table}"


def wanted_native_table(client_: bq.Client, svc: catalog.Service) -> bq.Table:
    from google.cloud import bigquery as bq

    table = bq.Table(native_table_id(client_, svc), schema=schema(svc))
    if svc.monthly:
        table.time_partitioning = bq.TimePartitioning(type_=PARTITION_TYPE)
        table.clustering_fields = clustering(svc)
    table.description = f"NYC TLC {svc.name}: every month loaded from the lake, a partition per source month (nyc-tlc-luigi)"
    return table


def schema(svc: catalog.Service) -> list[bq.SchemaField]:
    from google.cloud import bigquery as bq

    return [bq.SchemaField(c.name, BIGQUERY.table_types[c.type]) for c in svc.columns]


def differences(have: bq.Table, want: bq.Table) -> list[str]:
    """What makes an existing table not the native table the pipeline wants (empty: it is)."""
    if have.table_type != "TABLE":
        return [f"it is a {have.table_type} table, not a plain one"]
    problems = []
    if _partitioning(have) != _partitioning(want):
        problems.append(f"its partitioning (type, column) is {_partitioning(have)}, not {_partitioning(want)}")
    if (have.clustering_fields or None) != want.clustering_fields:
        problems.append(f"it is clustered by {have.clustering_fields}, not {want.clustering_fields}")
    return problems + fits(_fields(have, skip=False), _fields(want, skip=False), ordered=True)


def _partitioning(table: bq.Table) -> Optional[tuple[str, Optional[str]]]:
    """(type, column) of the time partitioning; column None: by ingestion time."""
    return (table.time_partitioning.type_, table.time_partitioning.field) if table.time_partitioning else None


def ensure_native_table(client_: bq.Client, svc: catalog.Service) -> bq.Table:
    """The service's native table, created if missing; refused when it is not the one wanted."""
    from google.api_core import exceptions as gexc

    want = wanted_native_table(client_, svc)
    with _named(f"table {want.table_id}"):
        try:
            have = client_.get_table(want.reference, **retry.bigquery())
        except gexc.NotFound:
            table = client_.create_table(want, exists_ok=True, **retry.bigquery())
            logger.info("created table %s, partitioned by %s, clustered by %s", table.full_table_id, PARTITION_TYPE, want.clustering_fields)
            return table
    refuse_misfit(have, svc, "table", differences(have, want))
    return have


def job_ids(table: bq.Table, svc: catalog.Service, month: str, source_sha256: str):
    """The load job ids of a month, in order: the first for a new load, the next after a failed
    one. A table dropped and created again has another creation time, hence other ids."""
    created_ms = int(table.created.timestamp() * 1000)
    base = f"nyc_tlc_{table.dataset_id}_{svc.table}_{month.replace('-', '') or 'all'}_{source_sha256[:32]}_{created_ms}"
    yield base
    for n in itertools.count(2):
        yield f"{base}_{n}"


def load(client_: bq.Client, table: bq.Table, svc: catalog.Service, month: str, uri: str, source_sha256: str) -> bq.LoadJob:
    """Load ``uri`` into the month's partition (the whole table for the zones), write-truncate,
    exactly once per source file (see the module); the job, done."""
    from google.api_core import exceptions as gexc
    from google.cloud import bigquery as bq

    destination = f"{table.project}.{table.dataset_id}.{table.table_id}" + (f"${month.replace('-', '')}" if month else "")
    config = bq.LoadJobConfig(source_format="PARQUET", write_disposition="WRITE_TRUNCATE", schema=schema(svc))
    location = settings.bigquery().location

    def submit(job_id: str) -> bq.LoadJob:
        with _named(f"load job {job_id} into {destination}"):
            try:
                job = client_.load_table_from_uri(uri, destination, job_id=job_id, job_config=config, location=location, **retry.bigquery())
                logger.info("submitted load job %s: %s -> %s", job_id, uri, destination)
            except gexc.Conflict:  # submitted before (a retry, or a run that died waiting): that job
                job = cast(bq.LoadJob, client_.get_job(job_id, location=location, **retry.bigquery()))  # the id is our load job's
                if job.state == "DONE" and job.error_result:
                    logger.info("load job %s failed before (%s); the next id", job_id, job.error_result.get("message"))
                    raise retry.Spent(job_id) from None
                logger.info("load job %s was submitted before; waiting for it", job_id)
            job.result(**retry.bigquery())
        return job

    return retry.fresh_id(job_ids(table, svc, month, source_sha256), submit)


class NativeTableMarker(BigQueryMarker):
    """Exists when `{dataset}._ingested_native` records this service and month."""

    sink = "BigQuery table"
    marker_table = "_ingested_native"


class LoadCountMismatch(BigQueryError):
    """A load job put another row count into the table than the lake file has: not marked."""

    def __init__(self, label: str, job_id: str, destination: str, loaded: int, lake_file: str, expected: int):
        self.label, self.job_id, self.destination, self.loaded, self.lake_file, self.expected = (
            label,
            job_id,
            destination,
            loaded,
            lake_file,
            expected,
        )
        super().__init__(
            f"{label}: load job {job_id} put {loaded} rows into {destination}, "
            f"and the lake file {lake_file} has {expected}; not marked loaded"
        )


class LoadBigQueryTable(Sink):
    """Load the month into its partition of the service's native BigQuery table."""

    name = "bigquery_table"
    reads = "gcs"
    # BigQuery's quotas are the project's: the scheduler runs at most [resources] bigquery at once.
    resources = {"bigquery": 1}

    def output(self):
        return NativeTableMarker(self.service, self.month, self.source_sha256)

    def load(self, lake: LakeTarget, record: LakeRecord) -> str:
        client_ = client()
        ensure_dataset(client_)
        table = ensure_native_table(client_, self.svc)
        self.report(0, 1, f"loading {record.rows:,} rows into {table.table_id}")
        job = load(client_, table, self.svc, catalog.month_key(self.month), lake.path, record.source_sha256)
        if job.output_rows != record.rows:
            raise LoadCountMismatch(self.label, job.job_id, str(job.destination), job.output_rows, lake.path, record.rows)
        self.output().touch(client_, record.rows, record.source_sha256, record.source_url)
        return f"{job.destination} (job {job.job_id})"
