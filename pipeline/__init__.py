"""Luigi pipeline for the NYC TLC trip records: csv.gz -> Parquet -> lake -> warehouses.

`luigi --module pipeline IngestMonth --service yellow --month 2021-01` finds its tasks here.
The way a month travels, one module a step:
catalog -> download -> convert -> lake -> warehouses/ ; flows wires them together.
"""

import os
import sys

# Arrow's allocator: jemalloc hands the memory a month's conversion frees back to the system,
# where mimalloc, Arrow's default, keeps much of it: 25-70 MB less peak RSS a month at
# the same speed (bench/parquet_step.py; the legacy months gain most). Arrow reads the choice
# once, at its first allocation, so it is made here, before any step imports pyarrow; a user's
# own ARROW_DEFAULT_MEMORY_POOL wins. Linux only: where it was measured, and where the wheels
# are sure to have jemalloc.
if sys.platform == "linux":
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")

from pipeline import console
from pipeline.backfill import IngestRange, IngestRecent, PublishedMonths, Reingest, Republished
from pipeline.convert import ToParquet
from pipeline.download import Download
from pipeline.flows import IngestMonth, IngestZones
from pipeline.lake_file import LakeFile
from pipeline.warehouses.bigquery import ExposeBigQuery
from pipeline.warehouses.duckdb_views import ExposeDuckDB
from pipeline.warehouses.postgres import LoadPostgres

# The console of `luigi --module pipeline`: luigi imports this package while it parses the command
# line, before it runs anything, so this is where its hooks go in (pipeline/console.py says which).
console.install()

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
