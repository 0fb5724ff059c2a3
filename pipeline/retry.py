"""One retry policy for every network operation (downloads, source checks, Postgres connections),
and one bounded wait for a lock another process holds (`until`: the DuckDB warehouse).

An operation says what may heal by itself by raising an error that is also `Transient` (a 503, a
dropped connection, a server still starting); anything else fails at once (a 404, a wrong
password). Every section that retries has the same two settings with the same meaning:
`attempts`, the tries in all (at least 1), and `backoff`, the seconds before the second try,
doubling for each further one.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

logger = logging.getLogger("pipeline.retry")

T = TypeVar("T")


class Transient(Exception):
    """An error worth another try. Once the tries are used up it is raised as it is, its
    message saying how many there were."""

    tries = 1

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (gave up after {self.tries} tries)" if self.tries > 1 else text


def call(operation: Callable[[], T], *, attempts: int, backoff: float, setting: str) -> T:
    """``operation()``, tried again after each `Transient` error, ``attempts`` times in all.
    ``setting`` names where attempts and backoff come from, for messages: "[source]"."""
    if attempts < 1:
        raise ValueError(f"{setting} attempts = {attempts}: must be at least 1 (the tries in all)")
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except Transient as e:
            if attempt == attempts:
                e.tries = attempt
                raise
            delay = backoff * 2 ** (attempt - 1)
            logger.warning("%s; try %d of %d in %.1f s", e, attempt + 1, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


def until(operation: Callable[[], T], *, seconds: float, interval: float = 0.2) -> T:
    """``operation()``, tried again every ``interval`` seconds after each `Transient` error until
    ``seconds`` have passed, then its last error raised as it is: for waiting on a lock another
    process holds, where what bounds the wait is time, not a number of tries."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return operation()
        except Transient:
            if time.monotonic() >= deadline:
                raise
            time.sleep(interval)
