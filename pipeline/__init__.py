"""Luigi pipeline for the NYC TLC trip records: csv.gz -> Parquet -> lake -> warehouses.

`luigi --module pipeline IngestMonth --service yellow --month 2021-01` finds its tasks here.
The way a month travels, one module a step:
catalog -> download -> convert -> lake -> warehouses/ ; flows wires them together.
"""

import os
import sys

# What must happen when the package is imported, all of it here: every way in (`luigi --module
# pipeline`, `python -m pipeline.report`, a test, a forked worker) imports this package first,
# and luigi imports it while it parses the command line, before it reads a setting or runs a task.
# The modules themselves do nothing when imported.
#
# 1. Arrow's allocator: jemalloc hands the memory a month's conversion frees back to the system,
#    where mimalloc, Arrow's default, keeps much of it: 25-70 MB less peak RSS a month at the same
#    speed (bench/parquet_step.py; the legacy months gain most). Arrow reads the choice once, at
#    its first allocation, so it is made before any module imports pyarrow; a user's own
#    ARROW_DEFAULT_MEMORY_POOL wins. Linux only: where it was measured, and where the wheels are
#    sure to have jemalloc.
if sys.platform == "linux":
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")

from pipeline import console, redaction, settings
from pipeline.backfill import IngestRange, IngestRecent, PublishedMonths, Reingest, Republished
from pipeline.convert import ToParquet
from pipeline.download import Download
from pipeline.flows import IngestMonth, IngestZones
from pipeline.lake_file import LakeFile, ReplicaFile
from pipeline.warehouses.bigquery import ExposeBigQuery
from pipeline.warehouses.duckdb_views import ExposeDuckDB
from pipeline.warehouses.postgres import LoadPostgres

# 2. The settings files, in their order, whatever the current directory (pipeline/settings.py):
#    before luigi reads the first setting.
settings.load()
# 3. Every log record scrubbed of the settings' secrets, under whatever logging configuration
#    luigi or a user sets up later (pipeline/redaction.py).
redaction.install()
# 4. The console of `luigi --module pipeline`: one-line errors, the failures' lines last, the
#    settings checked before anything runs (pipeline/console.py, through luigi's internals in
#    pipeline/luigi_internals.py).
console.install()

__all__ = [
    "Download",
    "ToParquet",
    "LakeFile",
    "ReplicaFile",
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
