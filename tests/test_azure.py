"""The lake on Azure Blob Storage: the official azure-storage-blob SDK against Azurite (Microsoft's
emulator, the npm package), started by the test suite and reached the way users point the SDK at
an account (AZURE_STORAGE_CONNECTION_STRING, here naming the emulator as its BlobEndpoint). Same
tasks as the local, GCS and S3 lakes, switched by `[lake] root` alone. The contract Azure shares
with S3 is tested over both in test_object_lakes.py; here what only Azure does."""

from __future__ import annotations

import os

import pytest

from pipeline import settings
from pipeline.lake import AzureLakeFile, lake_target
from pipeline.targets.azure import AzureError, AzureTarget


def test_a_blob_that_is_not_the_file_after_the_commit_is_removed(az, tmp_path):
    """The check after the commit: what the service reports of our commit (its ETag ours) is
    compared with the file and its record, and a blob that differs is removed (here the service
    reports another MD5 for it, as for a commit garbled on its way)."""
    ours = tmp_path / "ours.parquet"
    ours.write_bytes(os.urandom(1000))
    url = f"{az.lake}/green/month=2019-01/green_tripdata_2019-01.parquet"
    target = AzureTarget(url)
    properties = target.fs.properties

    def garbled(u):
        seen = properties(u)
        seen.content_settings.content_md5 = bytearray(16)
        return seen

    target.fs.properties = garbled  # type: ignore[method-assign]
    try:
        with pytest.raises(AzureError) as error:
            target.upload(str(ours), {"rows": "1"})
    finally:
        del target.fs.properties
    assert str(error.value).startswith(f"uploading to {url}: the blob (1000 bytes, MD5 00000000")
    assert str(error.value).endswith("garbled on its way, so the blob was removed; the next run uploads it again")
    assert az.blobs() == {}


def test_azure_lake_roots_are_accepted_and_dispatched():
    assert settings.lake_root_problem("az://container/prefix") is None
    assert settings.lake_root_problem("az://container") is None
    assert settings.lake_root_problem("az:///prefix") == "a az:// lake needs its container: az://container/prefix"
    assert type(lake_target("az://container/lake/x.parquet")) is AzureLakeFile
