"""What the pipeline and luigid (or luigi's local scheduler) say to each other, in one place:
luigid is advice, never a dependency of the data.

- Identity: every task's id carries its deployment (`[ingest] deployment`, by default the lake
  root and the warehouses' locations), so two setups that share one luigid never take each other's months for done. luigi
  derives a task id from the task's parameters only; two lakes fed through one luigid would
  otherwise share every id, and the second run within luigid's done-cooldown ran nothing.
- Progress: a running task's status line and progress bar are handed to a thread of their own,
  the latest report winning, so a step never waits for luigid and a failed report never fails a
  step. luigi's own set_status_message runs in the caller, retries its RPC (3 x 30 s by default)
  and then raises into it: a luigid restart failed every month being converted or loaded.

luigi's internals this leans on (the id computed in Task.__init__ and its cached hash, the
reporter callables a worker sets on the task while it runs) are in pipeline/luigi_internals.py.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

from pipeline import luigi_internals, settings

logger = logging.getLogger("pipeline.scheduling")

# How long a finished task waits for its last progress report to reach the scheduler.
FLUSH_SECONDS = 5.0


def deployment() -> str:
    """What tells this setup's tasks from another's in a shared luigid: `[ingest] deployment`, or
    when it is not set, where the data goes: the lake root, the replica lakes' and each
    configured warehouse's location as the settings name it (hosts that share a profile share
    their tasks)."""
    name = settings.ingest().deployment
    if name:
        return name
    where = {
        "duckdb": lambda: settings.duckdb().path,
        "postgres": lambda: "{0.host}:{0.port}/{0.database}/{0.schema}".format(settings.postgres()),
        "bigquery": lambda: f"{settings.bigquery().project}.{settings.bigquery().dataset}",
        "bigquery_table": lambda: f"{settings.bigquery().project}.{settings.bigquery().dataset}",
    }
    sinks = [f"{sink}={where[sink]()}" if sink in where else sink for sink in settings.ingest().sink_names()]
    replicas = [f"replica={root}" for root in settings.lake().replica_roots()]
    return " ".join([settings.lake().root, *replicas, *sinks])


class Scheduled:
    """A task (mixin, before luigi's Task in the bases) whose id includes its deployment and whose
    progress reports are advice."""

    task_id: str  # luigi.Task's, set in __init__ (luigi_internals.set_task_id)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        params = self.to_str_params(only_significant=True, only_public=True)
        luigi_internals.set_task_id(self, self.get_task_family(), {**params, "deployment": deployment()})

    def tell(self, message: str, percentage: Optional[int] = None) -> None:
        """Show ``message`` (and ``percentage``) in the visualiser, without waiting for it."""
        send_message, send_percentage = luigi_internals.reporters(self)
        if callable(send_message):
            _REPORTS.post(self.task_id, send_message, message, send_percentage, percentage)

    def on_success(self):
        _REPORTS.flush(FLUSH_SECONDS)
        return super().on_success()


class _Reports:
    """Progress reports waiting for the reporting thread: the latest per task."""

    def __init__(self):
        self.cond = threading.Condition()
        self.pending: dict[str, tuple] = {}
        self.sending = False
        self.thread: Optional[threading.Thread] = None
        self.failing = False  # the last report failed: warned once per outage

    def post(self, task_id: str, send_message: Callable, message: str, send_percentage: Optional[Callable], percentage) -> None:
        with self.cond:
            self.pending[task_id] = (send_message, message, send_percentage, percentage)
            # A forked worker process inherits the object but not the thread: start one per process.
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._send_forever, name="progress", daemon=True)
                self.thread.start()
            self.cond.notify_all()

    def flush(self, timeout: float) -> None:
        """Wait, at most ``timeout`` seconds, until every report posted so far was sent or failed."""
        with self.cond:
            self.cond.wait_for(lambda: not self.pending and not self.sending, timeout=timeout)

    def _send_forever(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.pending)
                batch, self.pending = self.pending, {}
                self.sending = True
            try:
                for send_message, message, send_percentage, percentage in batch.values():
                    self._send(send_message, message, send_percentage, percentage)
            finally:
                with self.cond:
                    self.sending = False
                    self.cond.notify_all()

    def _send(self, send_message: Callable, message: str, send_percentage: Optional[Callable], percentage) -> None:
        try:
            if percentage is not None and callable(send_percentage):
                send_percentage(percentage)
            send_message(message)
        except Exception as e:  # luigid away or restarting: the work goes on
            if not self.failing:
                logger.warning("the scheduler did not take a progress report (%s); the task goes on", " ".join(str(e).split())[:200])
            self.failing = True
        else:
            self.failing = False


_REPORTS = _Reports()
