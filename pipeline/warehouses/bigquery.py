"""Lake on GCS -> BigQuery: one external table per service over all of its months in the lake,
and a marker row per exposed month. On the official `google-cloud-bigquery` client.

- `external_yellow_tripdata` (and so on) reads `gs://.../yellow/*` as PARQUET, with the
  catalog's schema given explicitly (never autodetected: per-file type drift is what breaks
  external tables over many months) and the lake's `month=` folders as a hive partition key
  `month` (CUSTOM mode, declared STRING, so nothing is inferred and a filter on it prunes files).
  Catalog timestamps are DATETIME: the TLC's times are local New York times without a zone, and
  that is how BigQuery reads Parquet timestamps that are not adjusted to UTC.
- The table is created once. An existing table of that name is left alone when its definition
  matches, and refused with what differs when it does not: never replaced behind a user's back.
- A month is exposed once the table's definition matches and the month's object is in the lake
  under the table's URIs (LakeFile, upstream). Its marker row goes into `{dataset}._ingested` by
  MERGE, so there is one row per month however often it runs. Markers are read with one
  tabledata.list call (no query job, nothing billed), which also answers a whole range at once.

Credentials: Application Default Credentials. BIGQUERY_EMULATOR_HOST points at an emulator.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import TYPE_CHECKING, Any, Iterator, Optional

from pipeline import catalog, retry, settings
from pipeline.errors import PipelineError
from pipeline.lake import PARTITION_KEY, LakeRecord, LakeTarget, lake_wildcard, service_folder
from pipeline.targets.marker import MARKER_COLUMNS, MARKER_TABLE, WRITTEN, MonthMarker
from pipeline.warehouses.dialects import BIGQUERY, Misfit, add_missing_marker_columns, fits
from pipeline.warehouses.sink import Sink

# google-cloud-bigquery is imported in the functions that use it, not here: it adds half a
# second and some 70 MB to every process that imports the pipeline, and only the bigquery sink
# needs it.
if TYPE_CHECKING:
    from google.cloud import bigquery as bq

logger = logging.getLogger("pipeline.bigquery")

BQ_TYPES = BIGQUERY.table_types
# The API answers with the legacy names; a definition written with the standard ones is the same.
_SAME_TYPE = {"INT64": "INTEGER", "FLOAT64": "FLOAT", "BOOL": "BOOLEAN"}
_DATASET = re.compile(r"[A-Za-z0-9_]{1,1024}\Z")
_PROJECT = re.compile(r"[a-z0-9][a-z0-9.:-]{0,127}\Z")


class BigQueryError(PipelineError, RuntimeError):
    """BigQuery cannot expose the data; the message says what and where."""


class TableMisfit(Misfit, BigQueryError):
    """A table of the name the pipeline uses exists in the dataset and is not the one it wants
    (fields: table, service, problems, setting)."""


class InvalidName(BigQueryError):
    """A `[bigquery] project` or `dataset` setting that is no valid name of its kind (fields:
    setting, value, rule)."""

    def __init__(self, setting: str, value: str, rule: str):
        self.setting, self.value, self.rule = setting, value, rule
        super().__init__(f"[bigquery] {setting} {value!r} is not a valid {rule}")


class NoDataset(BigQueryError):
    """The dataset does not exist and the pipeline is not to create it (fields: dataset, location)."""

    def __init__(self, dataset: str, location: str):
        self.dataset, self.location = dataset, location
        super().__init__(f"dataset {dataset} does not exist; create it in {location}, or set [bigquery] create_dataset = true")


class CallFailed(BigQueryError):
    """A call to BigQuery failed, after its retries (fields: doing, reason, denied: the
    credentials lack a role)."""

    def __init__(self, doing: str, reason: str, denied: bool):
        self.doing, self.reason, self.denied = doing, reason, denied
        if denied:
            super().__init__(f"{doing}: access denied ({reason}); check the credentials and their roles")
        else:
            super().__init__(f"{doing}: {reason}")


def refuse_misfit(have: bq.Table, svc: catalog.Service, kind: str, problems: list[str]) -> None:
    """Raise TableMisfit for ``have`` where there are ``problems``: not the ``kind`` the pipeline wants."""
    if problems:
        table = f"{have.project}.{have.dataset_id}.{have.table_id}"
        raise TableMisfit(table, svc.name, f"is not the {svc.name} {kind} the pipeline wants", problems, "[bigquery] dataset")


def client() -> bq.Client:
    from google.cloud import bigquery as bq

    cfg = settings.bigquery()
    if cfg.project and not _PROJECT.match(cfg.project):
        raise InvalidName("project", cfg.project, "project id")
    emulator = os.environ.get("BIGQUERY_EMULATOR_HOST")
    if emulator:  # an emulator takes no credentials
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials

        return bq.Client(
            project=cfg.project or None, credentials=AnonymousCredentials(), client_options=ClientOptions(api_endpoint=emulator)
        )
    return bq.Client(project=cfg.project or None)


def dataset_id(client_: bq.Client) -> str:
    name = settings.bigquery().dataset
    if not _DATASET.match(name):
        raise InvalidName("dataset", name, "dataset name (letters, digits, _)")
    return f"{client_.project}.{name}"


@contextlib.contextmanager
def _named(doing: str) -> Iterator[None]:
    from google.api_core import exceptions as gexc

    try:
        yield
    except gexc.Forbidden as e:
        raise CallFailed(doing, e.message, denied=True) from e
    except gexc.GoogleAPIError as e:
        raise CallFailed(doing, str(e), denied=False) from e


def external_table_id(client_: bq.Client, svc: catalog.Service) -> str:
    return f"{dataset_id(client_)}.external_{svc.table}"


def wanted_external_table(client_: bq.Client, svc: catalog.Service) -> bq.Table:
    """The external table over every month of the service in the lake."""
    from google.cloud import bigquery as bq

    table = bq.Table(external_table_id(client_, svc), schema=[bq.SchemaField(c.name, BQ_TYPES[c.type]) for c in svc.columns])
    config = bq.ExternalConfig("PARQUET")
    config.source_uris = [lake_wildcard(svc)]
    if svc.monthly:
        hive = bq.HivePartitioningOptions()
        hive.mode = "CUSTOM"
        hive.source_uri_prefix = f"{service_folder(svc)}/{{{PARTITION_KEY}:STRING}}"  # the key, declared STRING
        config.hive_partitioning = hive
    table.external_data_configuration = config
    table.description = f"NYC TLC {svc.name}: every month in the lake, read in place (nyc-tlc-luigi)"
    return table


def differences(have: bq.Table, want: bq.Table) -> list[str]:
    """What makes an existing table not the one the pipeline wants (empty: it is)."""
    if have.table_type != "EXTERNAL" or have.external_data_configuration is None:
        return [f"it is a {have.table_type or 'table'} table, not an EXTERNAL one"]
    problems = []
    h, w = have.external_data_configuration, want.external_data_configuration
    if h.source_format != w.source_format:
        problems.append(f"its format is {h.source_format}, not {w.source_format}")
    if list(h.source_uris or []) != list(w.source_uris):
        problems.append(f"it reads {list(h.source_uris or [])}, not {list(w.source_uris)}")
    if _hive(h) != _hive(w):
        problems.append(f"its hive partitioning is {_hive(h)}, not {_hive(w)}")
    # BigQuery lists the hive partition key among the columns; it is checked above.
    return problems + fits(_fields(have, skip=w.hive_partitioning is not None), _fields(want, skip=False), ordered=True)


def _hive(config: bq.ExternalConfig) -> Optional[tuple[str, str]]:
    options = config.hive_partitioning
    return (options.mode, options.source_uri_prefix) if options else None


def _fields(table: bq.Table, skip: bool) -> list[tuple[str, str]]:
    """(name, type) of the columns, types in the API's legacy names, without the hive key if ``skip``."""
    return [(f.name, _SAME_TYPE.get(f.field_type, f.field_type)) for f in table.schema if not (skip and f.name == PARTITION_KEY)]


