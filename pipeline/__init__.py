"""Luigi pipeline for the NYC TLC trip records: csv.gz -> Parquet -> lake -> warehouses.

`luigi --module pipeline IngestMonth --service yellow --month 2021-01` finds its tasks here.
The way a month travels, one module a step:
catalog -> download -> convert -> lake -> warehouses/ ; flows wires them together.
"""

from pipeline.backfill import IngestRange, IngestRecent, PublishedMonths, Reingest, Republished
from pipeline.convert import ToParquet
from pipeline.download import Download
from pipeline.flows import IngestMonth, IngestZones
from pipeline.lake import LakeFile
from pipeline.warehouses.bigquery import ExposeBigQuery
from pipeline.warehouses.duckdb_views import ExposeDuckDB
from pipeline.warehouses.postgres import LoadPostgres

__all__ = [
    "Download",
    "ToParquet",
    "LakeFile",
    "ExposeDuckDB",
    "LoadPostgres",
    "ExposeBigQuery",
    "IngestMonth",
    "IngestZones",
    "IngestRange",
    "IngestRecent",
    "PublishedMonths",
    "Reingest",
    "Republished",
]
