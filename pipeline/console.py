"""What a user of `luigi --module pipeline ...` reads on the console, through luigi's internals
(pipeline/luigi_internals.py: luigi offers no hooks for it): installed once, by the package's import.

- A mistake on the command line is one line and exit code 2, before anything runs: an unknown task
  (with the nearest name), an unknown flag (with the nearest flag), a setting luigi cannot read,
  no task at all (then the tasks a user runs are listed, one line each).
- A failure the pipeline knows (pipeline/errors.py) leaves no traceback on the console: it goes to
  a log file in the staging area, and the run ends, after luigi's execution summary, with one line
  per failed step: what went wrong and what to do. An unforeseen one keeps its traceback there.

The log file is `[ingest] staging`/logs/, one per run that failed, written only when something
failed: the staging area is the deployment's own scratch space on local disk (the lake may be a
bucket), so runs of two setups never mix their logs, and tests that give each run its own staging
area find each run's file there.

With `--workers 2` a step runs in a forked process: the one that logs its failure, so that process
writes the log file; the lines are read back from that file by the command's own process at the
end. So one mechanism serves in-process and forked steps, and luigi's `on_failure` (the
explanation luigid keeps) is left to the steps.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import sys
import time
import traceback
from typing import Optional

import luigi
from luigi.cmdline_parser import CmdlineParser
from luigi.parameter import MissingParameterException
from luigi.rpc import RPCError
from luigi.task_register import Register, TaskClassNotFoundException

from pipeline import download, errors, luigi_internals, params, redaction

# The tasks a user runs (the others are their steps), listed when no task is given.
USER_TASKS = ("IngestMonth", "IngestZones", "IngestRange", "IngestRecent", "Reingest", "Republished")

# luigi's words when a step fails (luigi/worker.py, TaskProcess._handle_run_exception): the task is
# the record's third argument.
_FAILED = "[pid %s] Worker %s failed    %s"
# ... and when a step's complete() raised (luigi/worker.py, Worker._log_complete_error).
_COMPLETE_FAILED = "Will not run "
# How a failure is marked in the log file: the command's process reads these lines back.
_MARK = "FAILED "


def text_of(error: BaseException, advice: bool = True) -> str:
    """``error``'s message on one line, where the text of the error it was raised from (a
    requests ConnectionError's chain of wrappers) stands as that chain's innermost reason
    (`[Errno 111] Connection refused`); without the advice on going offline if not ``advice``
    (a retry's warning: the run's last line gives it)."""
    text = " ".join(str(error).split())
    inner = error.__cause__ or error.__context__
    if inner is not None:
        innermost, deeper = inner, inner.__cause__ or inner.__context__
        while deeper is not None:
            innermost, deeper = deeper, deeper.__cause__ or deeper.__context__
        text = text.replace(" ".join(redaction.scrub(str(inner)).split()), " ".join(str(innermost).split()))
    return text if advice else text.replace(" ".join(download.OFFLINE_HINT.split()), "")


def one_line(label: str, error: BaseException) -> str:
    """`yellow 2021-08 (https://...): not published (HTTP 404); check the month, ...`: what went
    wrong and where, then what to do (errors.hint_of). ``label`` names the step's data ('yellow
    2021-08'), for the messages that do not start with it."""
    hint = errors.hint_of(error)
    text = text_of(error)
    what = text if text.startswith(label) else f"{label}: {text}"
    if hint is None:
        return f"{what} ({type(error).__module__}.{type(error).__name__}: not a failure the pipeline expects; the traceback is above)"
    return f"{what}; {hint}" if hint else what


class _Failures:
    """One command's log of failures: the file is created at the first one."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, "logs", time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}.log")

    def write(self, task: object, error: BaseException) -> bool:
        """Write the failure's line and traceback; False if the file cannot be written (then the
        console keeps the traceback, which must be somewhere)."""
        line = one_line(getattr(task, "label", str(task)), error)
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        block = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {task} failed\n{_MARK}{line}\n{trace}\n"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as log:
                log.write(redaction.scrub(block))  # one write: forked steps append whole blocks
        except OSError:
            return False
        return True

    def lines(self) -> list[str]:
        try:
            with open(self.path, encoding="utf-8") as log:
                lines = [line[len(_MARK) :].rstrip("\n") for line in log if line.startswith(_MARK)]
        except FileNotFoundError:
            return []
        return list(dict.fromkeys(lines))  # a step's complete() asked again by each task above it says it again


_failures: Optional[_Failures] = None  # set while a command's tasks run
# The tasks whose complete() raised a failure the pipeline knows, written to the log file: luigi's
# warning about each drops its traceback (luigi hands it on as text only).
_checks_failed: set[str] = set()


class _Console(logging.Filter):
    """On luigi-interface's records: the one-line forms of luigi's errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.msg == _FAILED and error is not None and _failures is not None and isinstance(record.args, tuple):
            if _failures.write(record.args[2], error) and errors.hint_of(error) is not None:
                record.exc_info = None  # a known failure: its traceback is in the log file
            return True
        text = str(record.msg)
        if text.startswith(_COMPLETE_FAILED) and text[len(_COMPLETE_FAILED) :].partition(" or any")[0] in _checks_failed:
            record.msg = text.partition(":\n")[0] + "; the last lines of the run say why"
            return True
        if isinstance(error, RPCError) or text.startswith("Failed connecting to remote scheduler"):
            record.exc_info = None  # luigi's tries and its scheduling error: the last line says what to do
        if record.msg != "Uncaught exception in luigi":
            return True
        # An error building the command's task (exit code 40): a user's mistake is one line.
        if isinstance(error, (params.UsageError, MissingParameterException)):
            # luigi's own words: "IngestMonth[args=(), kwargs={...}]: requires the 'month' parameter to be set"
            missing = re.match(r"(\w+)\[.*\]: requires the '(\w+)' parameter", str(error))
            text = f"{missing[1]}: --{missing[2].replace('_', '-')} is required" if missing else str(error)
            text += " (see --help)"
        elif isinstance(error, RPCError):
            url = re.search(r"remote scheduler '([^']*)'", str(error))
            text = (
                f"no central scheduler (luigid) answers at {url[1] if url else 'the configured address'}: start one "
                '(README, "The central scheduler"), or add --local-scheduler'
            )
        else:
            return True
        record.msg, record.args, record.exc_info = "%s", (text,), None
        return True


