"""The failures the pipeline expects are one kind, decided in one place (pipeline/errors.py):
every error class the pipeline raises on purpose is an errors.PipelineError, with a ``hint`` and
fields its message is built from; tests assert on the fields, not on the wording."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from google.api_core import exceptions as gexc
from hypothesis import given
from hypothesis import strategies as st

import pipeline
from pipeline import console, download, errors
from pipeline.targets import gcs
from pipeline.warehouses import bigquery, postgres

from conftest import configured

# What the pipeline defines as exceptions and never lets reach a user: a retry's signals (caught by
# retry.py) and the settings' SystemExit (luigi's command line ends with its line, exit 2).
INTERNAL = {"pipeline.retry.Transient", "pipeline.retry.Spent", "pipeline.settings.SettingsError", "pipeline.settings.SettingsNotFound"}


def pipeline_exceptions() -> list[type]:
    modules = [importlib.import_module(m.name) for m in pkgutil.walk_packages(pipeline.__path__, "pipeline.")]
    return sorted(
        {
            cls
            for module in modules
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__
        },
        key=lambda cls: f"{cls.__module__}.{cls.__qualname__}",
    )


def test_every_error_the_pipeline_raises_on_purpose_is_a_pipeline_error_with_a_hint():
    found = pipeline_exceptions()
    public = [cls for cls in found if not cls.__name__.startswith("_") and f"{cls.__module__}.{cls.__qualname__}" not in INTERNAL]

    assert len(public) > 30  # the walk found the package's errors
    assert [cls for cls in public if not issubclass(cls, errors.PipelineError)] == []
    assert [cls for cls in public if not isinstance(cls.__dict__.get("hint", errors.PipelineError.hint), (str, property))] == []


def test_the_classes_keep_the_bases_their_callers_catch():
    """Concrete: the classes errors.py listed before they inherited PipelineError."""
    from pipeline import catalog, convert, dataset_task, params, settings, zone_shapes
    from pipeline.warehouses import duckdb_views

    assert issubclass(convert.SourceCorrupt, OSError) and issubclass(download.SourceError, RuntimeError)
    assert all(issubclass(cls, ValueError) for cls in (catalog.SchemaMismatch, catalog.ConversionError, zone_shapes.ShapesError))
    assert all(issubclass(cls, ValueError) for cls in (params.UsageError, settings.LakeRootError, download.RecordUnreadable))
    assert all(
        issubclass(cls, RuntimeError)
        for cls in (dataset_task.OutsideRoot, postgres.PostgresError, bigquery.BigQueryError, gcs.GCSError, duckdb_views.WarehouseBusy)
    )
    assert errors.hint_of(convert.RowCountMismatch("f", "its footer", 2, 1, "read")) == (
        "the download is damaged: run the same command again to fetch it anew"
    )
    assert errors.hint_of(params.UsageError("--first after --last")) == "see --help"
    assert errors.hint_of(ValueError("a bug")) is None


@pytest.mark.parametrize(
    "kind, says",
    [
        ("tlc", "check the month: the TLC publishes a month about two months after it ends"),
        ("releases", "check the month (the course's copies hold 2019-01..2021-07), or --source-kind tlc"),
    ],
)
def test_a_month_not_published_says_what_to_check_for_the_source_it_asked(kind, says):
    with configured({("source", "kind"): kind}):
        line = console.one_line("yellow 2031-01", download.MonthNotPublished("yellow 2031-01 (x): not published (HTTP 404)"))

    assert line == f"yellow 2031-01 (x): not published (HTTP 404); {says}"


def test_an_unforeseen_error_keeps_its_name_and_traceback():
    assert console.one_line("yellow 2021-01", KeyError("x")) == (
        "yellow 2021-01: 'x' (builtins.KeyError: not a failure the pipeline expects; the traceback is above)"
    )


NOT_IDENTIFIERS = st.text(min_size=0, max_size=80).filter(lambda s: not postgres._IDENTIFIER.match(s))


@given(name=NOT_IDENTIFIERS)
def test_a_postgres_name_that_is_no_identifier_is_refused_with_its_fields(name):
    with pytest.raises(postgres.InvalidIdentifier) as refused:
        postgres.identifier(name, "[postgres] schema")

    assert (refused.value.what, refused.value.name) == ("[postgres] schema", name)
    assert str(refused.value).startswith(f"[postgres] schema {name!r} is not a valid Postgres identifier")


# As a settings file can hold it: one line, no luigi interpolation (%), no surrounding blanks.
SETTING_TEXT = st.text(st.characters(blacklist_characters="%\n\r", blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)


@given(project=SETTING_TEXT.filter(lambda s: not bigquery._PROJECT.match(s) and s.strip() == s))
def test_a_bigquery_project_that_is_no_project_id_is_refused_with_its_fields(project):
    with configured({("bigquery", "project"): project}), pytest.raises(bigquery.InvalidName) as refused:
        bigquery.client()

    assert (refused.value.setting, refused.value.value, refused.value.rule) == ("project", project, "project id")
    assert str(refused.value) == f"[bigquery] project {project!r} is not a valid project id"


@pytest.mark.parametrize(
    "raised, denied, reason",
    [(gexc.Forbidden("no bigquery.tables.get"), True, "no bigquery.tables.get"), (gexc.BadRequest("bad"), False, "400 bad")],
)
def test_a_failed_bigquery_call_names_what_was_done_and_whether_access_was_denied(raised, denied, reason):
    with pytest.raises(bigquery.CallFailed) as failed, bigquery._named("dataset p.d"):
        raise raised

    assert (failed.value.doing, failed.value.reason, failed.value.denied) == ("dataset p.d", reason, denied)
    assert str(failed.value).endswith("check the credentials and their roles") == denied


def test_a_gcs_call_denied_names_the_url_the_bucket_and_what_to_check():
    with pytest.raises(gcs.CallFailed) as failed, gcs._named("gs://b/lake/x.parquet", "uploading to"):
        raise gexc.Forbidden("no storage.objects.create")

    assert (failed.value.doing, failed.value.url) == ("uploading to", "gs://b/lake/x.parquet")
    assert failed.value.reason == "access denied to bucket b (403 no storage.objects.create)"
    assert "GOOGLE_APPLICATION_CREDENTIALS" in failed.value.advice
    assert str(failed.value) == f"uploading to gs://b/lake/x.parquet: {failed.value.reason}; {failed.value.advice}"
