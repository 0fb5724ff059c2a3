"""How each warehouse spells what the pipeline keeps in it, as data (one `Dialect` a warehouse):
the catalog's column types and the marker table's kinds in the warehouse's own types, and how it
adds a column. And the two checks every warehouse makes of what it finds there, each written once:
whether an existing table fits what the pipeline wants (`fits`, refused as `Misfit`), and which
marker columns an earlier version's marker table lacks (`add_missing_marker_columns`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping, Sequence

from pipeline import catalog
from pipeline.errors import PipelineError
from pipeline.targets.marker import MARKER_COLUMNS


@dataclasses.dataclass(frozen=True)
class Dialect:
    name: str
    # Each catalog type as the warehouse spells it (and reports it back); empty where the
    # warehouse keeps no table of its own (DuckDB's views read the lake's Parquet as it is).
    table_types: Mapping[str, str]
    # Each marker kind (targets/marker.py: text, integer, timestamp) as the warehouse spells it.
    marker_types: Mapping[str, str]
    # One column added to an existing table: {table}, {name}, {type}.
    add_column: str


DUCKDB = Dialect(
    name="DuckDB",
    table_types={},
    marker_types={"text": "VARCHAR", "integer": "BIGINT", "timestamp": "TIMESTAMP"},
    add_column="ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {type}",
)
POSTGRES = Dialect(
    name="Postgres",
    table_types={
        catalog.TIMESTAMP: "timestamp without time zone",
        catalog.INT: "bigint",
        catalog.FLOAT: "double precision",
        catalog.STRING: "text",
    },
    marker_types={"text": "text", "integer": "bigint", "timestamp": "timestamptz NOT NULL DEFAULT now()"},
    add_column="ALTER TABLE {table} ADD COLUMN {name} {type}",
)
BIGQUERY = Dialect(
    name="BigQuery",
    # Times as DATETIME: the TLC's are local New York times without a zone, and that is how
    # BigQuery reads Parquet timestamps that are not adjusted to UTC.
    table_types={catalog.TIMESTAMP: "DATETIME", catalog.INT: "INTEGER", catalog.FLOAT: "FLOAT", catalog.STRING: "STRING"},
    marker_types={"text": "STRING", "integer": "INTEGER", "timestamp": "TIMESTAMP"},
    add_column="ALTER TABLE `{table}` ADD COLUMN IF NOT EXISTS {name} {type}",
)


def fits(found: Sequence[tuple[str, str]], wanted: Sequence[tuple[str, str]], ordered: bool = False) -> list[str]:
    """What makes a table's (name, type) columns not the ones wanted (empty: they fit): each
    column missing, of another type, or not wanted, and, where ``ordered`` (a warehouse that keeps
    the columns in the order it was given them), columns in another order."""
    have, want = dict(found), dict(wanted)
    problems = [f"column {name} ({type_}) is missing" for name, type_ in want.items() if name not in have]
    problems += [
        f"column {name} is {have[name]}, the catalog says {type_}" for name, type_ in want.items() if name in have and have[name] != type_
    ]
    problems += [f"column {name} is not in the catalog" for name in have if name not in want]
    if ordered and not problems and list(have) != list(want):
        problems.append("its columns are in another order")
    return problems


class Misfit(PipelineError):
    """A table of the name the pipeline uses exists and is not the one it wants: refused, never
    replaced behind a user's back. Mixed into each warehouse's own error class."""

    def __init__(self, table: str, service: str, wanted: str, problems: list[str], setting: str, at: str = ""):
        self.table, self.service, self.problems, self.setting, self.at = table, service, problems, setting, at
        where = f"table {table}" + (f" at {at}" if at else "")
        scope = setting.split()[-1]  # "[postgres] schema": another schema
        super().__init__(
            f"{where} exists but {wanted}: " + "; ".join(problems) + f". Drop or rename it, or set {setting} to another {scope}."
        )


def add_missing_marker_columns(dialect: Dialect, table: str, found: Iterable[str], execute: Callable[[str], object]) -> list[str]:
    """Add the columns an earlier version's marker table lacks (``found``: the columns it has),
    one statement each, through ``execute``; their names. Only the missing ones: an ALTER locks
    out the table's readers (Postgres), and the BigQuery emulator takes one column a statement."""
    have = set(found)
    missing = [(name, kind) for name, kind in MARKER_COLUMNS if name not in have]
    for name, kind in missing:
        execute(dialect.add_column.format(table=table, name=name, type=dialect.marker_types[kind]))
    return [name for name, _ in missing]
