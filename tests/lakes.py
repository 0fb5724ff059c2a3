"""What the object-store lakes' tests (test_object_lakes.py, test_s3.py, test_azure.py) share: the
months they ingest and where each lands under the lake's prefix."""

from __future__ import annotations

# Three months of the small mirror, two services: the first run's and the completeness tests'.
MONTHS = [("yellow", "2021-01"), ("yellow", "2020-01"), ("green", "2019-01")]


def lake_key(service: str, m: str, prefix: str = "lake") -> str:
    """A month's object name in a bucket or container whose lake is under ``prefix``."""
    return f"{prefix}/{service}/month={m}/{service}_tripdata_{m}.parquet"
