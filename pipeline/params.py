"""The parameters users type: a mistake on the command line ends in one line that says what is
wrong and what is right, with exit code 2 (argparse's own, as for an unknown flag), instead of a
traceback from deep inside luigi.

Luigi parses a parameter's text only when it builds the task, after the command line was
accepted, so a bad month surfaced as `ValueError: unconverted data remains: 3` with exit code 40.
Each parameter here also hands argparse a check (luigi_internals.ArgparseChecked, the hook luigi's
own BoolParameter uses), so the command line itself refuses the mistake.
"""

from __future__ import annotations

import argparse
import datetime
from typing import Any, Callable, Mapping, Sequence

import luigi

from pipeline import catalog, luigi_internals
from pipeline.errors import PipelineError


class UsageError(PipelineError, ValueError):
    """Parameters that make no sense together (a month for the zones, --first after --last):
    found when luigi builds the task, and shown as this one line (pipeline/console.py)."""

    hint = "see --help"


class _Checked(luigi_internals.ArgparseChecked):
    """A parameter whose text argparse checks with ``self.check`` (which returns it unchanged
    or raises argparse.ArgumentTypeError)."""


class AtLeast(_Checked):
    """A number with a least value (`[source] attempts`: 1, the tries in all): below it is refused
    in one line before any task runs, from the command line (argparse) or a settings file
    (pipeline/console.py reads every setting first), not found by a failing step."""

    # luigi's, from the number parameter this is mixed into (IntParameter, FloatParameter)
    parse: Callable[[str], Any]

    def __init__(self, least: float, **kwargs):
        super().__init__(**kwargs)
        self.least = least

    def check(self, text: str) -> str:
        try:
            self.normalize(self.parse(text))
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
        return text

    def normalize(self, x):
        x = super().normalize(x)
        if x is not None and x < self.least:
            raise UsageError(f"{x:g} is below {self.least:g}, the least it can be")
        return x

    def task_value(self, task_name, param_name):
        """The value, a setting's named as its section and key when it is refused."""
        try:
            return super().task_value(task_name, param_name)
        except UsageError as e:
            raise OutOfRange(task_name, param_name, str(e)) from None


class OutOfRange(UsageError):
    """A setting below its least value, read where it is first needed."""

    def __init__(self, section: str, key: str, reason: str):
        self.section, self.key, self.reason = section, key, reason
        super().__init__(f"[{section}] {key}: {reason}")


class Count(AtLeast, luigi.IntParameter):
    """A whole number, at least ``least``."""


class Amount(AtLeast, luigi.FloatParameter):
    """A number, at least ``least`` (seconds, KiB/s, MiB)."""


class Month(_Checked, luigi.MonthParameter):
    """YYYY-MM."""

    def check(self, text: str) -> str:
        try:
            self.parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a month: give YYYY-MM, for example 2021-01") from None
        return text


class ThisMonth(luigi_internals.DefaultPerTask, Month):
    """YYYY-MM; by default the month the task is made in (when the command runs, not when the
    module was imported: a long-lived scheduler process or test session would keep one month)."""

    def default_now(self) -> datetime.date:
        return datetime.date.today().replace(day=1)


class OptionalMonth(Month):
    """YYYY-MM, or none (the zones have no month). luigi writes a parameter as text whenever it
    hands a task on (dynamic dependencies, luigid) and its MonthParameter writes None as "None",
    which it cannot read back: here no month is the empty text, and "None" still reads as none."""

    def __init__(self, **kwargs: Any):
        # None by default (luigi types a MonthParameter's default as a date; this one's is none).
        kwargs.setdefault("default", None)
        super().__init__(**kwargs)

    def serialize(self, x) -> str:
        return "" if x is None else super().serialize(x)

    def parse(self, x: str):
        return None if x in ("", "None") else super().parse(x)


class Choice(_Checked, luigi.ChoiceParameter):
    """One of ``choices``, listed in their order (luigi keeps them in a set, so its --help and
    errors showed them in a different order every run); ``hints`` say where a near miss belongs."""

    def __init__(self, *, choices: Sequence[str], hints: Mapping[str, str] = {}, **kwargs):
        super().__init__(choices=choices, **kwargs)
        self.ordered, self.hints = tuple(choices), dict(hints)
        self.description = (self.description or "").rpartition("Choices: {")[0] + "Choices: " + ", ".join(self.ordered)

    def check(self, text: str) -> str:
        if text not in self.ordered:
            hint = self.hints.get(text)
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(self.ordered)}" + (f"; {hint}" if hint else ""))
        return text


class Services(_Checked, luigi.Parameter):
    """Comma-separated service names, each checked against the catalog."""

    @staticmethod
    def names(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        unknown = [s for s in names if s not in catalog.SERVICES]
        if unknown or not names:
            raise UsageError(f"--services: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(catalog.SERVICES)}")
        return names

    def check(self, text: str) -> str:
        try:
            self.names(text)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("--services: ")) from None
        return text


ZONES_HINT = "the zone lookup has no month: luigi --module pipeline IngestZones"


class Moment(luigi_internals.DefaultPerTask, luigi.Parameter[datetime.datetime]):
    """A moment to the microsecond, YYYY-MM-DDTHHMMSS.ffffff; by default the moment the task is
    made (a luigi default is fixed once, when the class is defined: every task of a process, or
    of a test session, would share it). Finer than luigi's DateSecondParameter, so that a file
    written after it is told from one written in the same second before it."""

    FORMAT = "%Y-%m-%dT%H%M%S.%f"

    def parse(self, x: str) -> datetime.datetime:
        return datetime.datetime.strptime(x, self.FORMAT if "." in x else self.FORMAT.removesuffix(".%f"))

    def serialize(self, x: datetime.datetime) -> str:
        return x.strftime(self.FORMAT)

    def normalize(self, x):
        return self.parse(x) if isinstance(x, str) else x

    def default_now(self) -> datetime.datetime:
        return datetime.datetime.now()
