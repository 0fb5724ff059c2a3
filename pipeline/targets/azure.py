"""A luigi target on Azure Blob Storage, on the official `azure-storage-blob` SDK: the data lake
when `[lake] root` is az://container/prefix.

What makes an upload safe:
- Every file goes up as a block blob: blocks of `[azure] block_size_mib` are staged one by one,
  each read from the file as it is sent (memory is bounded by one block, never the file), then the
  block list is committed. A blob appears under its name only when the commit succeeds, and
  replaces an earlier one whole, so an interrupted upload commits nothing; the blocks it staged
  stay uncommitted, are never listed as a blob, and the service drops them within a week. The
  block ids are drawn afresh for each upload, so two uploads of one name never mix their blocks.
- Each block carries its MD5 (the SDK's validate_content): the service computes its own over what
  it received and refuses a garbled block, so a garbled byte fails the upload before anything is
  committed. The commit sets the whole file's MD5 as the blob's Content-MD5 (which the service
  stores, not checks). Afterwards the blob's properties as the service reports them (size,
  Content-MD5, metadata) are compared with the local file's and the record, and a mismatch (a
  garbled commit, another writer's commit meanwhile) removes the blob. A download is checked
  against that Content-MD5.
- The blob carries its lake record (pipeline/lake.py) as its metadata.

Credentials: the Azure SDK's own chain, AZURE_STORAGE_CONNECTION_STRING (which may also name an
endpoint, such as an emulator's BlobEndpoint), else the account AZURE_STORAGE_ACCOUNT names,
https://<account>.blob.core.windows.net, with DefaultAzureCredential (AZURE_CLIENT_ID and the
other AZURE_* variables, a workload or managed identity, `az login`). Never a setting, and never in
a message here.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import logging
import os
import uuid
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NoReturn

import luigi
import luigi.target

from pipeline import retry, settings
from pipeline.errors import PipelineError
from pipeline.targets import bucket as bucket_url

# The SDK is imported where it is used: every process imports this module (the lake may be on
# Azure), but only an az:// lake needs the client. Every request is bounded by retry.azure().
if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient

logger = logging.getLogger("pipeline.azure")

SCHEME = "az://"
MIB = 1024 * 1024
CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ACCOUNT = "AZURE_STORAGE_ACCOUNT"
# Where the SDK's chain finds credentials: what a message about them points to.
CREDENTIALS = (
    f"the Azure credentials ({CONNECTION_STRING}, or {ACCOUNT} with what DefaultAzureCredential finds: "
    "AZURE_CLIENT_ID and the other AZURE_* variables, a managed identity, az login)"
)


class AzureError(PipelineError, RuntimeError):
    """A lake operation on Azure Blob Storage failed: ``doing`` what to ``url``, and why."""

    def __init__(self, doing: str, url: str, why: str):
        self.doing, self.url, self.why = doing, url, why
        self.container = split(url)[0]
        super().__init__(f"{doing} {url}: {why}")


def split(url: str) -> tuple[str, str]:
    """az://container/some/name -> ("container", "some/name")."""
    return bucket_url.split(url, SCHEME)


@functools.lru_cache(maxsize=None)
def _client(environment: frozenset, limits: tuple) -> BlobServiceClient:
    from azure.storage.blob import BlobServiceClient

    found = dict(environment)
    if found.get(CONNECTION_STRING):
        return BlobServiceClient.from_connection_string(found[CONNECTION_STRING], **retry.azure())
    from azure.identity import DefaultAzureCredential

    account_url = f"https://{found[ACCOUNT]}.blob.core.windows.net"
    return BlobServiceClient(account_url, credential=DefaultAzureCredential(), **retry.azure())


def client(url: str) -> BlobServiceClient:
    """One client per environment (the SDK's chain reads it) and `[azure]` limits, reused: it keeps
    its connection pool. ``url``: what the client is for, for the message when no credentials are
    set at all."""
    if not (os.environ.get(CONNECTION_STRING) or os.environ.get(ACCOUNT)):
        raise AzureError("reaching", url, f"no Azure account is set; set {CREDENTIALS}")
    cfg = settings.azure()
    return _client(frozenset((k, v) for k, v in os.environ.items() if k.startswith("AZURE_")), (cfg.timeout, cfg.attempts))


def reader_settings() -> dict[str, str]:
    """What DuckDB's azure extension needs to reach the lake as this process does, as its SECRET's
    fields: the connection string, else the account with DuckDB's own credential chain (it runs
    Azure's DefaultAzureCredential itself). Secrets: never to be logged or written anywhere."""
    if os.environ.get(CONNECTION_STRING):
        return {"connection_string": os.environ[CONNECTION_STRING]}
    if os.environ.get(ACCOUNT):
        return {"provider": "credential_chain", "account_name": os.environ[ACCOUNT]}
    raise AzureError("reading", settings.lake().root, f"no Azure account is set; set {CREDENTIALS}")


