"""Settings, as luigi.Config classes: each is a `[section] key` in luigi.cfg and a
`--section-key` flag on the command line (for example `[lake] root` / `--lake-root`).

The class names are the luigi.cfg section names, hence lower case.

Where they are read from is decided here too, by `load()`, run once when the package is imported
(pipeline/__init__.py: luigi imports `--module pipeline` before it reads any setting). Luigi on its own reads `luigi.cfg` from the
current directory, so a command run elsewhere would lose the embedded default, `[retcode]`
included, and put a second `data/` tree there. Here, whatever the current directory:
- the checkout's `luigi.cfg` is always read first (the embedded default); a `luigi.cfg` in the
  current directory and the profiles in `LUIGI_CONFIG_PATH` are layered over it, in that order;
- `LUIGI_CONFIG_PATH` may name several profiles, `os.pathsep`-separated, the later winning
  (`config/postgres.cfg:config/local.cfg`); a profile that is not found is an error, never
  skipped;
- a relative path in a settings file (`[lake] root = data/lake`, `[source] base_url =
  file:samples`) is under the checkout. On the command line (`--lake-root`) it is under the
  current directory, as usual.
The checkout is the project folder (its luigi.cfg, config/, samples/, data/): the one the
package runs from, or `$NYC_TLC_HOME`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import urllib.parse
from pathlib import Path
from typing import Iterator, Optional

import luigi
import luigi.configuration
from luigi.configuration import LuigiConfigParser

from pipeline import catalog, luigi_internals, params
from pipeline.errors import PipelineError

# The project folder: $NYC_TLC_HOME, else the checkout the package runs from (an editable install,
# as the README's), else, installed as a plain package with no checkout around it, the current
# directory.
HOME_VARIABLE = "NYC_TLC_HOME"
_checkout = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get(HOME_VARIABLE) or (_checkout if (_checkout / "luigi.cfg").is_file() else Path.cwd())).resolve()
EMBEDDED = HOME / "luigi.cfg"
# The settings that are paths, ours and luigi's.
PATHS = (("core", "logging_conf_file"), ("core", "lock_pid_dir"), ("lake", "root"), ("ingest", "staging"), ("duckdb", "path"))


class SettingsError(SystemExit):
    """A settings file holds what the command cannot run on. A SystemExit, so that luigi's
    command line ends with this one line (exit 2, as for any other command-line mistake) instead
    of a traceback."""

    def __init__(self, message: str):
        print(message, file=sys.stderr)
        super().__init__(2)


class SettingsNotFound(SettingsError):
    """A settings file that must be there is not (the project folder's luigi.cfg, a profile
    LUIGI_CONFIG_PATH names): the command would silently run on other settings."""


class LakeRootError(PipelineError, ValueError):
    """A `[lake] root` the pipeline cannot write to as asked (see lake_root_problem)."""

    def __init__(self, value: str, why: str, setting: str = "root"):
        self.value, self.why, self.setting = value, why, setting
        super().__init__(f"[lake] {setting} {value!r}: {why}")


# A URL's scheme, as a lake root starts with one.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# The object stores a lake may be in, as their URLs start (gs://bucket/prefix, s3://bucket/prefix,
# az://container/prefix).
BUCKET_SCHEMES = ("gs", "s3", "az")
# What a lake root may be, for messages.
LAKE_ROOTS = "a local folder, gs://bucket/prefix, s3://bucket/prefix or az://container/prefix"


def lake_root_problem(value: str) -> Optional[str]:
    """Why ``value`` is no lake root, or None: a lake is one of LAKE_ROOTS. Nothing outside them:
    any other URL (hdfs://, abfss://) was taken for a local folder named after its scheme, filled
    and reported done."""
    scheme = _SCHEME.match(value)
    if scheme is None:
        return None
    if scheme[1] in BUCKET_SCHEMES:
        if value[len(scheme[0]) :].split("/", 1)[0]:
            return None
        bucket = "container" if scheme[1] == "az" else "bucket"
        return f"a {scheme[0]} lake needs its {bucket}: {scheme[0]}{bucket}/prefix"
    if scheme[1].lower() == "file":
        return f"a local lake is given as its folder ({urllib.parse.unquote(urllib.parse.urlsplit(value).path)}), not as a file:// URL"
    return f"{scheme[1]}:// is not a lake this pipeline writes; a lake is {LAKE_ROOTS}"


class LakeRoot(params._Checked, luigi.Parameter):
    """`[lake] root`: refused on the command line (one line, exit 2, before anything runs) and
    wherever else it is read (lake_root_problem)."""

    def check(self, text: str) -> str:
        why = lake_root_problem(text)
        if why:
            raise argparse.ArgumentTypeError(f"{text!r}: {why}")
        return text

    setting = "root"  # its key in [lake], for the message

    def normalize(self, x):
        why = lake_root_problem(x)
        if why:
            raise LakeRootError(x, why, self.setting)
        return x


def profiles(value: str, cwd: Path) -> list[Path]:
    """The files LUIGI_CONFIG_PATH names: each relative one under ``cwd``, else under HOME."""
    found = []
    for name in filter(None, value.split(os.pathsep)):
        path = next((p for p in (cwd / name, HOME / name) if p.is_file()), None)
        if path is None:
            raise SettingsNotFound(f"LUIGI_CONFIG_PATH: no settings file {name} (looked in {cwd} and {HOME})")
        found.append(path.resolve())
    return found


def under_home(value: str) -> str:
    """A path setting as a settings file means it: a relative one is under HOME."""
    if not value or _SCHEME.match(value) or os.path.isabs(value):
        return value
    return str(HOME / value)


def url_under_home(value: str) -> str:
    """A relative file: URL (`file:samples`) as a settings file means it: under HOME."""
    if value.startswith("file:") and not value.startswith("file:/"):
        return (HOME / value.removeprefix("file:")).as_uri()
    return value


# luigi's own list, as luigi left it: the system's files, then the current directory's.
_LUIGIS = [p for p in luigi_internals.config_paths() if p != os.environ.get("LUIGI_CONFIG_PATH")]


def load(cwd: Path | None = None) -> None:
    """Read the settings files in their order (see the module's docstring) into luigi's
    configuration, with the relative paths they set made absolute."""
    if not EMBEDDED.is_file():
        raise SettingsNotFound(
            f"no luigi.cfg in {HOME}: run from the project folder (the checkout, which holds luigi.cfg and config/), "
            f"or name it in {HOME_VARIABLE}"
        )
    found = profiles(os.environ.get("LUIGI_CONFIG_PATH", ""), cwd or Path.cwd())
    luigi_internals.config_paths()[:] = [str(EMBEDDED), *_LUIGIS, *map(str, found)]
    LuigiConfigParser.reload()
    config = luigi.configuration.get_config()
    # Before a lake is taken for a relative folder under HOME.
    lakes = [("root", config.get("lake", "root", "")), *(("replicas", r) for r in split_roots(config.get("lake", "replicas", "")))]
    for setting, root in lakes:
        why = lake_root_problem(root)
        if why:
            raise SettingsError(str(LakeRootError(root, why, setting)))
    for section, key in PATHS:
        if config.has_option(section, key):
            config.set(section, key, under_home(config.get(section, key)))
    if config.has_option("lake", "replicas"):
        config.set("lake", "replicas", ",".join(under_home(root) for root in split_roots(config.get("lake", "replicas"))))
    if config.has_option("source", "base_url"):
        config.set("source", "base_url", url_under_home(config.get("source", "base_url")))


@contextlib.contextmanager
def overridden(values: dict[tuple[str, str], str]) -> Iterator[None]:
    """``values`` in luigi's configuration for the block, as a settings file or a command's flags
    would set them, then what was there before (the doctor's flags; the tests' settings). A value
    is taken as written: a % in it is no interpolation."""
    config = luigi.configuration.get_config()
    saved = {key: config.get(*key, None, raw=True) for key in values}
    for (section, key), value in values.items():
        if not config.has_section(section):
            config.add_section(section)
        config.set(section, key, value.replace("%", "%%"))
    try:
        yield
    finally:
        for (section, key), value in saved.items():
            if value is None:
                config.remove_option(section, key)
            else:
                config.set(section, key, value)


class source(luigi.Config):
    kind = luigi.ChoiceParameter(
        default="releases",
        choices=list(catalog.SOURCES),
        description="Which files: releases (the course's csv.gz copies, 2019-2021) or tlc (the TLC's own Parquet files, every month)",
    )
    base_url = luigi.Parameter(
        default="",
        description="Where they are, http(s)://, file:// or s3://bucket/prefix (credentials from the AWS SDK's chain), "
        f"laid out like the source (empty: the kind's own, {catalog.RELEASES.base_url} or {catalog.TLC.base_url}); any mirror works",
    )
    # timeout, attempts and backoff together: a source that accepts but never answers ends a run
    # in 5 x 20 s + 2 + 4 + 8 + 16 s = 130 s.
    timeout = params.Amount(least=0.1, default=20.0, description="Seconds to wait for the server to connect or send data")
    min_rate_kib = params.Amount(
        least=0,
        default=8.0,
        description="KiB/s a download must average over every `timeout` seconds; slower is a "
        "stalled server, tried again like a dropped connection",
    )
    attempts = params.Count(
        least=1, default=5, description="Tries per file in all (at least 1) on connection errors, stalls and 5xx answers"
    )
    backoff = params.Amount(least=0, default=2.0, description="Seconds before the 2nd try; doubles for each further try")
    # The biggest file the TLC publishes is fhvhv 2019-03, 611 MB: in an hour it comes over a
    # link of 1.4 Mbit/s, and 4 GiB is 6 times it.
    deadline = params.Amount(
        least=0.1, default=3600.0, description="Seconds a file's download may take in all, its tries included; longer fails it"
    )
    max_size_mib = params.Amount(
        least=1 / 1024,
        default=4096.0,
        description="MiB a downloaded file may have (the biggest the TLC publishes is 583 MiB); more fails it",
    )


class LakeRoots(LakeRoot):
    """`[lake] replicas`: lake roots separated by commas, each checked as `[lake] root` is."""

    setting = "replicas"

    def check(self, text: str) -> str:
        for root in split_roots(text):
            super().check(root)
        return text

    def normalize(self, x):
        for root in split_roots(x):
            super().normalize(root)
        return x


def split_roots(text: str) -> list[str]:
    return [root.strip() for root in text.split(",") if root.strip()]


class lake(luigi.Config):
    root = LakeRoot(default="data/lake", description=f"The data lake: {LAKE_ROOTS}")
    replicas = LakeRoots(
        default="",
        description="More lakes, separated by commas, each holding a copy of every file of the lake (each "
        f"{LAKE_ROOTS}): each copy is a step of its own, so a replica added later gets exactly the months it lacks",
    )

    def replica_roots(self) -> list[str]:
        return [root for root in split_roots(self.replicas) if root.rstrip("/") != self.root.rstrip("/")]


class parquet(luigi.Config):
    row_group_rows = params.Count(
        least=1,
        default=256 * 1024,
        description="Rows per row group in the Parquet files ToParquet writes (at least this many, but the last): bigger "
        "groups compress and scan better, smaller ones hold less in memory while writing",
    )


class gcs(luigi.Config):
    """Google Cloud Storage, for a gs:// lake. Credentials are Application Default Credentials
    (GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default login`), never a setting."""

    project = luigi.Parameter(default="", description="Project of the client (empty: the credentials' project, GOOGLE_CLOUD_PROJECT)")
    chunk_size_kib = params.Count(
        least=256,
        default=16384,
        description="Upload chunk size in KiB, a multiple of 256: each chunk is one request with its own timeout; a failed one is resumed",
    )
    timeout = params.Amount(least=0.1, default=120.0, description="Seconds per request (one chunk) before it is retried")
    retry_deadline = params.Amount(
        least=0, default=600.0, description="Seconds to keep retrying an operation's transient errors before giving up"
    )


class s3(luigi.Config):
    """Amazon S3 (or an S3-compatible store), for an s3:// lake. Credentials, region and endpoint
    come from the AWS SDK's own chain (AWS_* variables, ~/.aws/config and credentials, an instance
    or task role; AWS_ENDPOINT_URL for an S3-compatible store), never a setting."""

    part_size_mib = params.Count(
        least=5,
        default=16,
        description="Upload part size in MiB (S3's least is 5): each part is one request with its own timeout and "
        "retries, and bounds what an upload holds in memory",
    )
    timeout = params.Amount(least=0.1, default=120.0, description="Seconds to wait for the service to connect or send data, per request")
    attempts = params.Count(
        least=1, default=5, description="Tries per request in all (at least 1) on throttling, 5xx answers and dropped connections"
    )


class azure(luigi.Config):
    """Azure Blob Storage, for an az://container/prefix lake. Credentials come from the Azure SDK's
    own chain: AZURE_STORAGE_CONNECTION_STRING, or the account AZURE_STORAGE_ACCOUNT names with
    DefaultAzureCredential (AZURE_CLIENT_ID and the other AZURE_* variables, a managed identity,
    `az login`), never a setting."""

    block_size_mib = params.Count(
        least=1,
        default=16,
        description="Upload block size in MiB: each block is one request with its own timeout, retries and MD5, and "
        "bounds what an upload holds in memory",
    )
    timeout = params.Amount(least=0.1, default=120.0, description="Seconds to wait for the service to connect or send data, per request")
    attempts = params.Count(
        least=1, default=5, description="Tries per request in all (at least 1) on timeouts, 5xx answers and dropped connections"
    )


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
    location = luigi.Parameter(
        default="US", description="Location of the dataset when it is created (must be the bucket's, or a multi-region holding it)"
    )
    create_dataset = luigi.BoolParameter(
        default=True,
        parsing=luigi.BoolParameter.EXPLICIT_PARSING,
        description="Create the dataset when it is missing (false: a missing dataset is an error)",
    )


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
    connect_timeout = params.Count(least=1, default=10, description="Seconds to wait for a connection")
    attempts = params.Count(
        least=1,
        default=5,
        description="Tries to connect in all (at least 1) while the server is unreachable "
        "(starting up or restarting); a refusal (password, database) is not retried",
    )
    backoff = params.Amount(least=0, default=2.0, description="Seconds before the 2nd try to connect; doubles for each further try")
    lock_timeout = luigi.FloatParameter(
        default=30.0,
        description="Seconds a month's reload waits for readers of the table "
        "to finish before it gives up, leaving the earlier load in place",
    )


class ingest(luigi.Config):
    sinks = luigi.Parameter(
        default="duckdb",
        description="Comma-separated warehouses IngestMonth feeds besides the lake: duckdb (a local "
        "lake), bigquery (external tables over a gs:// lake), bigquery_table (native tables loaded from a gs:// lake, "
        "a partition per month), postgres; none for the lake only",
    )
    staging = luigi.Parameter(
        default="data/staging",
        description="Work area for downloaded files and Parquet before they go to the lake",
    )
    deployment = luigi.Parameter(
        default="",
        description="A name for this setup in a luigid shared with other setups: part of every task's id, so two setups "
        "never take each other's months for done (empty: the lake root and the warehouses' locations name it)",
    )

    def sink_names(self) -> list[str]:
        return [s.strip() for s in self.sinks.split(",") if s.strip() not in ("", "none")]


class luigid(luigi.Config):
    """The central scheduler as `python -m pipeline.luigid` runs it (pipeline/luigid.py)."""

    save_seconds = params.Amount(
        least=1,
        default=10.0,
        description="Seconds between saves of luigid's state file ([scheduler] state_path): luigid killed without a "
        "clean stop comes back knowing the run as it was at most this long before",
    )