class _ShortRetry(logging.Filter):
    """A retry's warning on one short line: the innermost reason of what failed, not the chain of
    wrappers around it, and no advice (the run's last line gives it, once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args and isinstance(record.args[0], BaseException):
            record.args = (text_of(record.args[0], advice=False), *record.args[1:])
        return True


def _check_settings() -> None:
    """Every setting read as its task would read it, before any task runs: a value luigi cannot
    take (`--source-attempts abc`, a value out of range) is one line, exit code 2, not a failed
    step. The command line's values count (luigi's parser is active here)."""
    from pipeline import settings

    for section in vars(settings).values():
        if not (isinstance(section, type) and issubclass(section, luigi.Config) and section.__module__ == settings.__name__):
            continue
        for name, parameter in section.get_params():
            try:
                parameter.task_value(section.get_task_family(), name)
            except (ValueError, TypeError) as e:
                flag = f"--{section.get_task_family()}-{name}".replace("_", "-")
                _usage(f"{flag} ([{section.get_task_family()}] {name}): {e.reason if isinstance(e, params.OutOfRange) else e}")


def _usage(message: str) -> None:
    print(f"luigi: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _schedule_and_run(tasks, *args, _luigis=luigi_internals.luigis_schedule_and_run, **kwargs):
    """luigi's own, and for a command (not luigi.build from Python): the settings checked first,
    the failures' lines printed last, after luigi's execution summary."""
    global _failures
    if CmdlineParser.get_instance() is None:
        return _luigis(tasks, *args, **kwargs)
    from pipeline import settings

    _check_settings()
    _failures = _Failures(settings.ingest().staging)
    try:
        return _luigis(tasks, *args, **kwargs)
    finally:
        lines, path, _failures = _failures.lines(), _failures.path, None
        if lines:
            print(f"\n{len(lines)} failed (the tracebacks: {path}):", file=sys.stderr)
            print("\n".join(lines), file=sys.stderr)


def _exit_with_help_or_mistake(parser, known_args, _luigis=luigi_internals.luigis_exit_with_help):
    """Luigi's --help, then the task named: none, or one luigi does not know, is one line (luigi
    said `No task specified` and exited 1, or raised with a traceback)."""
    _luigis(parser, known_args)
    name = known_args.root_task
    if not name:
        listing = "\n".join(f"  {task:<13} {_first_line(Register.get_task_cls(task))}" for task in USER_TASKS)
        print(f"luigi: error: no task given; the tasks (--help after one lists its flags):\n{listing}", file=sys.stderr)
        raise SystemExit(2)
    try:
        Register.get_task_cls(name)
    except TaskClassNotFoundException:
        import pipeline

        near = difflib.get_close_matches(name, [*USER_TASKS, *pipeline.__all__], n=1)
        _usage(f"no task {name}" + (f"; did you mean {near[0]}?" if near else "") + " (luigi --module pipeline lists the tasks)")


def _first_line(cls: type) -> str:
    """A task's docstring's first sentence, or where that is long, its part before a colon."""
    sentence = re.split(r"\.\s|:\s+\d\.\s", " ".join((cls.__doc__ or "").split()), maxsplit=1)[0].rstrip(".")
    return sentence.split(":")[0] if len(sentence) > 100 else sentence


def _build_parser(*args, _luigis=luigi_internals.luigis_build_parser, **kwargs) -> argparse.ArgumentParser:
    """luigi's parser, whose errors are one line (without the usage block of every flag); an
    unknown flag names the nearest known one."""
    parser = _luigis(*args, **kwargs)

    def error(message: str):
        unknown = message.removeprefix("unrecognized arguments: ")
        if unknown != message:
            flags = [flag for action in parser._actions for flag in action.option_strings]
            near = [m for arg in unknown.split() for m in difflib.get_close_matches(arg.split("=")[0], flags, n=1)]
            message += f"; did you mean {', '.join(near)}?" if near else " (see --help)"
        _usage(message)

    parser.error = error
    return parser


def _check_complete_cached(task, *args, _luigis=luigi_internals.luigis_check_complete_cached, **kwargs):
    """luigi's check of a step's complete(); one that raises is a failure too (a warehouse that
    refuses the connection fails the run at scheduling, exit code 35): logged here, where the
    error is still at hand (luigi keeps only its traceback's text)."""
    try:
        return _luigis(task, *args, **kwargs)
    except Exception as error:
        if _failures is not None and _failures.write(task, error) and errors.hint_of(error) is not None:
            _checks_failed.add(str(task))
        raise


def install() -> None:
    logging.getLogger("luigi-interface").addFilter(_Console())
    logging.getLogger("pipeline.retry").addFilter(_ShortRetry())
    luigi_internals.hook(
        schedule_and_run=_schedule_and_run,
        check_complete_cached=_check_complete_cached,
        exit_with_help=_exit_with_help_or_mistake,
        build_parser=_build_parser,
    )
