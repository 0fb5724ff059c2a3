"""The reading thread of ToParquet (convert._read_ahead): every batch once and in order, never
more than its bound ahead of the writer, errors handed over, and no thread left behind."""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pytest

from pipeline.convert import _read_ahead

BATCH = pa.record_batch([pa.array(range(1000), pa.int64())], names=["n"])  # 8,000 bytes


def numbered(count: int, produced: list[int], fail_after: int | None = None):
    """``count`` batches, the i-th holding i in every row; each one's number is put in
    ``produced`` as the reading thread makes it; an error after ``fail_after`` of them."""
    for i in range(count):
        if i == fail_after:
            raise OSError(f"the source broke after {i} batches")
        produced.append(i)
        yield pa.record_batch([pa.array([i] * BATCH.num_rows, pa.int64())], names=["n"])


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "reader"]


def test_every_batch_arrives_once_in_order():
    got = [batch.column(0)[0].as_py() for batch in _read_ahead(numbered(50, []), 3 * BATCH.nbytes)]

    assert got == list(range(50))
    assert not reader_threads()


def test_the_reader_stays_within_its_bound_ahead_of_a_slow_writer():
    produced: list[int] = []
    ahead = []
    for taken, _ in enumerate(_read_ahead(numbered(40, produced), 3 * BATCH.nbytes), start=1):
        time.sleep(0.02)  # a slow writer: the reader has all the time it wants to run ahead
        ahead.append(len(produced) - taken)

    # Three batches fit in the bound; it may hold one more made while it waited for room.
    assert max(ahead) <= 4 and max(ahead) >= 2
    assert len(produced) == 40


def test_an_error_of_the_reader_reaches_the_writer_after_the_batches_before_it():
    got = []
    with pytest.raises(OSError, match="the source broke after 7 batches"):
        for batch in _read_ahead(numbered(20, [], fail_after=7), 3 * BATCH.nbytes):
            got.append(batch.column(0)[0].as_py())

    assert got == list(range(7))
    assert not reader_threads()


def test_a_writer_that_stops_early_stops_the_reader():
    produced: list[int] = []
    batches = _read_ahead(numbered(1000, produced), 3 * BATCH.nbytes)
    next(batches)
    time.sleep(0.05)
    batches.close()  # what a failed conversion does: the writer's loop is left

    assert not reader_threads()
    assert len(produced) <= 6  # it stopped at its bound, and did not read on to the end
