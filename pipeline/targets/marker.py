"""What every warehouse's marker has in common: a row in its marker table that says a service's
month (or the zones) is fully there. Each warehouse says only how to read all its rows at once
(`recorded`); one check and the bulk check (pipeline/completion.py) follow from that."""

from __future__ import annotations

import datetime
from typing import Hashable, Optional

import luigi

from pipeline import catalog


class MonthMarker(luigi.Target):
    def __init__(self, service: str, month: Optional[datetime.date]):
        self.service = service
        self.month = catalog.month_str(month) if month else ""  # "" for the zones

    def where(self) -> Hashable:
        """Which marker table this marker is in, when one class serves several (a DuckDB file)."""
        return None

    @classmethod
    def recorded(cls, where: Hashable) -> set[tuple[str, str]]:
        """Every (service, month) the marker table at ``where`` records, in one call."""
        raise NotImplementedError

    def exists(self) -> bool:
        return (self.service, self.month) in self.recorded(self.where())

    @classmethod
    def bulk_exists(cls, markers: list[MonthMarker]) -> list[bool]:
        """One read per marker table for all the markers."""
        found = {where: cls.recorded(where) for where in {m.where() for m in markers}}
        return [(m.service, m.month) in found[m.where()] for m in markers]
