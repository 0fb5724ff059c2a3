"""Legacy-layout batches -> batches in the catalog's terms (catalog.LegacyPlan): old names become
the catalog's, words become today's codes, and each (longitude, latitude) pair becomes a zone id
(zone_shapes.ZoneIndex). The catalog's types are then given by the same casts as every month's
(convert._conform), so a 2009 month is checked exactly like a 2021 one."""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import catalog
from pipeline.catalog import ConversionError
from pipeline.zone_shapes import ZoneIndex


def _blank_to_null(values: pa.Array) -> pa.Array:
    """Text with nothing in it (the old files' empty codes, `NA ` aside) as null."""
    return pc.if_else(pc.equal(pc.utf8_trim_whitespace(values), ""), pa.scalar(None, values.type), values)


def _decode(values: pa.Array, codes: dict[str, object], column: catalog.Column, name: str, where: str, first_row: int) -> pa.Array:
    """Each value (as text, stripped, lower case) as its code in ``codes``; null stays null; a
    value not listed is an error naming it."""
    text = pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(values, pa.string())))
    keys = pa.array(list(codes), pa.string())
    found = pc.index_in(text, value_set=keys)
    unknown = pc.and_(pc.is_valid(text), pc.is_null(found))
    if pc.any(unknown).as_py():
        row = pc.index(unknown, True).as_py()
        raise ConversionError(
            f"{where}: column {name}, data row {first_row + row + 1}: {values[row].as_py()!r} is not a known {column.name} "
            f"(known: {', '.join(codes)})"
        )
    return pc.take(pa.array(list(codes.values()), column.type), found)


def _degrees(values: pa.Array) -> np.ndarray:
    return pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)


def modernised(batches: Iterable[pa.RecordBatch], plan: catalog.LegacyPlan, zones: ZoneIndex, where: str) -> Iterator[pa.RecordBatch]:
    """The batches of a legacy file with plan.columns' names, in their order."""
    names = [column.name for column in plan.columns]
    rows = 0
    for batch in batches:
        arrays = []
        for name, column in plan.renamed:
            values = batch.column(name)
            if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
                values = _blank_to_null(values)
            codes = plan.layout.codes.get(column.name)
            arrays.append(values if codes is None else _decode(values, codes, column, name, where, rows))
        for lon, lat, _ in plan.located:
            arrays.append(pa.array(zones.locate(_degrees(batch.column(lon)), _degrees(batch.column(lat)))))
        yield pa.RecordBatch.from_arrays(arrays, names=names)
        rows += batch.num_rows