def ensure_dataset(client_: bq.Client) -> None:
    from google.api_core import exceptions as gexc
    from google.cloud import bigquery as bq

    cfg, name = settings.bigquery(), dataset_id(client_)
    with _named(f"dataset {name}"):
        try:
            client_.get_dataset(name, **retry.bigquery())
            return
        except gexc.NotFound:
            if not cfg.create_dataset:
                raise NoDataset(name, cfg.location) from None
        dataset = bq.Dataset(name)
        dataset.location = cfg.location
        client_.create_dataset(dataset, exists_ok=True, **retry.bigquery())
        logger.info("created dataset %s in %s", name, cfg.location)


def ensure_external_table(client_: bq.Client, svc: catalog.Service) -> None:
    from google.api_core import exceptions as gexc

    want = wanted_external_table(client_, svc)
    with _named(f"external table {want.table_id}"):
        try:
            have = client_.get_table(want.reference, **retry.bigquery())
        except gexc.NotFound:
            client_.create_table(want, **retry.bigquery())
            logger.info(
                "created external table %s over %s", want.full_table_id or want.reference, want.external_data_configuration.source_uris[0]
            )
            return
    refuse_misfit(have, svc, "external table", differences(have, want))


def marker_schema() -> list[bq.SchemaField]:
    from google.cloud import bigquery as bq

    return [
        bq.SchemaField(name, BIGQUERY.marker_types[kind], mode="REQUIRED" if name in ("service", "month") else "NULLABLE")
        for name, kind in MARKER_COLUMNS
    ]


