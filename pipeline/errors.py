"""The failures the pipeline expects, decided here and nowhere else: an error the pipeline raises
on purpose is a `PipelineError`, and a failed step that raised one ends in one line that says what
went wrong and what to do (pipeline/console.py prints it), its traceback going to a log file
instead of the console. Anything else is a bug: its traceback stays.

The lowest module of the package: every module that raises an expected failure imports this one,
so it imports none of them (each class says what to do about it in its own ``hint``).
"""

from __future__ import annotations

from typing import Optional


class PipelineError(Exception):
    """An expected failure: its message, built from its fields, says what went wrong and where
    (service, month, file, column, row, value); ``hint`` says what to do about it ("" where the
    message says it already)."""

    hint: str = ""


def hint_of(error: BaseException) -> Optional[str]:
    """What to do about ``error`` ("" when its message says it), or None if it is no failure the
    pipeline expects."""
    return error.hint if isinstance(error, PipelineError) else None
