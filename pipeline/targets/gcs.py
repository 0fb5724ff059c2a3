"""A luigi target on Google Cloud Storage, on the official `google-cloud-storage` client: the data
lake when `[lake] root` is gs://bucket/prefix.

What makes an upload safe:
- An object appears under its name only when its upload is complete (a one-request upload, or
  the last chunk of a resumable one), so an interrupted upload leaves nothing under the name.
- Files over 8 MiB (every real month) go as a resumable upload in chunks of
  `[gcs] chunk_size_kib`, each a request with its own timeout, retried on transient errors and
  resumed where the server says the upload stopped; smaller files go in one request (the
  client's own rule). That is what makes big files work on a slow link, without the course's
  monkeypatch of the private `storage.blob._MAX_MULTIPART_SIZE`.
- The server's crc32c of the finished object is compared with the local file's, and the object
  carries its source's row count and sha256 as metadata.

Credentials: Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud's login, the
metadata server); `STORAGE_EMULATOR_HOST` points the client at an emulator. Never a setting here.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import logging
import os
from typing import TYPE_CHECKING, Iterable, Iterator, NoReturn, Optional

import google_crc32c
import luigi
import luigi.target

from pipeline import retry, settings
from pipeline.errors import PipelineError
from pipeline.targets import bucket as bucket_url

# google-cloud-storage is imported where it is used: every process imports this module (the lake
# may be on GCS), but only a gs:// lake needs the client. Every call is bounded (`bounded`): its
# retry is declared in pipeline/retry.py.
if TYPE_CHECKING:
    import google.cloud.storage as storage

logger = logging.getLogger("pipeline.gcs")

SCHEME = "gs://"


class GCSError(PipelineError, RuntimeError):
    """A lake operation on GCS failed; the message names the bucket and the path."""


class CallFailed(GCSError):
    """A call to GCS failed, after its retries (fields: doing, url, reason, advice)."""

    def __init__(self, doing: str, url: str, reason: str, advice: str = ""):
        self.doing, self.url, self.reason, self.advice = doing, url, reason, advice
        super().__init__(f"{doing} {url}: {reason}" + (f"; {advice}" if advice else ""))


class ChunkSizeRefused(GCSError):
    """`[gcs] chunk_size_kib` is not what GCS takes (field: chunk_size_kib)."""

    def __init__(self, chunk_size_kib: int):
        self.chunk_size_kib = chunk_size_kib
        super().__init__(f"[gcs] chunk_size_kib = {chunk_size_kib}: GCS takes chunks of a multiple of 256 KiB")


class ObjectReplaced(GCSError):
    """Another writer replaced the object between our upload and the check of its checksum
    (fields: url, generation: theirs, ours)."""

    def __init__(self, url: str, generation: int, ours: int):
        self.url, self.generation, self.ours = url, generation, ours
        super().__init__(
            f"uploading to {url}: another writer replaced the object (generation {generation}, ours {ours}) "
            "before its checksum was read; run again"
        )


class GarbledUpload(GCSError):
    """An upload that arrived garbled, removed so it never counts as done (fields: url, why)."""

    def __init__(self, url: str, why: str):
        self.url, self.why = url, why
        super().__init__(f"{why}, so the object was removed; the next run uploads it again")


def split(url: str) -> tuple[str, str]:
    """gs://bucket/some/name -> ("bucket", "some/name")."""
    return bucket_url.split(url, SCHEME)


@functools.lru_cache(maxsize=None)
def _client(project: str, emulator: Optional[str]) -> storage.Client:
    import google.cloud.storage as storage

    return storage.Client(project=project or None)  # reads STORAGE_EMULATOR_HOST itself


def client() -> storage.Client:
    """One client per project and endpoint, reused: it keeps its connection pool."""
    return _client(settings.gcs().project, os.environ.get("STORAGE_EMULATOR_HOST"))


def crc32c_of(path: str) -> str:
    """The file's crc32c as GCS reports it: base64 of the big-endian 4 bytes."""
    checksum = google_crc32c.Checksum()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            checksum.update(block)
    return base64.b64encode(checksum.digest()).decode()


def bounded() -> dict:
    """The `[gcs]` limits for one call: each request's timeout, and its retry (pipeline/retry.py)."""
    return {"timeout": settings.gcs().timeout, "retry": retry.gcs()}


@contextlib.contextmanager
def _named(url: str, doing: str) -> Iterator[None]:
    """Turn the client's errors into one that says what was done where, and why."""
    from google.api_core import exceptions as gexc

    bucket, _ = split(url)
    try:
        yield
    except gexc.NotFound as e:
        raise CallFailed(doing, url, f"bucket {bucket} or the object does not exist ({e.code} {e.message})") from e
    except gexc.Forbidden as e:
        raise CallFailed(
            doing,
            url,
            f"access denied to bucket {bucket} ({e.code} {e.message})",
            "check the credentials (GOOGLE_APPLICATION_CREDENTIALS) and their roles",
        ) from e
    except gexc.GoogleAPIError as e:
        raise CallFailed(doing, url, str(e)) from e
    except OSError as e:  # connection errors after the retries gave up
        raise CallFailed(doing, url, f"{type(e).__name__}: {e}") from e


