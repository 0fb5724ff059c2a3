"""What is retried, how often, how long: every remote operation's retry is declared here, and
the call site uses it (docs/design.md has the table).

- The source over HTTP (downloads, the published() probe) and Postgres connects: `call`, with
  `[source]` / `[postgres]` attempts and backoff. An operation says what may heal by itself by
  raising an error that is also `Transient` (a 503, a dropped connection, a server still
  starting); anything else fails at once (a 404, a wrong password). `attempts` is the tries in
  all (at least 1), `backoff` the seconds before the second try, doubling for each further one.
- DuckDB's lock, held by another process: `duckdb_lock`, a wait bounded by time
  (DUCKDB_LOCK_SECONDS), not by tries.
- GCS (the lake): `gcs`, google-cloud-storage's own policy (its transient errors, exponential
  backoff) for at most `[gcs] retry_deadline` seconds a call.
- S3 (the lake): `s3`, botocore's own "standard" retry mode (throttling, 5xx, dropped connections,
  with its exponential backoff) for `[s3] attempts` tries a request, each waiting at most
  `[s3] timeout` seconds to connect and for data: a request gives up within about
  attempts x (timeout + 20 s), botocore's longest backoff.
- Azure Blob Storage (the lake): `azure`, the storage SDK's own ExponentialRetry (timeouts, 408,
  5xx, dropped connections; never a 403 or 404) for `[azure] attempts` tries a request, each
  waiting at most `[azure] timeout` seconds to connect and for data, about 1, 3, 5, 9 s apart.
- BigQuery: `bigquery` / `bigquery_query`, the client's own policies for its API calls and query
  jobs; a load job that failed is submitted again under the next job id (`fresh_id`), never twice
  under one, so a retry can never load a month twice.
- Tasks as a whole: luigid's, not the pipeline's (`[scheduler] retry_delay`: the next run may run
  a failed task again).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

from pipeline import settings

# The Google clients are imported where their policies are built: only a gs:// lake and the
# BigQuery sinks need them, and they cost every other process half a second.
if TYPE_CHECKING:
    import botocore.config
    from google.api_core.retry import Retry

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


# How long an ingest waits for another process's hold on the DuckDB warehouse (a read-write
# session, or another ingest writing) before it fails naming the holder.
DUCKDB_LOCK_SECONDS = 30.0


def duckdb_lock(operation: Callable[[], T]) -> T:
    """``operation()`` (opening the warehouse, taking the writer's lock) while it raises
    `Transient`: at most DUCKDB_LOCK_SECONDS."""
    return until(operation, seconds=DUCKDB_LOCK_SECONDS)


def gcs() -> Retry:
    """google-cloud-storage's own policy (which errors are transient, exponential backoff), for at
    most `[gcs] retry_deadline` seconds: the client's default of 120 s would ignore the setting."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_deadline(settings.gcs().retry_deadline)


def s3() -> botocore.config.Config:
    """botocore's own "standard" retry mode (which errors are transient, its backoff) for
    `[s3] attempts` tries a request, each bounded by `[s3] timeout`: the client's config, given
    where the client is made (pipeline/targets/s3.py)."""
    import botocore.config

    cfg = settings.s3()
    return botocore.config.Config(
        retries={"mode": "standard", "total_max_attempts": cfg.attempts},
        connect_timeout=cfg.timeout,
        read_timeout=cfg.timeout,
    )


def azure() -> dict[str, Any]:  # the client's keyword arguments, which its constructor types as **Any
    """The Azure storage SDK's own ExponentialRetry (which errors are transient) for `[azure]
    attempts` tries a request, each bounded by `[azure] timeout`: the client's keyword arguments,
    given where the client is made (pipeline/targets/azure.py). Its default backoff starts at 15 s;
    here it starts at 1 s and grows as 1 + 2^n s (jittered by 1 s), as a lake's requests are small."""
    from azure.storage.blob import ExponentialRetry

    cfg = settings.azure()
    policy = ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=cfg.attempts - 1, random_jitter_range=1)
    return {"retry_policy": policy, "connection_timeout": cfg.timeout, "read_timeout": cfg.timeout}


def bigquery() -> dict[str, Any]:  # keyword arguments (retry=): Any, as each client call types them its own way
    """The BigQuery client's own policy for an API call (its default, given at the call so that it
    is declared here): ``client.get_table(..., **retry.bigquery())``."""
    from google.cloud.bigquery.retry import DEFAULT_RETRY

    return {"retry": DEFAULT_RETRY}


def once() -> dict[str, Any]:
    """For a google client's call asked once, with no retry (the doctor's checks: it says what
    fails; a run is what waits for it to heal). Any: the clients' stubs type retry as a Retry,
    and they take None for none."""
    return {"retry": None}


def bigquery_query() -> dict[str, Any]:
    """`bigquery`'s, and the client's own policy for a query job that failed with a transient
    error (submitted again): for ``client.query`` and the job's ``result``."""
    from google.cloud.bigquery.retry import DEFAULT_JOB_RETRY

    return {**bigquery(), "job_retry": DEFAULT_JOB_RETRY}


class Spent(Exception):
    """The id was used by an attempt that failed: try the operation under the next one."""


def fresh_id(ids: Iterable[str], operation: Callable[[str], T]) -> T:
    """``operation(id)`` under the first of ``ids`` it does not find `Spent`. For a remote job
    whose id says what it does (a BigQuery load job): submitted twice under one id, the second
    submission finds the first, so a retry never does the work twice; one that failed is
    submitted again under the next id. Not bounded by a count: each spent id is an earlier run
    that failed."""
    for id_ in ids:
        try:
            return operation(id_)
        except Spent:
            continue
    raise ValueError("fresh_id: the ids ran out")
