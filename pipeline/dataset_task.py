"""What every step has in common: it works on one dataset file of one service (a month of trips,
or the zone lookup), reports progress to the visualiser, and writes its output atomically."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Iterator

import luigi

from pipeline import catalog, completion, params, settings

logger = logging.getLogger("pipeline")


class DatasetTask(luigi.Task):
    service = params.Choice(choices=list(catalog.SERVICES), description="The TLC service, or zones for the zone lookup.")
    month = params.OptionalMonth(default=None, description="YYYY-MM: the month of the published file (not for zones).")

    _last_report = 0.0

    # Each kind of output asked once for all the months (pipeline/completion.py), so a range
    # over any step decides in bulk.
    bulk_complete = classmethod(completion.bulk_complete)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.svc.monthly and self.month is None:
            raise params.UsageError(f"{self.task_family}: --month YYYY-MM is required for {self.service}")
        if not self.svc.monthly and self.month is not None:
            raise params.UsageError(f"{self.task_family}: {self.service} is not monthly; drop --month")

    @property
    def svc(self) -> catalog.Service:
        return catalog.SERVICES[self.service]

    @property
    def label(self) -> str:
        """How logs and errors name the dataset: 'yellow 2021-01' or 'zones'."""
        return f"{self.service} {catalog.month_str(self.month)}" if self.month else self.service

    def staging_path(self, area: str, name: str) -> str:
        return os.path.join(settings.ingest().staging, area, self.service, name)

    def staged(self, target: luigi.LocalTarget) -> contextlib.AbstractContextManager[str]:
        """atomic_path for an output in the staging area."""
        return atomic_path(target, settings.ingest().staging)

    def report(self, done: float, total: float, what: str) -> None:
        """Progress bar and status line in the visualiser, at most once a second."""
        now = time.monotonic()
        if now - self._last_report < 1.0 and done < total:
            return
        self._last_report = now
        if total:
            self.set_progress_percentage(min(100, round(100 * done / total)))
        self.set_status_message(f"{self.label}: {what}")


class SourcePin:
    """A parameter for the steps whose output a Reingest replaces (the lake file, each warehouse,
    the flows over them): with it, the output is complete only when it came from that source
    file, so the old output stays until the new one replaces it."""

    source_sha256 = luigi.Parameter(
        default="", description="Only complete when made from the source file with this sha256 (set by Reingest; empty: any)"
    )

    def __repr__(self) -> str:
        # Logs name a step as they always have; the pin only when there is one.
        shown = [
            f"{name}={param.serialize(getattr(self, name))}"
            for name, param in self.get_params()
            if param.significant and (name != "source_sha256" or self.source_sha256)
        ]
        return f"{self.get_task_family()}({', '.join(shown)})"


# A temporary file nobody has written to for this long was left by a killed run.
STALE_SECONDS = 600
# Where a root's temporary files are written: on the same filesystem as the outputs (so the final
# rename is atomic), and outside every service folder, because lake readers take every file under
# a service's folder as data (DuckDB's `**` glob reads hidden files and folders too).
TEMP_AREA = ".tmp"


def sweep_stale(folder: Path, pattern: str = "*") -> None:
    """Remove what killed runs left in ``folder``: a failed run removes its own temporary file,
    a SIGKILL or a power cut cannot. A file written in the last STALE_SECONDS may be another
    run's work in progress, so it is left alone."""
    now = time.time()
    for stale in folder.glob(pattern):
        with contextlib.suppress(FileNotFoundError):
            if stale.is_file() and now - stale.stat().st_mtime > STALE_SECONDS:
                stale.unlink()
                logger.info("removed %s, left by a run that was killed", stale)


@contextlib.contextmanager
def atomic_path(target: luigi.LocalTarget, root: str) -> Iterator[str]:
    """A temporary path in ``root``'s temp area, renamed over the target when the block ends
    (luigi's temporary_path, but the rename replaces: a step whose output is partly there from
    a cut run, or that lost a race to an identical run, still finishes); removed when the block
    fails, so a failed run leaves neither a complete-looking output nor litter. What killed runs
    left in the temp area is swept first (and the `-luigi-tmp-` files older versions left beside
    their outputs)."""
    temp_area = Path(root) / TEMP_AREA
    temp_area.mkdir(parents=True, exist_ok=True)
    sweep_stale(temp_area)
    sweep_stale(Path(target.path).parent, "*-luigi-tmp-*")
    # Not created here: the writer creates it, with the usual permissions (mkstemp's are 0600).
    tmp = str(temp_area / f"{Path(target.path).name}.{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        Path(target.path).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target.path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
