"""A luigi target on Amazon S3 (or an S3-compatible store), on the official `boto3` client: the data
lake when `[lake] root` is s3://bucket/prefix.

What makes an upload safe:
- Every file goes up as a multipart upload of `[s3] part_size_mib` parts (a small file as one
  part): an object appears under its key only when CompleteMultipartUpload succeeds, and replaces
  an earlier one whole, so an interrupted upload leaves nothing under the key. boto3's transfer
  manager aborts the upload when a part fails for good; a process killed mid-upload leaves an
  incomplete upload, never listed as an object (a bucket lifecycle rule,
  AbortIncompleteMultipartUpload, clears those). Each part is read from the file as it is sent,
  so memory is bounded by the parts in flight, never the file.
- The file's CRC32 goes with the upload as a full-object checksum (ChecksumType FULL_OBJECT): S3
  computes its own over what it received and refuses a mismatch. Afterwards the checksum the
  service reports for the object (HeadObject) is compared with the local file's, and a mismatch
  removes the object. CRC32 because a full-object checksum does not depend on the part size (a
  multipart SHA-256 is a checksum of the parts' checksums), so a download checks it too; CRC32C
  would need the AWS CRT library.
- The object carries its lake record (pipeline/lake.py) as user metadata.

Credentials, region and endpoint: the AWS SDK's own chain (AWS_ACCESS_KEY_ID and the other AWS_*
variables, AWS_PROFILE and ~/.aws, an instance or task role), with AWS_ENDPOINT_URL for an
S3-compatible store. Never a setting, and never in a message here.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import os
import urllib.parse
import zlib
from typing import TYPE_CHECKING, Iterable, Iterator, NoReturn

import luigi
import luigi.target

from pipeline import retry, settings
from pipeline.errors import PipelineError
from pipeline.targets import bucket as bucket_url

# boto3 is imported where it is used: every process imports this module (the lake may be on S3),
# but only an s3:// lake needs the client. Every request is bounded by retry.s3().
if TYPE_CHECKING:
    from botocore.client import BaseClient as S3Client

logger = logging.getLogger("pipeline.s3")

SCHEME = "s3://"
MIB = 1024 * 1024
CHECKSUM = "ChecksumCRC32"
# Where the SDK's chain finds credentials: what a message about them points to.
CREDENTIALS = "the AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws, an instance role)"


class S3Error(PipelineError, RuntimeError):
    """A lake operation on S3 failed: ``doing`` what to ``url``, and why."""

    def __init__(self, doing: str, url: str, why: str):
        self.doing, self.url, self.why = doing, url, why
        self.bucket = split(url)[0]
        super().__init__(f"{doing} {url}: {why}")


def split(url: str) -> tuple[str, str]:
    """s3://bucket/some/key -> ("bucket", "some/key")."""
    return bucket_url.split(url, SCHEME)


@functools.lru_cache(maxsize=None)
def _client(environment: frozenset, limits: tuple) -> S3Client:
    import boto3

    return boto3.session.Session().client("s3", config=retry.s3())


def client() -> S3Client:
    """One client per environment (the SDK's chain reads it: credentials, profile, region,
    endpoint) and `[s3]` limits, reused: it keeps its connection pool."""
    cfg = settings.s3()
    return _client(frozenset((k, v) for k, v in os.environ.items() if k.startswith("AWS_")), (cfg.timeout, cfg.attempts))


def reader_settings() -> dict[str, str]:
    """What a reader that does not run the SDK's chain itself (DuckDB's httpfs) needs to reach the
    lake as this process does: the credentials the chain resolves now (a role's expire with it),
    the region, and for an S3-compatible store (AWS_ENDPOINT_URL) its endpoint. Secrets: never to
    be logged or written anywhere."""
    import boto3
    from botocore.exceptions import NoCredentialsError

    credentials = boto3.session.Session().get_credentials()
    if credentials is None:
        raise S3Error("reading", settings.lake().root, reason(NoCredentialsError(), split(settings.lake().root)[0]))
    frozen = credentials.get_frozen_credentials()
    found = {"key_id": frozen.access_key, "secret": frozen.secret_key, "session_token": frozen.token or ""}
    meta = client().meta
    found["region"] = meta.region_name or "us-east-1"
    endpoint = urllib.parse.urlsplit(meta.endpoint_url)
    if not (endpoint.hostname or "").endswith(".amazonaws.com"):  # an S3-compatible store: its address, path-style
        found.update(endpoint=endpoint.netloc, use_ssl=str(endpoint.scheme == "https").lower(), url_style="path")
    return found


def crc32_of(path: str) -> str:
    """The file's CRC32 as S3 reports it: base64 of the big-endian 4 bytes."""
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            crc = zlib.crc32(block, crc)
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


