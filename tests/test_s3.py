"""The lake on S3: the official boto3 client against moto's server mode (an S3-compatible server
that checks credentials), started by the test suite and reached the way users point the SDK at an
S3-compatible store (AWS_ENDPOINT_URL). Same tasks as the local and GCS lakes, switched by
`[lake] root` alone. The contract S3 shares with Azure is tested over both in
test_object_lakes.py; here what only S3 does."""

from __future__ import annotations

import os

import pytest

from pipeline import settings
from pipeline.lake import S3LakeFile, lake_target
from pipeline.targets.s3 import S3Error, S3Target, crc32_of

MIB = 1024 * 1024


def test_a_multipart_upload_cut_in_a_part_leaves_nothing(s3, tmp_path):
    big = tmp_path / "big.parquet"
    big.write_bytes(os.urandom(11 * MIB))  # three parts of 5 MiB
    url = f"{s3.lake}/yellow/month=2019-01/yellow_tripdata_2019-01.parquet"
    s3.proxy.reset(cut_after=3 * MIB)

    with pytest.raises(S3Error) as error:
        S3Target(url).upload(str(big), {"rows": "1"})

    s3.proxy.reset(cut_after=None)
    assert str(error.value).startswith(f"uploading to {url}: ")
    assert s3.objects() == {} and s3.unfinished() == []
    S3Target(url).upload(str(big), {"rows": "1"})
    stored = s3.objects()["lake/yellow/month=2019-01/yellow_tripdata_2019-01.parquet"]
    assert stored.checksum == crc32_of(str(big)) and stored.size == 11 * MIB


def test_s3_lake_roots_are_accepted_and_other_schemes_still_refused():
    assert settings.lake_root_problem("s3://bucket/prefix") is None
    assert settings.lake_root_problem("s3://bucket") is None
    assert settings.lake_root_problem("s3:///prefix") == "a s3:// lake needs its bucket: s3://bucket/prefix"
    assert settings.lake_root_problem("hdfs://namenode/lake").startswith("hdfs:// is not a lake this pipeline writes")
    assert type(lake_target("s3://bucket/lake/x.parquet")) is S3LakeFile
