"""What every step has in common: it works on one dataset file of one service (a month of trips,
or the zone lookup), reports progress to the visualiser, and writes its output atomically."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Iterator

import luigi

from pipeline import catalog, completion, settings

logger = logging.getLogger("pipeline")


class DatasetTask(luigi.Task):
    service = luigi.ChoiceParameter(choices=list(catalog.SERVICES), description="The TLC service, or zones for the zone lookup.")
    month = luigi.MonthParameter(default=None, description="YYYY-MM: the month of the published file (not for zones).")

    _last_report = 0.0

    # Each kind of output asked once for all the months (pipeline/completion.py), so a range
    # over any step decides in bulk.
    bulk_complete = classmethod(completion.bulk_complete)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.svc.monthly and self.month is None:
            raise ValueError(f"{self.task_family}: --month YYYY-MM is required for {self.service}")
        if not self.svc.monthly and self.month is not None:
            raise ValueError(f"{self.task_family}: {self.service} is not monthly; drop --month")

    @property
    def svc(self) -> catalog.Service:
        return catalog.SERVICES[self.service]

    @property
    def label(self) -> str:
        """How logs and errors name the dataset: 'yellow 2021-01' or 'zones'."""
        return f"{self.service} {catalog.month_str(self.month)}" if self.month else self.service

    def staging_path(self, area: str, name: str) -> str:
        return os.path.join(settings.ingest().staging, area, self.service, name)

    def report(self, done: float, total: float, what: str) -> None:
        """Progress bar and status line in the visualiser, at most once a second."""
        now = time.monotonic()
        if now - self._last_report < 1.0 and done < total:
            return
        self._last_report = now
        if total:
            self.set_progress_percentage(min(100, round(100 * done / total)))
        self.set_status_message(f"{self.label}: {what}")


# A temporary file nobody has written to for this long was left by a killed run.
STALE_SECONDS = 600


def sweep_stale(path: str) -> None:
    """Remove what killed runs left beside ``path`` (luigi's `{path}-luigi-tmp-*` files): a
    failed run removes its own, but a SIGKILL or a power cut cannot. A file written in the last
    STALE_SECONDS may be another run's work in progress, so it is left alone."""
    now = time.time()
    for stale in Path(path).parent.glob(Path(path).name + "-luigi-tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            if now - stale.stat().st_mtime > STALE_SECONDS:
                stale.unlink()
                logger.info("removed %s, left by a run that was killed", stale)


@contextlib.contextmanager
def atomic_path(target: luigi.LocalTarget) -> Iterator[str]:
    """Luigi's temporary_path (write beside, rename when done), plus removal of the partial file
    when the step fails, so a failed run leaves neither a complete-looking output nor litter
    (and what a killed run left is swept first)."""
    sweep_stale(target.path)
    with target.temporary_path() as tmp:
        try:
            yield tmp
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
