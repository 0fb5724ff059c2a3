"""Settings, as luigi.Config classes: each is a `[section] key` in luigi.cfg and a
`--section-key` flag on the command line (for example `[lake] root` / `--lake-root`).

The class names are the luigi.cfg section names, hence lower case.
"""

import luigi

from pipeline import catalog


class source(luigi.Config):
    kind = luigi.ChoiceParameter(
        default="releases", choices=list(catalog.SOURCES),
        description="Which files: releases (the course's csv.gz copies, 2019-2021) or tlc (the TLC's "
        "own Parquet files, every month)")
    base_url = luigi.Parameter(
        default="",
        description="Where they are, http(s):// or file://, laid out like the source (empty: the "
        f"kind's own, {catalog.RELEASES.base_url} or {catalog.TLC.base_url}); any mirror works")
    timeout = luigi.FloatParameter(default=60.0, description="Seconds to wait for the server to connect or send data")
    min_rate_kib = luigi.FloatParameter(
        default=8.0, description="KiB/s a download must average over every `timeout` seconds; slower is a "
        "stalled server, tried again like a dropped connection")
    attempts = luigi.IntParameter(default=5, description="Tries per file in all (at least 1) on connection errors, "
                                  "stalls and 5xx answers")
    backoff = luigi.FloatParameter(default=2.0, description="Seconds before the 2nd try; doubles for each further try")


class lake(luigi.Config):
    root = luigi.Parameter(default="data/lake", description="The data lake: a local directory, or gs://bucket/prefix")


class gcs(luigi.Config):
    """Google Cloud Storage, for a gs:// lake. Credentials are Application Default Credentials
    (GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default login`), never a setting."""

    project = luigi.Parameter(default="", description="Project of the client (empty: the credentials' project, GOOGLE_CLOUD_PROJECT)")
    chunk_size_kib = luigi.IntParameter(default=16384, description="Upload chunk size in KiB, a multiple of 256: each chunk is one request with its own timeout; a failed one is resumed")
    timeout = luigi.FloatParameter(default=120.0, description="Seconds per request (one chunk) before it is retried")
    retry_deadline = luigi.FloatParameter(default=600.0, description="Seconds to keep retrying an operation's transient errors before giving up")


class duckdb(luigi.Config):
    path = luigi.Parameter(
        default="data/warehouse.duckdb",
        description="The embedded warehouse: a DuckDB file with one view per service over the lake",
    )


class bigquery(luigi.Config):
    """BigQuery, reading a gs:// lake. Credentials are Application Default Credentials, never a
    setting; BIGQUERY_EMULATOR_HOST (with its http:// scheme) points the client at an emulator."""

    project = luigi.Parameter(default="", description="Project of the dataset and the jobs (empty: the credentials' project)")
    dataset = luigi.Parameter(default="nyc_tlc", description="Dataset of the external tables and the _ingested marker table")
    location = luigi.Parameter(default="US", description="Location of the dataset when it is created (must be the bucket's, or a multi-region holding it)")
    create_dataset = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                         description="Create the dataset when it is missing (false: a missing dataset is an error)")


class postgres(luigi.Config):
    """Where the Postgres warehouse is. An empty value falls back to libpq's own environment
    variables (PGHOST, PGPORT, PGDATABASE, PGUSER, PGSSLMODE, ...) and defaults.

    There is deliberately no password setting: libpq reads PGPASSWORD or the password file
    (~/.pgpass, PGPASSFILE), so the password is never a task parameter, in a config file
    checked into a repo, in a log line or in the visualiser."""

    host = luigi.Parameter(default="", description="Server host name or socket directory (empty: PGHOST, else libpq's default)")
    port = luigi.Parameter(default="", description="Server port (empty: PGPORT, else 5432)")
    database = luigi.Parameter(default="", description="Database name (empty: PGDATABASE, else the user name)")
    user = luigi.Parameter(default="", description="User name (empty: PGUSER, else the OS user)")
    schema = luigi.Parameter(default="public", description="Schema for the trip tables and the _ingested marker table")
    connect_timeout = luigi.IntParameter(default=10, description="Seconds to wait for a connection")
    attempts = luigi.IntParameter(default=5, description="Tries to connect in all (at least 1) while the server is unreachable "
                                  "(starting up or restarting); a refusal (password, database) is not retried")
    backoff = luigi.FloatParameter(default=2.0, description="Seconds before the 2nd try to connect; doubles for each further try")
    lock_timeout = luigi.FloatParameter(default=30.0, description="Seconds a month's reload waits for readers of the table "
                                        "to finish before it gives up, leaving the earlier load in place")


class ingest(luigi.Config):
    sinks = luigi.Parameter(
        default="duckdb",
        description="Comma-separated warehouses IngestMonth feeds besides the lake: duckdb (a local "
        "lake), bigquery (a gs:// lake), postgres; none for the lake only",
    )
    staging = luigi.Parameter(
        default="data/staging",
        description="Work area for downloaded files and Parquet before they go to the lake",
    )

    def sink_names(self) -> list[str]:
        return [s.strip() for s in self.sinks.split(",") if s.strip() not in ("", "none")]
