"""The flows users run: wiring only, no logic.

    luigi --module pipeline IngestMonth --service yellow --month 2021-01
    luigi --module pipeline IngestZones
    luigi --module pipeline IngestRange --services yellow,green,zones --first 2019-01 --last 2021-07

Each requires the month in the lake (and in each replica lake of `[lake] replicas`) plus every
warehouse named in `[ingest] sinks`.
"""

import luigi

from pipeline import catalog, completion, params, settings
from pipeline.dataset_task import Flow, SourcePin
from pipeline.lake_file import LakeFile, ReplicaFile
from pipeline.scheduling import Scheduled
from pipeline.warehouses.bigquery import ExposeBigQuery
from pipeline.warehouses.bigquery_table import LoadBigQueryTable
from pipeline.warehouses.duckdb_views import ExposeDuckDB
from pipeline.warehouses.postgres import LoadPostgres
from pipeline.warehouses.sink import Sink, require_lake

# Every warehouse sink, by the name [ingest] sinks gives it (pipeline/warehouses/sink.py).
SINKS = {sink.name: sink for sink in (ExposeDuckDB, LoadPostgres, ExposeBigQuery, LoadBigQueryTable)}


def lake_tasks(**params) -> list[luigi.Task]:
    """The dataset's file in the lake, and its copy in each replica lake ([lake] replicas)."""
    return [LakeFile(**params), *(ReplicaFile(replica=root, **params) for root in settings.lake().replica_roots())]


def sink_tasks(**params) -> list[Sink]:
    names = settings.ingest().sink_names()
    unknown = [n for n in names if n not in SINKS]
    if unknown:
        raise ValueError(f"[ingest] sinks: unknown sink(s) {', '.join(unknown)}; known: {', '.join(SINKS)}")
    sinks: list[Sink] = [SINKS[name](**params) for name in names]
    for sink in sinks:  # a sink that cannot read this lake is refused before anything runs
        require_lake(sink.label, sink.name, sink.reads)
    return sinks


class IngestMonth(Flow, Scheduled, SourcePin, luigi.WrapperTask):
    """Download a month of one service, convert it to Parquet, put it in the lake, expose it in
    every configured warehouse. Steps already done are skipped."""

    service = params.Choice(choices=catalog.TRIP_SERVICES, hints={"zones": params.ZONES_HINT}, description="The TLC trip service.")
    month = params.Month(description="YYYY-MM: the month of the published file.")

    def requires(self):
        params = {"service": self.service, "month": self.month, "source_sha256": self.source_sha256, "recount": self.recount}
        return [*lake_tasks(**params), *sink_tasks(**params)]

    # Each kind of output asked once for all the months (pipeline/completion.py).
    bulk_complete = classmethod(completion.bulk_complete)


class IngestZones(Flow, Scheduled, SourcePin, luigi.WrapperTask):
    """The taxi zone lookup: download, Parquet, lake, warehouses."""

    def requires(self):
        params = {"service": "zones", "source_sha256": self.source_sha256, "recount": self.recount}
        return [*lake_tasks(**params), *sink_tasks(**params)]
