"""The object-store lakes as the tests see them (tests/test_object_lakes.py, test_s3.py,
test_azure.py): one interface over an S3 bucket on moto and an Azure container on Azurite, each
read with the store's own official client, never through the pipeline. What differs between the
stores (the checksum the service keeps, the messages a user reads) is here, each expected message
spelled out whole, so the shared tests hold each store to its own exact text."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from typing import Iterator

from pipeline import doctor
from pipeline.lake import AzureLakeFile, S3LakeFile
from pipeline.targets import azure as azure_target
from pipeline.targets import s3 as s3_target

from conftest import s3_calls


@dataclasses.dataclass(frozen=True)
class Stored:
    """An object (a blob) as the service reports it: its size, its checksum (in the form the
    store's checksum_of gives a local file's) and its metadata."""

    size: int
    checksum: object
    metadata: dict[str, str]


class S3Lake:
    """The lake in a bucket on moto's S3 server (conftest's s3_server, credentials in conftest's aws)."""

    scheme = "s3"
    Error = s3_target.S3Error
    Target = s3_target.S3Target
    LakeFile = S3LakeFile
    checksum_of = staticmethod(s3_target.crc32_of)
    # The name of the call the pipeline's one listing sends (as s3_calls records it).
    LISTING = "ListObjectsV2"
    # The method of the target's fs the upload's check after it calls (where another writer lands).
    check_after_upload = "head"
    # The target aborts a multipart upload that fails, so none is left unfinished.
    aborts_unfinished = True
    # The largest cut of the generated cut points, and the file they cut: one PUT of 300 KiB.
    cut_file_size, cut_max = 300 * 1024, 320 * 1024
    cut_settings: dict = {}  # a cut request tried again as the pipeline does ([s3] attempts 2)
    # A bucket no test creates, and why a step that writes there fails.
    missing = "no-such-bucket-here"
    missing_why = f"bucket {missing} does not exist (NoSuchBucket)"
    # Why our upload fails when another writer's object landed before our check.
    replaced_why = "another writer replaced the object before it was checked, so it was left; run again"

    def __init__(self, name: str, server: dict, client):
        self.name, self.server, self.proxy, self.client = name, server, server["proxy"], client
        self.lake = f"s3://{name}/lake"
        self.secret = server["secret"]  # in no log line
        self.credentials = (server["secret"], server["key_id"])  # in no warehouse file, no view

    def objects(self) -> dict[str, Stored]:
        keys = [o["Key"] for o in self.client.list_objects_v2(Bucket=self.name).get("Contents", [])]
        heads = {key: self.client.head_object(Bucket=self.name, Key=key, ChecksumMode="ENABLED") for key in keys}
        return {key: Stored(head["ContentLength"], head["ChecksumCRC32"], head["Metadata"]) for key, head in heads.items()}

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def put_raw(self, key: str, data: bytes, metadata: dict[str, str]) -> None:
        """Another writer's object, put with the store's client."""
        self.client.put_object(Bucket=self.name, Key=key, Body=data, Metadata=metadata)

    def unfinished(self) -> list:
        """The multipart uploads begun and neither completed nor aborted."""
        return self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", [])

    def empty(self) -> None:
        for key in self.objects():
            self.client.delete_object(Bucket=self.name, Key=key)

    @contextlib.contextmanager
    def requests(self) -> Iterator[list[str]]:
        """The name of each operation the pipeline's client sends in the block."""
        sent: list[str] = []
        hook = s3_calls(sent)
        try:
            yield sent
        finally:
            s3_target.client().meta.events.unregister("before-call.s3", hook)

    def use_wrong_credentials(self, monkeypatch) -> str:
        wrong = "wrong-secret-4d1e9b"
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
        return wrong

    def denied_why(self) -> str:
        return f"access denied to bucket {self.name} (403); check {s3_target.CREDENTIALS} and their permissions"

    def garbled(self, url: str, local: str) -> re.Pattern:
        """The message of an upload garbled on its way: the object's CRC32 (whatever the garbled
        bytes made it) is not the file's, and the object was removed."""
        return re.compile(
            re.escape(f"uploading to {url}: the object's CRC32 ")
            + ".*"
            + re.escape(f"is not the local file's {s3_target.crc32_of(local)} ({local}): the upload was garbled on its way")
            + ".*"
            + re.escape("so the object was removed; the next run uploads it again"),
            re.DOTALL,
        )

    def doctor_passed(self) -> doctor.Check:
        return doctor.passed("lake", f"{self.lake}: an object written, read back and deleted")

    def doctor_missing(self, root: str) -> doctor.Check:
        return doctor.failed(
            "lake",
            f"cannot write, read and delete an object under {root}: {self.missing_why}",
            f"check that the bucket exists and that {s3_target.CREDENTIALS} may put, get and delete objects in it "
            "(AWS_ENDPOINT_URL for an S3-compatible store)",
        )


