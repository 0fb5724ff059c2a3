"""Every luigi internal the pipeline leans on, here and nowhere else (luigi offers no public hook
for any of these): a luigi release that changes one breaks this module only, and
tests/test_luigi_internals.py fails first, naming which.

- a task's id: computed in luigi's Task.__init__ from the parameters alone, and its hash cached
  there (scheduling.Scheduled adds the deployment to it);
- the progress reporters luigi's worker sets on a task while it runs (scheduling.Scheduled.tell),
  and lends to a step it runs itself (dataset_task.DatasetTask.inputs_here);
- the settings files luigi reads, a list on its config parser class (settings.load);
- a parameter's argparse arguments (params: the command line checks a value) and the values a
  parameter's default is drawn from (params.Moment, params.ThisMonth: computed per task);
- bulk_complete's function behind its classmethod, called for another class's task factory
  (backfill.PublishedMonths);
- the command line's parser, its run and its check of a step's complete() (console);
- the central scheduler's state and where it is saved (pipeline/luigid.py saves it as luigid's
  own clean stop does, more often).
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Callable, Iterable, Iterator, Optional

import luigi
import luigi.interface
import luigi.scheduler
import luigi.worker
from luigi.cmdline_parser import CmdlineParser
from luigi.configuration import LuigiConfigParser
from luigi.task import task_id_str

# What a worker calls the reporters it sets on a running task (luigi/worker.py, TaskProcess).
STATUS_MESSAGE = "set_status_message"
PROGRESS_PERCENTAGE = "set_progress_percentage"


def set_task_id(task: Any, family: str, params: dict[str, str]) -> None:
    """Give ``task`` the id luigi would compute from ``params``, and the hash luigi caches of it
    (Task.__hash__ returns the id's hash, cached in __init__)."""
    task.task_id = task_id_str(family, params)
    task._Task__hash = hash(task.task_id)  # luigi's, name-mangled


def reporters(task: object) -> tuple[Optional[Callable], Optional[Callable]]:
    """The status message and progress percentage callables the worker set on ``task`` while it
    runs (None outside a run)."""
    return getattr(task, STATUS_MESSAGE, None), getattr(task, PROGRESS_PERCENTAGE, None)


def lend_reporters(task: object, to: object) -> None:
    """Let ``to`` (a step ``task`` runs in its own process) report through ``task``'s reporters:
    what it does shows on ``task`` in the visualiser."""
    for name in (STATUS_MESSAGE, PROGRESS_PERCENTAGE):
        setattr(to, name, getattr(task, name, None))


def save_state(scheduler: luigi.scheduler.Scheduler) -> str:
    """Save ``scheduler``'s state as luigid's clean stop does (Scheduler.dump: the pickled state,
    what luigid loads when it starts), but through a temporary file renamed over the state file,
    so a kill in the middle leaves the previous save whole; the state file's path."""
    state = scheduler._state
    path = state._state_path
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(state.get_state(), f)
    os.replace(tmp, path)
    return path


def config_paths() -> list[str]:
    """The settings files luigi reads, in order (the list itself: assigning into it changes them)."""
    return LuigiConfigParser._config_paths


class ArgparseChecked:
    """A parameter (mixin, before luigi's Parameter) whose text argparse checks with
    ``self.check``, as luigi's own BoolParameter sets its argparse arguments."""

    check: Callable[[str], str]

    def _parser_kwargs(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**super()._parser_kwargs(*args, **kwargs), "type": self.check}  # type: ignore[misc]  # luigi.Parameter's


class DefaultPerTask:
    """A parameter (mixin, before luigi's Parameter) whose default is ``self.default_now()``,
    computed each time a task is made, after the command line and the settings files had their
    say (a luigi default is fixed once, when the class is defined)."""

    def default_now(self) -> Any:
        raise NotImplementedError

    def _value_iterator(self, task_name: str, param_name: str) -> Iterator[tuple[Any, Optional[str]]]:
        yield from super()._value_iterator(task_name, param_name)  # type: ignore[misc]  # luigi.Parameter's
        yield (self.default_now(), None)


def bulk_complete(of: type, factory: Callable[..., luigi.Task], values: Iterable) -> Iterable:
    """``of.bulk_complete``, with its tasks made by ``factory`` (luigi's RangeBase calls it on
    the class; the function behind the classmethod takes any class-like callable)."""
    return of.bulk_complete.__func__(factory, values)  # type: ignore[attr-defined]


# luigi's own, as the console's wrappers call them.
luigis_schedule_and_run = luigi.interface._schedule_and_run
luigis_check_complete_cached = luigi.worker.check_complete_cached
luigis_exit_with_help = CmdlineParser._possibly_exit_with_help
luigis_build_parser = CmdlineParser._build_parser


def hook(*, schedule_and_run: Callable, check_complete_cached: Callable, exit_with_help: Callable, build_parser: Callable) -> None:
    """Put the console's wrappers where luigi calls its own."""
    luigi.interface._schedule_and_run = schedule_and_run
    luigi.worker.check_complete_cached = check_complete_cached
    CmdlineParser._possibly_exit_with_help = staticmethod(exit_with_help)  # type: ignore[method-assign]  # the hook itself
    CmdlineParser._build_parser = staticmethod(build_parser)  # type: ignore[method-assign]  # the hook itself