class GCSFileSystem(luigi.target.FileSystem):
    """luigi's FileSystem interface over one client; paths are gs:// URLs."""

    def _blob(self, url: str) -> storage.Blob:
        bucket, name = split(url)
        return client().bucket(bucket).blob(name)

    def exists(self, path: str) -> bool:
        with _named(path, "checking"):
            return self._blob(path).exists(**bounded())

    def existing(self, paths: Iterable[str]) -> set[str]:
        """Which of ``paths`` exist, from one listing per bucket (bucket.existing)."""
        return bucket_url.existing(paths, SCHEME, self._names_under)

    def _names_under(self, bucket: str, prefix: str) -> set[str]:
        with _named(f"{SCHEME}{bucket}/{prefix}", "listing"):
            return {blob.name for blob in client().list_blobs(bucket, prefix=prefix, **bounded())}

    def listdir(self, path: str) -> Iterator[str]:
        bucket, name = split(path.rstrip("/") + "/")
        with _named(path, "listing"):
            for blob in client().list_blobs(bucket, prefix=name, **bounded()):
                yield f"{SCHEME}{bucket}/{blob.name}"

    def remove(self, path: str, recursive: bool = True, skip_trash: bool = True) -> None:
        urls = list(self.listdir(path)) if recursive and not self.exists(path) else [path]
        for url in urls:
            with _named(url, "removing"):
                self._blob(url).delete(**bounded())

    def upload(self, local_path: str, url: str, metadata: dict[str, str]) -> storage.Blob:
        """Upload a file so that the object appears only whole, then check its crc32c."""
        cfg = settings.gcs()
        if cfg.chunk_size_kib <= 0 or cfg.chunk_size_kib % 256:
            raise ChunkSizeRefused(cfg.chunk_size_kib)
        blob = self._blob(url)
        blob.chunk_size = cfg.chunk_size_kib * 1024  # resumable, chunk by chunk
        blob.metadata = metadata
        from google.cloud.storage.exceptions import DataCorruption

        local_crc = crc32c_of(local_path)
        with _named(url, "uploading to"):
            try:
                blob.upload_from_filename(local_path, content_type="application/vnd.apache.parquet", checksum="crc32c", **bounded())
            except DataCorruption as e:  # a resumable upload, checked by the client: the object is there, garbled
                self._remove_garbled(url, f"uploading to {url}: {e} ({local_path}): the upload was garbled on its way")
            uploaded = blob.generation
            blob.reload(**bounded())
        if blob.crc32c != local_crc:
            if blob.generation != uploaded:
                raise ObjectReplaced(url, blob.generation, uploaded)
            self._remove_garbled(
                url,
                f"uploading to {url}: the object's crc32c {blob.crc32c} is not the local file's {local_crc} "
                f"({local_path}): the upload was garbled on its way",
                uploaded,
            )
        return blob

    def _remove_garbled(self, url: str, why: str, generation: Optional[int] = None) -> NoReturn:
        """An object that is not the file must not stay under its name, where it would count as
        done: removed (only that generation of it, when known, never a newer writer's)."""
        from google.api_core import exceptions as gexc

        with _named(url, "removing the garbled upload"), contextlib.suppress(gexc.NotFound):  # not there: nothing to remove
            self._blob(url).delete(if_generation_match=generation, **bounded())
        raise GarbledUpload(url, why)

    def stat(self, url: str) -> storage.Blob:
        """The object with its size, checksums and metadata."""
        blob = self._blob(url)
        with _named(url, "reading the metadata of"):
            blob.reload(**bounded())
        return blob

    def download(self, url: str, local_path: str) -> None:
        with _named(url, "downloading"):
            self._blob(url).download_to_filename(local_path, checksum="crc32c", **bounded())


class GCSTarget(bucket_url.BucketTarget):
    """An object in GCS. Written only whole (see GCSFileSystem.upload), read as bytes."""

    fs = GCSFileSystem()
    scheme = SCHEME

    def open(self, mode: str = "r") -> io.IOBase:
        if mode not in ("r", "rb"):
            raise ValueError(f"{self.path}: GCSTarget is read-only through open(); write with upload()")
        with _named(self.path, "reading"):
            return self.fs._blob(self.path).open("rb")

    def upload(self, local_path: str, metadata: Optional[dict[str, str]] = None) -> storage.Blob:
        return self.fs.upload(local_path, self.path, metadata or {})