def read_markers(client_: bq.Client, table_id: str, column: str) -> dict[tuple[str, str], Any]:
    """``column`` of every (service, month) the marker table ``table_id`` records: one
    tabledata.list, no query job (Any: the column's own type, a STRING's str, an INTEGER's int)."""
    from google.api_core import exceptions as gexc

    wanted = [field for field in marker_schema() if field.name in ("service", "month", column)]
    with _named(f"marker table {table_id}"):
        try:
            return {
                (row["service"], row["month"]): row[column]
                for row in client_.list_rows(table_id, selected_fields=wanted, **retry.bigquery())
            }
        except gexc.NotFound:  # no dataset or no marker table yet: nothing recorded
            return {}


class BigQueryMarker(MonthMarker):
    """Exists when `{dataset}._ingested` records this service and month (the external tables)."""

    sink = "BigQuery"
    marker_table = MARKER_TABLE
    countable = False  # a count in BigQuery is a billed query job: the report shows the markers

    @classmethod
    def table_id(cls, client_: bq.Client) -> str:
        return f"{dataset_id(client_)}.{cls.marker_table}"

    @classmethod
    def recorded(cls, where: None) -> dict[tuple[str, str], str]:
        client_ = client()
        return {key: sha or "" for key, sha in read_markers(client_, cls.table_id(client_), "source_sha256").items()}

    @classmethod
    def marked_rows(cls, where: None) -> dict[tuple[str, str], int]:
        client_ = client()
        return read_markers(client_, cls.table_id(client_), "rows")

    def touch(self, connection: bq.Client, rows: int, source_sha256: str, source_url: str) -> None:
        """One MERGE (BigQuery has no transaction to join): one row per month however often it
        runs. A marker table of an earlier version gets the columns it lacks first."""
        from google.cloud import bigquery as bq

        table_id = self.table_id(connection)
        with _named(f"marker table {table_id}"):
            table = connection.create_table(bq.Table(table_id, schema=marker_schema()), exists_ok=True, **retry.bigquery())
            add_missing_marker_columns(  # DDL costs nothing
                BIGQUERY,
                table_id,
                [field.name for field in table.schema],
                lambda sql: connection.query(sql, location=settings.bigquery().location, **retry.bigquery_query()).result(
                    **retry.bigquery_query()
                ),
            )
            types = dict(MARKER_COLUMNS)
            params = [
                bq.ScalarQueryParameter(name, "INT64" if types[name] == "integer" else "STRING", value)
                for name, value in zip(WRITTEN, self.values(rows, source_sha256, source_url))
            ]
            updates = ", ".join(f"{name} = @{name}" for name in WRITTEN[2:])
            connection.query(
                f"MERGE `{table_id}` T USING (SELECT @service AS service, @month AS month) S "
                "ON T.service = S.service AND T.month = S.month "
                f"WHEN MATCHED THEN UPDATE SET {updates}, marked_at = CURRENT_TIMESTAMP() "
                f"WHEN NOT MATCHED THEN INSERT ({', '.join(WRITTEN)}, marked_at) "
                f"VALUES ({', '.join('@' + name for name in WRITTEN)}, CURRENT_TIMESTAMP())",
                job_config=bq.QueryJobConfig(query_parameters=params),
                location=settings.bigquery().location,
                **retry.bigquery_query(),
            ).result(**retry.bigquery_query())


class ExposeBigQuery(Sink):
    """Make the month queryable through the service's BigQuery external table."""

    name = "bigquery"
    reads = "gcs"
    # BigQuery's quotas are the project's: the scheduler runs at most [resources] bigquery at once.
    resources = {"bigquery": 1}

    def output(self):
        return BigQueryMarker(self.service, self.month, self.source_sha256)

    def load(self, lake: LakeTarget, record: LakeRecord) -> str:
        client_ = client()
        ensure_dataset(client_)
        ensure_external_table(client_, self.svc)
        self.output().touch(client_, record.rows, record.source_sha256, record.source_url)
        return external_table_id(client_, self.svc)
