"""What every step has in common: it works on one dataset file of one service (a month of trips,
or the zone lookup), reports progress to the visualiser, and writes its output atomically, never
outside its root.

Nothing outside its roots: the lake root and the staging area are the only places a step writes
or deletes, and it never does so through a symbolic link below them (a root itself may be one: that
is where the user put it). Every local write and delete goes through `atomic_path`, `remove` or
`sweep_stale` here, which check the folders from the root down with lstat.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import luigi
from luigi.task import flatten

from pipeline import catalog, completion, luigi_internals, params, redaction, settings
from pipeline.errors import PipelineError
from pipeline.scheduling import Scheduled
from pipeline.targets.marker import MonthMarker

logger = logging.getLogger("pipeline")


class DatasetTask(Scheduled, luigi.Task):
    service = params.Choice(choices=list(catalog.SERVICES), description="The TLC service, or zones for the zone lookup.")
    month = params.OptionalMonth(description="YYYY-MM: the month of the published file (not for zones).")

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

    def in_staging(self) -> bool:
        """Whether every output of this step is in the staging area (this host's own)."""
        staging = os.path.abspath(settings.ingest().staging) + os.sep
        outputs = flatten(self.output())
        return bool(outputs) and all(isinstance(t, luigi.LocalTarget) and os.path.abspath(t.path).startswith(staging) for t in outputs)

    def inputs_here(self) -> None:
        """Every input of this step there on this host, before it runs (inputs_here)."""
        inputs_here(self, self.label)

    def on_failure(self, exception: BaseException) -> str:
        """What luigid keeps and the visualiser shows of the failure (luigi's traceback text),
        without the secrets the settings carry (redaction: one scrubber, whatever raised)."""
        return redaction.scrub(super().on_failure(exception))

    def report(self, done: float, total: float, what: str) -> None:
        """Progress bar and status line in the visualiser, at most once a second (scheduling.tell:
        never waits for the scheduler, never fails the step)."""
        now = time.monotonic()
        if now - self._last_report < 1.0 and done < total:
            return
        self._last_report = now
        self.tell(f"{self.label}: {what}", min(100, round(100 * done / total)) if total else None)


def inputs_here(task: luigi.Task, label: str) -> None:
    """Everything ``task`` requires, complete and on this host, before it runs: called first by
    every step that has inputs (ToParquet, LakeFile, ReplicaFile, the sinks) and by every flow
    (Flow), in place of luigi's own check at run time (`[worker] check_unfulfilled_deps = false`
    in luigi.cfg), which cannot tell a host's staging area from what all hosts share.

    Each host has a staging area of its own, while luigid takes a step as done wherever it ran:
    with many hosts on one luigid, a step may be given to a host other than the one that made its
    staging input (ToParquet's download, LakeFile's Parquet file). Such an input is made again
    here, in this process (its own inputs first, the same way), so a step never reads another
    host's disk and never fails for it. Anything else that is not complete (a lake file, a flow's
    step that ended without its output) fails the task, naming it, as luigi's check would: nothing
    is marked done over a missing input."""
    missing = []
    for dep in flatten(task.requires()):
        if dep.complete():
            continue
        if isinstance(dep, DatasetTask) and dep.in_staging():
            logger.info("%s: %s is not on this host (made on another, or removed); making it again here", label, dep)
            luigi_internals.lend_reporters(task, dep)
            dep.inputs_here()
            dep.run()
        else:
            paths = [str(t.path) for t in flatten(dep.output())]
            missing.append(f"{dep} ({', '.join(paths)})" if paths else str(dep))
    if missing:
        raise UnfulfilledInput(label, missing)


# What Flow and SourcePin are mixed into, for the type checker: they use luigi.Task's methods (at
# run time plain mixins, so that luigi registers no task of its own for them).
if TYPE_CHECKING:
    _Task = luigi.Task
else:
    _Task = object


class Flow(_Task):
    """A flow over steps (mixin, before luigi's WrapperTask): it ends done only when every step it
    requires is complete (inputs_here), never because its own run() did nothing."""

    def run(self) -> None:
        inputs_here(self, repr(self))


class SourcePin(_Task):
    """A parameter for the steps whose output a Reingest replaces (the lake file, each warehouse,
    the flows over them): with it, the output is complete only when it came from that source
    file, so the old output stays until the new one replaces it."""

    source_sha256 = luigi.Parameter(
        default="", description="Only complete when made from the source file with this sha256 (set by Reingest; empty: any)"
    )
    recount = luigi.BoolParameter(
        description="Only complete when each warehouse holds the lake file's row count, counted there where that costs "
        "nothing, not only as its marker claims (set by Reingest)"
    )

    def complete(self) -> bool:
        if not super().complete():
            return False
        output = self.output()
        if not self.recount or not isinstance(output, MonthMarker):
            return True
        return output.holds(self.requires().output().record().rows)

    def __repr__(self) -> str:
        # Logs name a step as they always have; the pin and the recount only when there are.
        shown = [
            f"{name}={param.serialize(getattr(self, name))}"
            for name, param in self.get_params()
            if param.significant and (name not in ("source_sha256", "recount") or getattr(self, name))
        ]
        return f"{self.get_task_family()}({', '.join(shown)})"


# A temporary file nobody has written to for this long was left by a killed run.
STALE_SECONDS = 600
# Where a root's temporary files are written: on the same filesystem as the outputs (so the final
# rename is atomic), and outside every service folder, because lake readers take every file under
# a service's folder as data (DuckDB's `**` glob reads hidden files and folders too).
TEMP_AREA = ".tmp"
# The names of what atomic_path writes in a temp area ({name}.{pid}-{8 hex}), and of what luigi's
# own temporary_path left beside outputs in earlier versions: a sweep deletes nothing else.
TEMP_NAME = re.compile(r".+\.\d+-[0-9a-f]{8}")
LUIGI_TEMP_NAME = re.compile(r".+-luigi-tmp-\d+")


class UnfulfilledInput(PipelineError, RuntimeError):
    """A step's input that all hosts share (the lake) is not complete when the step runs."""

    def __init__(self, label: str, missing: list[str]):
        self.label, self.missing = label, missing
        dependency = "dependency" if len(missing) == 1 else "dependencies"
        super().__init__(f"{label}: unfulfilled {dependency} at run time: {', '.join(missing)}")


class OutsideRoot(PipelineError, RuntimeError):
    """A path a step would write or delete is not plainly inside its root: outside it, or reached
    through a symbolic link below it."""

    def __init__(self, path: str, root: str, why: str):
        self.path, self.root, self.why = path, root, why
        super().__init__(
            f"{path}: {why}; the pipeline writes and deletes only inside {root}, never through a link below it. "
            "Remove the link, or point the setting ([lake] root, [ingest] staging) at the real folder"
        )


def inside(root: str, folder: str, make: bool = True) -> Path:
    """``folder``, which must lie under ``root``, with every folder from ``root`` down to it made
    where missing (unless not ``make``) and checked (lstat) to be a real folder, not a link.
    Raises OutsideRoot."""
    base = os.path.abspath(root)
    relative = os.path.relpath(os.path.abspath(folder), base)
    if relative == ".." or relative.startswith(".." + os.sep) or os.path.isabs(relative):
        raise OutsideRoot(folder, root, "it is not under the root")
    os.makedirs(base, exist_ok=True)
    current = Path(base)
    for part in Path(relative).parts:
        if part == ".":
            continue
        current = current / part
        if make:
            with contextlib.suppress(FileExistsError):
                os.mkdir(current)
        elif not os.path.lexists(current):
            break  # nothing below it exists, so no link either
        mode = os.lstat(current).st_mode
        if stat.S_ISLNK(mode):
            raise OutsideRoot(str(current), root, f"a symbolic link (to {os.readlink(current)})")
        if not stat.S_ISDIR(mode):
            raise OutsideRoot(str(current), root, "not a folder")
    return current


def sweep_stale(folder: Path, name: re.Pattern = TEMP_NAME) -> None:
    """Remove what killed runs left in ``folder`` (checked by the caller with `inside`): a failed
    run removes its own temporary file, a SIGKILL or a power cut cannot. Only regular files whose
    name is a temporary one (``name``) are touched, never a link; a file written in the last
    STALE_SECONDS may be another run's work in progress, so it is left alone."""
    now = time.time()
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if (
                    name.fullmatch(entry.name)
                    and entry.is_file(follow_symlinks=False)
                    and now - entry.stat(follow_symlinks=False).st_mtime > STALE_SECONDS
                ):
                    os.unlink(entry.path)
                    logger.info("removed %s, left by a run that was killed", entry.path)


def remove(target: luigi.LocalTarget, root: str) -> None:
    """Delete the file ``target`` names under ``root`` (nothing if it is not there), never through
    a link: the file itself may not be one either."""
    folder = inside(root, os.path.dirname(target.path))
    path = folder / os.path.basename(target.path)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise OutsideRoot(str(path), root, "a folder where a file should be")
        os.unlink(path)


@contextlib.contextmanager
def atomic_path(target: luigi.LocalTarget, root: str) -> Iterator[str]:
    """A temporary path in ``root``'s temp area, renamed over the target when the block ends
    (luigi's temporary_path, but the rename replaces: a step whose output is partly there from
    a cut run, or that lost a race to an identical run, still finishes); removed when the block
    fails, so a failed run leaves neither a complete-looking output nor litter. What killed runs
    left in the temp area is swept first (and the `-luigi-tmp-` files older versions left beside
    their outputs). Both folders are checked to be inside ``root`` with no link on the way."""
    temp_area = inside(root, os.path.join(root, TEMP_AREA))
    sweep_stale(temp_area)
    sweep_stale(inside(root, os.path.dirname(target.path), make=False), LUIGI_TEMP_NAME)
    # Not created here: the writer creates it, with the usual permissions (mkstemp's are 0600).
    tmp = str(temp_area / f"{Path(target.path).name}.{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        os.replace(tmp, inside(root, os.path.dirname(target.path)) / os.path.basename(target.path))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