# The Azure SDK's log of each request it sends (observed, not changed): what the tests count.
AZURE_REQUESTS = "azure.core.pipeline.policies.http_logging_policy"


class AzureLake:
    """The lake in a container on Azurite (conftest's azurite, credentials in the connection string)."""

    scheme = "az"
    Error = azure_target.AzureError
    Target = azure_target.AzureTarget
    LakeFile = AzureLakeFile
    checksum_of = staticmethod(azure_target.md5_of)
    LISTING = "List Blobs"  # what requests() calls the container's listing
    check_after_upload = "properties"
    # Staged blocks never committed cannot be removed by a client: they are no blob, and the
    # service drops them within a week (pipeline/targets/azure.py).
    aborts_unfinished = False
    # Three blocks of 1 MiB (conftest's az), so a cut can fall in any block or the commit.
    cut_file_size, cut_max = 2 * 1024 * 1024 + 300 * 1024, 2600 * 1024
    cut_settings = {("azure", "attempts"): "1"}  # a cut block not tried again: the cut is where it fails
    missing = "no-such-container"
    missing_why = f"container {missing} does not exist (ContainerNotFound)"
    replaced_why = "another writer replaced the blob before it was checked, so it was left; run again"

    def __init__(self, name: str, server: dict):
        from azure.storage.blob import BlobServiceClient

        self.name, self.server, self.proxy = name, server, server["proxy"]
        self.lake = f"az://{name}/lake"
        self.client = BlobServiceClient.from_connection_string(server["connection_string"]).get_container_client(name)
        self.secret = server["key"]
        self.credentials = (server["key"],)

    def blobs(self) -> dict:
        """Every committed blob with its properties as the SDK gives them."""
        return {blob.name: blob for blob in self.client.list_blobs(include=["metadata"])}

    def objects(self) -> dict[str, Stored]:
        return {name: Stored(blob.size, md5(blob), blob.metadata) for name, blob in self.blobs().items()}

    def read(self, key: str) -> bytes:
        return self.client.download_blob(key).readall()

    def put_raw(self, key: str, data: bytes, metadata: dict[str, str]) -> None:
        self.client.get_blob_client(key).upload_blob(data, overwrite=True, metadata=metadata)

    def unfinished(self) -> list:
        """The blobs whose blocks were staged but never committed."""
        return [blob.name for blob in self.client.list_blobs(include=["uncommittedblobs"]) if blob.name not in self.blobs()]

    def empty(self) -> None:
        for name in self.blobs():
            self.client.delete_blob(name)

    @contextlib.contextmanager
    def requests(self) -> Iterator[list[str]]:
        """Each request the SDK sends in the block: "List Blobs" for the container's listing (the
        query's values are redacted in the log), else the logged request line."""
        sent: list[str] = []
        listing = f"/{self.name}?restype="

        class Recorder(logging.Handler):
            def emit(self, record):
                line = record.getMessage().split("\n")[0]
                if "Request URL" in record.getMessage():
                    sent.append(AzureLake.LISTING if listing in line else line)

        logger, recorder = logging.getLogger(AZURE_REQUESTS), Recorder()
        level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(recorder)
        try:
            yield sent
        finally:
            logger.removeHandler(recorder)
            logger.setLevel(level)

    def use_wrong_credentials(self, monkeypatch) -> str:
        wrong = "V3Jvbmcta2V5LTRkMWU5Yg=="  # a key of the right form, not the account's
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", self.server["connection_string"].replace(self.server["key"], wrong))
        return wrong

    def denied_why(self) -> str:
        return f"access denied to container {self.name} (AuthorizationFailure); check {azure_target.CREDENTIALS} and their permissions"

    def garbled(self, url: str, local: str) -> re.Pattern:
        """The message of an upload garbled on its way: the service refused the block, nothing
        was committed (the whole text, nothing left open)."""
        return re.compile(
            re.escape(
                f"uploading to {url}: a block was garbled on its way: the service's MD5 of it is not the one sent (Md5Mismatch); "
                "nothing was committed"
            )
        )

    def doctor_passed(self) -> doctor.Check:
        return doctor.passed("lake", f"{self.lake}: a blob written, read back and deleted")

    def doctor_missing(self, root: str) -> doctor.Check:
        return doctor.failed(
            "lake",
            f"cannot write, read and delete a blob under {root}: {self.missing_why}",
            f"check that the container exists and that {azure_target.CREDENTIALS} may write, read and delete blobs in it",
        )


def md5(blob) -> bytes:
    """A blob's Content-MD5 (16 bytes; none: empty)."""
    return bytes(blob.content_settings.content_md5 or b"")
