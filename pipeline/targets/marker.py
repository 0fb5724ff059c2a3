"""Where a month is marked done, in every warehouse: a row in the warehouse's marker table,
`_ingested`, that says a service's month (or the zones) is fully there, with how many rows, from
which source file (its sha256 and URL), and when. The table's shape is defined here, once
(MARKER_COLUMNS); each warehouse maps its kinds to its own types, says how to read all its rows
at once (`recorded`) and how to write one (`touch`, inside the load's own transaction where the
warehouse has one, as luigi's PostgresTarget.touch does). One check and the bulk check
(pipeline/completion.py) follow from `recorded`."""

from __future__ import annotations

import datetime
from typing import Any, Hashable, Mapping, Optional

import luigi

from pipeline import catalog

MARKER_TABLE = "_ingested"
# (name, kind): the marker's columns in every warehouse, (service, month) the key; kinds are
# text, integer, timestamp. `marked_at` is the warehouse's own clock when the row was written.
MARKER_COLUMNS = (
    ("service", "text"),
    ("month", "text"),
    ("rows", "integer"),
    ("source_sha256", "text"),
    ("source_url", "text"),
    ("marked_at", "timestamp"),
)
# What a caller gives `touch`, in MARKER_COLUMNS' order (marked_at is the warehouse's).
WRITTEN = tuple(name for name, _ in MARKER_COLUMNS if name != "marked_at")


def create_table_sql(table: str, types: Mapping[str, str]) -> str:
    """The SQL warehouses' CREATE of the marker table, each kind in the warehouse's own type."""
    columns = ", ".join(f"{name} {types[kind]}" for name, kind in MARKER_COLUMNS)
    return f"CREATE TABLE IF NOT EXISTS {table} ({columns}, PRIMARY KEY (service, month))"


class MonthMarker(luigi.Target):
    """Exists when the marker table records the month; with ``source_sha256``, only when it
    records the month as loaded from that source file (what Reingest waits for)."""

    sink = ""  # how messages name the warehouse
    countable = True  # counted_rows counts in the warehouse at no cost (the report's --verify)

    def __init__(self, service: str, month: Optional[datetime.date], source_sha256: str = ""):
        self.service = service
        self.month = catalog.month_key(month)
        self.source_sha256 = source_sha256

    def __str__(self) -> str:
        what = f"{self.service} {self.month}".strip()
        return f"the {self.sink} marker of {what}" + (f" from source {self.source_sha256[:12]}" if self.source_sha256 else "")

    def where(self) -> Hashable:
        """Which marker table this marker is in, when one class serves several (a DuckDB file)."""
        return None

    @classmethod
    def recorded(cls, where: Any) -> dict[tuple[str, str], str]:
        """Every (service, month) the marker table at ``where`` records, with the sha256 of the
        source file it was loaded from ("" where unknown), in one call."""
        raise NotImplementedError

    @classmethod
    def marked_rows(cls, where: Any) -> dict[tuple[str, str], int]:
        """Every (service, month) the marker table at ``where`` records, with its row count."""
        raise NotImplementedError

    @classmethod
    def counted_rows(cls, where: Any, service: str) -> dict[str, int]:
        """The rows the warehouse itself holds for each month of ``service`` ("" for the zones),
        counted there (the coverage report's --verify)."""
        raise NotImplementedError

    def touch(self, connection, rows: int, source_sha256: str, source_url: str) -> None:
        """Write this month's marker row (in place of an earlier one) through ``connection``, inside
        the caller's transaction where the warehouse has one."""
        raise NotImplementedError

    def values(self, rows: int, source_sha256: str, source_url: str) -> list:
        """The row `touch` writes, in WRITTEN's order."""
        return [self.service, self.month, rows, source_sha256, source_url]

    def found_in(self, recorded: dict[tuple[str, str], str]) -> bool:
        key = (self.service, self.month)
        return key in recorded and (not self.source_sha256 or recorded[key] == self.source_sha256)

    def exists(self) -> bool:
        return self.found_in(self.recorded(self.where()))

    def holds(self, rows: int) -> bool:
        """Whether the warehouse holds ``rows`` rows for this month, as its marker records them and,
        where a count costs nothing (``countable``), as counted there: what Reingest checks before
        it trusts a marker."""
        where = self.where()
        marked = self.marked_rows(where).get((self.service, self.month))
        return marked == rows and (not self.countable or self.counted_rows(where, self.service).get(self.month) == rows)

    @classmethod
    def bulk_exists(cls, markers: list[MonthMarker]) -> list[bool]:
        """One read per marker table for all the markers."""
        found = {where: cls.recorded(where) for where in {m.where() for m in markers}}
        return [m.found_in(found[m.where()]) for m in markers]