def reason(error: BaseException, bucket: str) -> str:
    """What went wrong, in the words a user acts on; never a credential (botocore's messages
    hold none)."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import ClientError, NoCredentialsError

    # boto3's upload error keeps only the text of the client's error it was raised in.
    cause = error.__context__ if isinstance(error, Boto3Error) and error.__context__ else error
    if isinstance(cause, NoCredentialsError):
        return f"no AWS credentials were found; set {CREDENTIALS}"
    if isinstance(cause, ClientError):
        code = str(cause.response.get("Error", {}).get("Code", ""))
        status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return f"bucket {bucket} does not exist (NoSuchBucket)"
        if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            return f"access denied to bucket {bucket} ({code or status}); check {CREDENTIALS} and their permissions"
        return f"{code or status}: {cause.response.get('Error', {}).get('Message', '') or cause}"
    return f"{type(cause).__name__}: {cause}"


@contextlib.contextmanager
def _named(url: str, doing: str) -> Iterator[None]:
    """Turn the client's errors into one that says what was done where, and why."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError, Boto3Error) as e:
        raise S3Error(doing, url, reason(e, split(url)[0])) from e


def _status(error: BaseException) -> int:
    return error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)  # type: ignore[attr-defined]


class S3FileSystem(luigi.target.FileSystem):
    """luigi's FileSystem interface over one client; paths are s3:// URLs."""

    def head(self, url: str) -> dict:
        """The object's size, checksum (as the service computed it) and metadata."""
        bucket, key = split(url)
        with _named(url, "reading the metadata of"):
            return client().head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")

    def exists(self, path: str) -> bool:
        from botocore.exceptions import ClientError

        bucket, key = split(path)
        with _named(path, "checking"):
            try:
                client().head_object(Bucket=bucket, Key=key)
            except ClientError as e:
                if _status(e) == 404:  # no such object (a missing bucket says so when uploading)
                    return False
                raise
        return True

    def existing(self, paths: Iterable[str]) -> set[str]:
        """Which of ``paths`` exist, from one listing per bucket (bucket.existing)."""
        return bucket_url.existing(paths, SCHEME, self._names_under)

    def _names_under(self, bucket: str, prefix: str) -> set[str]:
        listed: set[str] = set()
        with _named(f"{SCHEME}{bucket}/{prefix}", "listing"):
            for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                listed.update(item["Key"] for item in page.get("Contents", []))
        return listed

    def remove(self, path: str, recursive: bool = False, skip_trash: bool = True) -> None:
        """The object at ``path`` (never a prefix's objects: nothing here removes more than one)."""
        bucket, key = split(path)
        with _named(path, "removing"):
            client().delete_object(Bucket=bucket, Key=key)

    def upload(self, local_path: str, url: str, metadata: dict[str, str]) -> None:
        """Upload a file so that the object appears only whole, then check its checksum."""
        from boto3.s3.transfer import TransferConfig

        part = settings.s3().part_size_mib * MIB
        # Threshold 1 byte: every file multipart, so every object gets a full-object checksum that
        # the service computes itself, whatever the file's size.
        config = TransferConfig(multipart_threshold=1, multipart_chunksize=part, max_concurrency=4)
        local = crc32_of(local_path)
        bucket, key = split(url)
        extra = {"Metadata": metadata, "ContentType": "application/vnd.apache.parquet", CHECKSUM: local}
        with _named(url, "uploading to"):
            client().upload_file(local_path, bucket, key, ExtraArgs=extra, Config=config)
        seen = self.head(url)
        remote = seen.get(CHECKSUM)
        if remote != local and seen.get("Metadata") != metadata:
            # Another writer's object since ours (its own record): S3 answers an upload with no
            # version to compare, so the record tells; it is the other writer's to check.
            raise S3Error("uploading to", url, "another writer replaced the object before it was checked, so it was left; run again")
        if remote != local:
            self._remove_garbled(
                url,
                f"the object's CRC32 {remote} is not the local file's {local} ({local_path}): the upload was garbled on its way"
                if remote
                else "the service reports no CRC32 for the object, so the upload cannot be checked",
            )

    def _remove_garbled(self, url: str, why: str) -> NoReturn:
        """An object that is not the file must not stay under its name, where it would count as
        done: removed."""
        self.remove(url)
        raise S3Error("uploading to", url, f"{why}, so the object was removed; the next run uploads it again")

    def download(self, url: str, local_path: str) -> None:
        """The object as a local file (in parts, each retried), checked against the CRC32 the
        service keeps for the object."""
        bucket, key = split(url)
        head = self.head(url)
        with _named(url, "downloading"):
            client().download_file(bucket, key, local_path)
        local = crc32_of(local_path)
        if head.get(CHECKSUM) != local:
            os.remove(local_path)
            raise S3Error(
                "downloading",
                url,
                f"the file's CRC32 {local} is not the object's {head.get(CHECKSUM)}: garbled on its way, or the object "
                "was replaced meanwhile; run again",
            )


class S3Target(bucket_url.BucketTarget):
    """An object in S3. Written only whole (see S3FileSystem.upload)."""

    fs = S3FileSystem()
    scheme = SCHEME
