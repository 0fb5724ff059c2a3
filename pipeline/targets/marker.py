"""What every warehouse's marker has in common: a row in its marker table that says a service's
month (or the zones) is fully there, and which source file it came from (its sha256). Each
warehouse says only how to read all its rows at once (`recorded`); one check and the bulk check
(pipeline/completion.py) follow from that."""

from __future__ import annotations

import datetime
from typing import Hashable, Optional

import luigi

from pipeline import catalog


class MonthMarker(luigi.Target):
    """Exists when the marker table records the month; with ``source_sha256``, only when it
    records the month as loaded from that source file (what Reingest waits for)."""

    sink = ""  # how messages name the warehouse

    def __init__(self, service: str, month: Optional[datetime.date], source_sha256: str = ""):
        self.service = service
        self.month = catalog.month_str(month) if month else ""  # "" for the zones
        self.source_sha256 = source_sha256

    def __str__(self) -> str:
        what = f"{self.service} {self.month}".strip()
        return f"the {self.sink} marker of {what}" + (f" from source {self.source_sha256[:12]}" if self.source_sha256 else "")

    def where(self) -> Hashable:
        """Which marker table this marker is in, when one class serves several (a DuckDB file)."""
        return None

    @classmethod
    def recorded(cls, where: Hashable) -> dict[tuple[str, str], str]:
        """Every (service, month) the marker table at ``where`` records, with the sha256 of the
        source file it was loaded from ("" where unknown), in one call."""
        raise NotImplementedError

    def found_in(self, recorded: dict[tuple[str, str], str]) -> bool:
        key = (self.service, self.month)
        return key in recorded and (not self.source_sha256 or recorded[key] == self.source_sha256)

    def exists(self) -> bool:
        return self.found_in(self.recorded(self.where()))

    @classmethod
    def bulk_exists(cls, markers: list[MonthMarker]) -> list[bool]:
        """One read per marker table for all the markers."""
        found = {where: cls.recorded(where) for where in {m.where() for m in markers}}
        return [m.found_in(found[m.where()]) for m in markers]
