"""Lake -> the embedded warehouse: one DuckDB file with one view per service over the lake's
Parquet files (the local twin of the BigQuery external table), and a marker per ingested month.

A month counts as exposed only when the view answers for it with exactly the Parquet row count;
that check and the marker row are one transaction, so a marker never claims what the view does not show.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from typing import Optional

import duckdb

from pipeline import catalog, settings
from pipeline.convert import parquet_rows
from pipeline.dataset_task import DatasetTask
from pipeline.lake import PARTITION_KEY, LakeFile, is_remote, lake_glob, lake_root
from pipeline.targets.marker import MonthMarker

logger = logging.getLogger("pipeline.duckdb")

MARKER_TABLE = "_ingested"
LOCK_WAIT_SECONDS = 30.0


class WarehouseBusy(RuntimeError):
    """Another process holds the DuckDB file for longer than we wait."""


def _connect(path: str, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Open the warehouse, waiting while another process holds DuckDB's single-writer lock."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            return duckdb.connect(path, read_only=read_only)
        except duckdb.IOException as e:
            if "lock" not in str(e).lower():
                raise
            if time.monotonic() > deadline:
                raise WarehouseBusy(
                    f"the DuckDB warehouse {path} has been held by another process for {LOCK_WAIT_SECONDS:g} s ({e}); "
                    "close that session, and query while ingesting with duckdb.connect(path, read_only=True)") from None
            time.sleep(0.2)


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


GLOB_CHARACTERS = set("*?[]{}")


def lake_literal(svc: catalog.Service) -> str:
    """The configured lake's files of the service as the view's SQL names them: an absolute
    path, so the view answers from any working directory."""
    return _sql_string(os.path.abspath(lake_glob(svc)))


def view_sql(svc: catalog.Service) -> str:
    root = os.path.abspath(lake_root())
    if GLOB_CHARACTERS & set(root):
        raise ValueError(f"[lake] root {root} holds a glob character ({' '.join(sorted(GLOB_CHARACTERS & set(root)))}), "
                         "which DuckDB's read_parquet would take as a pattern; move the lake to a path without one")
    source = f"read_parquet({lake_literal(svc)}"
    if svc.monthly:
        source += f", hive_partitioning = true, hive_types = {{'{PARTITION_KEY}': VARCHAR}}"
    return f'CREATE OR REPLACE VIEW "{svc.table}" AS SELECT * FROM {source})'


class DuckDBMarker(MonthMarker):
    """Exists when the warehouse file's marker table records this service and month."""

    def __init__(self, path: str, service: str, month: Optional[datetime.date]):
        super().__init__(service, month)
        self.path = path

    def where(self) -> str:
        return self.path

    @classmethod
    def recorded(cls, where: str) -> set[tuple[str, str]]:
        return _exposed(where)

    def remove(self) -> None:
        """Forget the month (the view then shows it again when the lake file is back)."""
        if not os.path.exists(self.path):
            return
        con = _connect(self.path, read_only=False)
        try:
            con.execute(f"DELETE FROM {MARKER_TABLE} WHERE service = ? AND month = ?", [self.service, self.month])
        except duckdb.CatalogException:
            pass  # no marker table: nothing to forget
        finally:
            con.close()


def _exposed(path: str) -> set[tuple[str, str]]:
    """Every (service, month) the warehouse's marker table records, for the services whose view
    reads the configured lake: after the lake moves (the project folder, or [lake] root), a view
    still reads the old path, so its months count as not exposed and are exposed again."""
    if not os.path.exists(path):
        return set()
    con = _connect(path, read_only=True)
    try:
        recorded = {tuple(row) for row in con.execute(f"SELECT service, month FROM {MARKER_TABLE}").fetchall()}
        views = dict(con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal").fetchall())
    except duckdb.CatalogException:  # no marker table yet: nothing ingested
        return set()
    finally:
        con.close()
    current = set()
    for service in {service for service, _ in recorded}:
        svc = catalog.SERVICES[service]
        if lake_literal(svc) in views.get(svc.table, ""):
            current.add(service)
        else:
            logger.warning("view %s in %s does not read the configured lake %s; its months will be exposed again",
                           svc.table, path, os.path.abspath(lake_root()))
    return {(service, month) for service, month in recorded if service in current}


class ExposeDuckDB(DatasetTask):
    """Make the month queryable in the embedded DuckDB warehouse."""

    # DuckDB allows one writing process per file: the scheduler runs these one at a time.
    resources = {"duckdb": 1}

    def requires(self):
        return self.clone(LakeFile)

    def output(self):
        return DuckDBMarker(settings.duckdb().path, self.service, self.month)

    def run(self):
        if is_remote():
            raise ValueError(f"{self.label}: the duckdb sink reads the lake from local disk, and [lake] root is "
                             f"{lake_root()}; set [ingest] sinks to the warehouses that read a gs:// lake "
                             "(bigquery, postgres) or none")
        marker = self.output()
        expected = parquet_rows(self.input().path)
        os.makedirs(os.path.dirname(os.path.abspath(marker.path)), exist_ok=True)
        con = _connect(marker.path, read_only=False)
        try:
            con.begin()
            con.execute(f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (service VARCHAR, month VARCHAR, "
                        "rows BIGINT, exposed_at TIMESTAMP, PRIMARY KEY (service, month))")
            con.execute(view_sql(self.svc))
            where = f" WHERE {PARTITION_KEY} = ?" if self.svc.monthly else ""
            params = [marker.month] if self.svc.monthly else []
            seen = con.execute(f'SELECT count(*) FROM "{self.svc.table}"{where}', params).fetchone()[0]
            if seen != expected:
                raise RuntimeError(f"{self.label}: view {self.svc.table} in {marker.path} shows {seen} rows, "
                                   f"the lake file {self.input().path} holds {expected}")
            con.execute(f"INSERT OR REPLACE INTO {MARKER_TABLE} VALUES (?, ?, ?, now())",
                        [self.service, marker.month, expected])
            con.commit()
        finally:
            con.close()
        logger.info("%s: view %s in %s shows its %s rows", self.label, self.svc.table, marker.path, f"{expected:,}")
        self.report(1, 1, f"queryable as {self.svc.table} in {marker.path}")
