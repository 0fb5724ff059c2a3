"""The failures the pipeline expects, decided here and nowhere else: a failed month ends in one
line that says what went wrong and what to do (pipeline/console.py prints it), and its traceback
goes to a log file instead of the console. Anything not known here is a bug: its traceback stays.

An error the pipeline raises on purpose is a `PipelineError`, or, until the classes written before
it inherit from it, one of the classes `known()` lists with the hint a user needs.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

Hint = Union[str, Callable[[BaseException], str], None]


class PipelineError(Exception):
    """An expected failure: its message says what went wrong and where (service, month, file);
    ``hint`` says what to do about it."""

    hint: str = ""


def _not_published_hint(_error: BaseException) -> str:
    from pipeline import settings

    if settings.source().kind == "releases":
        return "check the month (the course's copies hold 2019-01..2021-07), or --source-kind tlc"
    return "check the month: the TLC publishes a month about two months after it ends"


def known() -> dict[type, Hint]:
    """The expected failures raised by classes that do not inherit `PipelineError` yet, each with
    what to do when the message does not say it already (None). Imported here, when asked, so
    that this module imports nothing of the steps it describes."""
    from pipeline import catalog, convert, dataset_task, download, params, settings, zone_shapes
    from pipeline.targets import gcs
    from pipeline.warehouses import bigquery, duckdb_views, postgres

    return {
        download.MonthNotPublished: _not_published_hint,
        download.SourceError: None,  # the source: refused, cut short, too slow, not the file asked for
        convert.SourceCorrupt: "the download is damaged: run the same command again to fetch it anew",
        catalog.SchemaMismatch: "the source's layout changed: the catalog (pipeline/catalog.py) must learn it",
        catalog.ConversionError: "the source holds a value the catalog does not accept: see the row named",
        zone_shapes.ShapesError: None,
        dataset_task.OutsideRoot: None,
        settings.LakeRootError: None,
        params.UsageError: "see --help",
        postgres.PostgresError: None,
        duckdb_views.WarehouseBusy: None,
        bigquery.BigQueryError: None,
        gcs.GCSError: None,
    }


def hint_of(error: BaseException) -> Optional[str]:
    """What to do about ``error`` ("" when its message says it), or None if it is no failure the
    pipeline knows."""
    if isinstance(error, PipelineError):
        return error.hint
    table = known()
    for cls in type(error).__mro__:  # the most specific class listed
        if cls in table:
            hint = table[cls]
            return hint(error) if callable(hint) else (hint or "")
    return None


def text_of(error: BaseException, advice: bool = True) -> str:
    """``error``'s message on one line, where the text of the error it was raised from (a
    requests ConnectionError's chain of wrappers) stands as that chain's innermost reason
    (`[Errno 111] Connection refused`); without the advice on going offline if not ``advice``
    (a retry's warning: the run's last line gives it)."""
    from pipeline import download, redaction

    text = " ".join(str(error).split())
    inner = error.__cause__ or error.__context__
    if inner is not None:
        innermost = inner
        while (innermost.__cause__ or innermost.__context__) is not None:
            innermost = innermost.__cause__ or innermost.__context__
        text = text.replace(" ".join(redaction.scrub(str(inner)).split()), " ".join(str(innermost).split()))
    return text if advice else text.replace(" ".join(download.OFFLINE_HINT.split()), "")


def one_line(label: str, error: BaseException) -> str:
    """`yellow 2021-08 (https://...): not published (HTTP 404); check the month, ...`: what went
    wrong and where, then what to do. ``label`` names the step's data ('yellow 2021-08'), for the
    messages that do not start with it."""
    hint = hint_of(error)
    text = text_of(error)
    what = text if text.startswith(label) else f"{label}: {text}"
    if hint is None:
        return f"{what} ({type(error).__module__}.{type(error).__name__}: not a failure the pipeline expects; the traceback is above)"
    return f"{what}; {hint}" if hint else what
