"""The checks every warehouse makes of what it finds, written once (pipeline/warehouses/dialects.py):
whether an existing table's columns fit the catalog's, and which marker columns an earlier
version's marker table lacks. Generated tables and marker tables, and DuckDB's for real."""

import datetime

import duckdb
from hypothesis import given
from hypothesis import strategies as st

from pipeline import catalog
from pipeline.targets.marker import MARKER_COLUMNS, MARKER_TABLE
from pipeline.warehouses.dialects import BIGQUERY, DUCKDB, POSTGRES, add_missing_marker_columns, fits
from pipeline.warehouses.duckdb_views import DuckDBMarker

TYPES = list(BIGQUERY.table_types.values())
names = st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), min_size=1, max_size=8, unique=True)


@st.composite
def tables(draw):
    """(found, wanted, the problems fits must name): a wanted table, and one found with some of its
    columns dropped, some of another type, and some the catalog does not have."""
    all_names = draw(names)
    wanted = [(name, draw(st.sampled_from(TYPES))) for name in all_names]
    dropped = draw(st.sets(st.sampled_from(all_names)))
    retyped = draw(st.sets(st.sampled_from(all_names))) - dropped
    extra = [name + "_x" for name in draw(st.sets(st.sampled_from(all_names)))]
    found = [(name, type_ + "_other" if name in retyped else type_) for name, type_ in wanted if name not in dropped]
    found += [(name, "STRING") for name in extra]
    expected = {f"column {name} ({type_}) is missing" for name, type_ in wanted if name in dropped}
    expected |= {f"column {name} is {type_}_other, the catalog says {type_}" for name, type_ in wanted if name in retyped}
    expected |= {f"column {name} is not in the catalog" for name in extra}
    return found, wanted, expected


@given(tables())
def test_fits_names_every_column_that_differs_and_nothing_else(case):
    found, wanted, expected = case
    assert set(fits(found, wanted)) == expected
    assert len(fits(found, wanted)) == len(expected)


@given(names.flatmap(lambda n: st.tuples(st.just(n), st.permutations(n))))
def test_order_counts_only_where_asked_and_only_when_nothing_else_differs(case):
    order, shuffled = case
    wanted = [(name, "STRING") for name in order]
    found = [(name, "STRING") for name in shuffled]
    assert fits(found, wanted) == []
    assert fits(found, wanted, ordered=True) == ([] if list(shuffled) == list(order) else ["its columns are in another order"])


def test_a_postgres_table_as_the_issue_shows():
    wanted = [(c.name, POSTGRES.table_types[c.type]) for c in catalog.SERVICES["green"].columns]
    found = [("VendorID", "bigint"), ("lpep_pickup_datetime", "text")]
    problems = fits(found, wanted)
    assert "column lpep_pickup_datetime is text, the catalog says timestamp without time zone" in problems
    assert "column trip_distance (double precision) is missing" in problems


older = st.sets(st.sampled_from([name for name, _ in MARKER_COLUMNS if name not in ("service", "month")]))


@given(older, st.sampled_from([DUCKDB, POSTGRES, BIGQUERY]))
def test_the_marker_migration_adds_exactly_the_missing_columns_in_order(present, dialect):
    found = {"service", "month"} | present
    statements = []
    added = add_missing_marker_columns(dialect, "t", found, statements.append)
    missing = [(name, kind) for name, kind in MARKER_COLUMNS if name not in found]
    assert added == [name for name, _ in missing]
    assert statements == [dialect.add_column.format(table="t", name=name, type=dialect.marker_types[kind]) for name, kind in missing]


@given(older)
def test_a_duckdb_marker_table_of_an_earlier_version_is_brought_up_to_date(present):
    con = duckdb.connect()
    kinds = dict(MARKER_COLUMNS)
    columns = ["service", "month", *(name for name, _ in MARKER_COLUMNS if name in present)]
    con.execute(
        f"CREATE TABLE {MARKER_TABLE} ({', '.join(f'{n} {DUCKDB.marker_types[kinds[n]]}' for n in columns)}, PRIMARY KEY (service, month))"
    )

    DuckDBMarker(":memory:", "green", datetime.date(2019, 1, 1)).touch(con, 7, "ab" * 32, "http://x/green.parquet")

    assert [d[0] for d in con.execute(f"SELECT * FROM {MARKER_TABLE}").description][: len(columns)] == columns
    assert {d[0] for d in con.execute(f"SELECT * FROM {MARKER_TABLE}").description} == set(kinds)
    assert con.execute(f"SELECT rows, source_sha256 FROM {MARKER_TABLE}").fetchall() == [(7, "ab" * 32)]
