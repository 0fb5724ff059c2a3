"""Settings, as luigi.Config classes: each is a `[section] key` in luigi.cfg and a
`--section-key` flag on the command line (for example `[lake] root` / `--lake-root`).

The class names are the luigi.cfg section names, hence lower case.
"""

import luigi

RELEASES_URL = "https://github.com/DataTalksClub/nyc-tlc-data/releases/download"


class source(luigi.Config):
    base_url = luigi.Parameter(
        default=RELEASES_URL,
        description="Where the csv.gz files are: http(s):// or file://, laid out like the "
        "DataTalksClub releases ({base}/{service}/{service}_tripdata_{YYYY-MM}.csv.gz, "
        "{base}/misc/taxi_zone_lookup.csv)",
    )
    timeout = luigi.FloatParameter(default=60.0, description="Seconds to wait for the server to connect or send data")
    attempts = luigi.IntParameter(default=5, description="Tries per file on connection errors and 5xx answers")
    backoff = luigi.FloatParameter(default=2.0, description="Seconds before the 2nd try; doubles for each further try")


class lake(luigi.Config):
    root = luigi.Parameter(default="data/lake", description="The data lake: a local directory")


class duckdb(luigi.Config):
    path = luigi.Parameter(
        default="data/warehouse.duckdb",
        description="The embedded warehouse: a DuckDB file with one view per service over the lake",
    )


class ingest(luigi.Config):
    sinks = luigi.Parameter(
        default="duckdb",
        description="Comma-separated warehouses IngestMonth feeds besides the lake: duckdb, or "
        "none for the lake only",
    )
    staging = luigi.Parameter(
        default="data/staging",
        description="Work area for downloaded files and Parquet before they go to the lake",
    )

    def sink_names(self) -> list[str]:
        return [s.strip() for s in self.sinks.split(",") if s.strip() not in ("", "none")]