def md5_of(path: str) -> bytes:
    """The file's MD5, as the blob's Content-MD5 holds it (16 bytes)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            digest.update(block)
    return digest.digest()


def reason(error: BaseException, container: str) -> str:
    """What went wrong, in the words a user acts on; never a credential (the SDK's error codes
    and messages hold none; its whole text may quote request headers, so it is not used)."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    if isinstance(error, HttpResponseError):
        found = getattr(error, "error_code", None)  # the storage SDK's errors have it: a StorageErrorCode, or a str
        code = str(getattr(found, "value", found) or "")
        status = error.status_code
        if code == "ContainerNotFound":
            return f"container {container} does not exist (ContainerNotFound)"
        if status == 403 or isinstance(error, ClientAuthenticationError):
            return f"access denied to container {container} ({code or status}); check {CREDENTIALS} and their permissions"
        if code == "Md5Mismatch":
            return "a block was garbled on its way: the service's MD5 of it is not the one sent (Md5Mismatch); nothing was committed"
        return f"{code or status}: {error.reason or type(error).__name__}"
    if isinstance(error, ClientAuthenticationError):  # DefaultAzureCredential found nothing that works
        return f"no Azure credential was found ({type(error).__name__}); set {CREDENTIALS}"
    return f"{type(error).__name__}: {error}"


@contextlib.contextmanager
def _named(url: str, doing: str) -> Iterator[None]:
    """Turn the SDK's errors into one that says what was done where, and why."""
    from azure.core.exceptions import AzureError as SDKError

    try:
        yield
    except SDKError as e:
        raise AzureError(doing, url, reason(e, split(url)[0])) from None  # its text may quote request headers


class AzureFileSystem(luigi.target.FileSystem):
    """luigi's FileSystem interface over one client; paths are az:// URLs."""

    def _blob(self, url: str) -> Any:  # a BlobClient
        container, name = split(url)
        return client(url).get_blob_client(container, name)

    def properties(self, url: str) -> Any:  # BlobProperties
        """The blob's size, Content-MD5 and metadata, as the service reports them."""
        with _named(url, "reading the properties of"):
            return self._blob(url).get_blob_properties()

    def exists(self, path: str) -> bool:
        with _named(path, "checking"):
            return self._blob(path).exists()  # False for no such blob (a missing container says so when uploading)

    def existing(self, paths: Iterable[str]) -> set[str]:
        """Which of ``paths`` exist, from one listing per container (bucket.existing)."""
        return bucket_url.existing(paths, SCHEME, self._names_under)

    def _names_under(self, container: str, prefix: str) -> set[str]:
        url = f"{SCHEME}{container}/{prefix}"
        with _named(url, "listing"):
            return {blob.name for blob in client(url).get_container_client(container).list_blobs(name_starts_with=prefix)}

    def remove(self, path: str, recursive: bool = False, skip_trash: bool = True) -> None:
        """The blob at ``path`` (never a prefix's blobs: nothing here removes more than one)."""
        with _named(path, "removing"):
            self._blob(path).delete_blob()

    def upload(self, local_path: str, url: str, metadata: dict[str, str]) -> None:
        """Upload a file so that the blob appears only whole, then check it (see the module)."""
        from azure.storage.blob import BlobBlock, ContentSettings

        blob = self._blob(url)
        size = settings.azure().block_size_mib * MIB
        local = md5_of(local_path)
        upload = uuid.uuid4().hex  # this upload's blocks, apart from any other's of the same name
        blocks: list[Any] = []  # BlobBlocks
        with _named(url, "uploading to"), open(local_path, "rb") as f:
            for data in iter(lambda: f.read(size), b""):
                block = base64.b64encode(f"{upload}-{len(blocks):06d}".encode()).decode()
                blob.stage_block(block, data, validate_content=True)
                blocks.append(BlobBlock(block))
            settings_ = ContentSettings(content_type="application/vnd.apache.parquet", content_md5=bytearray(local))
            ours = blob.commit_block_list(blocks, content_settings=settings_, metadata=metadata)["etag"]
        seen = self.properties(url)
        if seen.etag != ours:  # another writer committed since: its blob is its own to check, never ours to remove
            raise AzureError("uploading to", url, "another writer replaced the blob before it was checked, so it was left; run again")
        remote = bytes(seen.content_settings.content_md5 or b"")
        if (seen.size, remote, seen.metadata) != (os.path.getsize(local_path), local, metadata):
            self._remove_garbled(
                url,
                ours,
                f"the blob ({seen.size} bytes, MD5 {remote.hex() or 'none'}) is not the local file ({os.path.getsize(local_path)} "
                f"bytes, MD5 {local.hex()}, {local_path}) with its record: garbled on its way",
            )

    def _remove_garbled(self, url: str, ours: str, why: str) -> NoReturn:
        """Our blob (ETag ``ours``), which is not the file, must not stay under its name, where it
        would count as done: removed, only while it is still ours (another writer's since is
        left)."""
        with _named(url, "removing"):
            self._blob(url).delete_blob(etag=ours, match_condition=_if_unchanged())
        raise AzureError("uploading to", url, f"{why}, so the blob was removed; the next run uploads it again")

    def download(self, url: str, local_path: str) -> None:
        """The blob as a local file (in ranges, each retried), checked against its Content-MD5."""
        seen = self.properties(url)
        with _named(url, "downloading"), open(local_path, "wb") as f:
            self._blob(url).download_blob(etag=seen.etag, match_condition=_if_unchanged()).readinto(f)
        local = md5_of(local_path)
        if bytes(seen.content_settings.content_md5 or b"") != local:
            os.remove(local_path)
            raise AzureError(
                "downloading",
                url,
                f"the file's MD5 {local.hex()} is not the blob's {bytes(seen.content_settings.content_md5 or b'').hex() or 'none'}: "
                "garbled on its way; run again",
            )


def _if_unchanged() -> Any:
    from azure.core import MatchConditions

    return MatchConditions.IfNotModified


class AzureTarget(bucket_url.BucketTarget):
    """A blob in Azure Blob Storage. Written only whole (see AzureFileSystem.upload)."""

    fs = AzureFileSystem()
    scheme = SCHEME
