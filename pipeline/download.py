"""Source -> raw file: fetch one dataset file from the source ([source] kind: the releases'
csv.gz or the TLC's Parquet, or any mirror of their layout), and refuse anything that is not that
file, before it is marked complete.

A download is checked as it streams and once more when it is on disk: an HTML page (a wrong URL
often answers 200 with one), a file that does not start as gzip or Parquet, a byte count different
from Content-Length, a gzip stream that ends early or fails its CRC, a Parquet file without its
footer, or columns the catalog does not accept all fail the step. 404 means the month is not
published (not retried); connection errors and 5xx answers are retried with backoff.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import time
import urllib.parse
from typing import BinaryIO, Callable, Iterator

import luigi
import pyarrow as pa
import pyarrow.parquet as pq
import requests
import urllib3

from pipeline import catalog, settings
from pipeline.dataset_task import DatasetTask

logger = logging.getLogger("pipeline.download")

CHUNK = 1 << 20  # file reads
NET_CHUNK = 64 << 10  # network reads: small, so progress moves and bytes reach disk on a slow link
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"


class SourceError(RuntimeError):
    """The source did not give us the file we asked for."""


class MonthNotPublished(SourceError):
    """The source has no such file (HTTP 404, or missing from a file:// mirror)."""


class _Retryable(SourceError):
    pass


def source_path(svc: catalog.Service, month) -> str:
    """The file's path under the source's base, in the configured kind's layout."""
    return catalog.SOURCES[settings.source().kind].path(svc, month)


def source_url(svc: catalog.Service, month) -> str:
    cfg = settings.source()
    base = (cfg.base_url or catalog.SOURCES[cfg.kind].base_url).rstrip("/")
    return f"{base}/{source_path(svc, month)}"


MAGIC = {".gz": GZIP_MAGIC, ".parquet": PARQUET_MAGIC}


class _StreamCheck:
    """Sizes and hashes the bytes as they arrive; refuses an HTML page, or a .gz or .parquet file
    that does not start like one, at once."""

    def __init__(self, url: str):
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.magic = next((m for ext, m in MAGIC.items() if url.endswith(ext)), b"")

    def feed(self, chunk: bytes, where: str) -> None:
        if self.size == 0:
            start = chunk[:512].lstrip().lower()
            if start.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
                raise SourceError(f"{where}: got an HTML/XML page, not the data file (a wrong URL or an "
                                  f"error page); it starts {chunk[:80]!r}")
            if not chunk.startswith(self.magic):
                raise SourceError(f"{where}: not a {'gzip' if self.magic == GZIP_MAGIC else 'Parquet'} file; "
                                  f"it starts {chunk[:40]!r}")
        self.sha256.update(chunk)
        self.size += len(chunk)


def _parquet_columns(path: str, where: str) -> str:
    """Open the Parquet file's footer (which proves it whole: a cut file has no footer) and
    return its column names as a header line."""
    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(f"{where}: truncated or corrupt Parquet ({e}); the download is incomplete") from None
    return ",".join(names)


def _read_through(path: str, gzipped: bool, where: str) -> str:
    """Read the whole file, through gunzip for a .gz (which proves the stream whole: its
    end-of-stream marker and CRC), and return its header line."""
    raw = pa.OSFile(path)
    stream = pa.CompressedInputStream(raw, "gzip") if gzipped else raw
    head = b""
    try:
        with stream:
            while chunk := stream.read(CHUNK):
                if b"\n" not in head and len(head) < 65536:
                    head += chunk[:65536]
    except OSError as e:  # Arrow: "Truncated compressed stream", "incorrect data check", ...
        raise SourceError(f"{where}: truncated or corrupt gzip ({e}); the download is incomplete") from None
    if not head.strip():
        raise SourceError(f"{where}: the file is empty")
    if b"\n" not in head:
        raise SourceError(f"{where}: no complete header line in the first 64 KiB")
    try:
        return head.split(b"\n", 1)[0].decode("utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(f"{where}: header is not UTF-8 text: {e}") from None


def _http_chunks(url: str, where: str, cfg: settings.source) -> Iterator[tuple[bytes, int]]:
    """Yield (chunk, expected total size or 0) for one GET; classify failures."""
    try:
        with requests.get(url, stream=True, timeout=cfg.timeout) as resp:
            if resp.status_code == 404:
                raise MonthNotPublished(f"{where}: not published (HTTP 404)")
            if resp.status_code >= 500:
                raise _Retryable(f"{where}: server error HTTP {resp.status_code}")
            if resp.status_code != 200:
                raise SourceError(f"{where}: unexpected HTTP {resp.status_code} {resp.reason}")
            expected = int(resp.headers.get("Content-Length") or 0)
            # decode_content=False: store the bytes exactly as published, whatever the server's
            # Content-Encoding says, so the sha256 is the file's.
            for chunk in resp.raw.stream(NET_CHUNK, decode_content=False):
                yield chunk, expected
    except (requests.ConnectionError, requests.Timeout, urllib3.exceptions.HTTPError) as e:
        raise _Retryable(f"{where}: {type(e).__name__}: {e}") from None


def _file_chunks(url: str, where: str) -> Iterator[tuple[bytes, int]]:
    path = urllib.parse.unquote(urllib.parse.urlparse(url).path)
    try:
        f: BinaryIO = open(path, "rb")
    except FileNotFoundError:
        raise MonthNotPublished(f"{where}: not published (no such file in the mirror)") from None
    with f:
        total = os.fstat(f.fileno()).st_size
        while chunk := f.read(CHUNK):
            yield chunk, total


def fetch(url: str, dest: str, svc: catalog.Service, where: str,
          progress: Callable[[int, int], None] = lambda done, total: None) -> dict:
    """Download ``url`` to ``dest`` and check it; return what we know about the file."""
    cfg = settings.source()
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise SourceError(f"{where}: unsupported URL scheme {scheme!r} (use http(s):// or file://)")
    for attempt in range(1, cfg.attempts + 1):
        check = _StreamCheck(url)
        expected = 0
        try:
            chunks = _file_chunks(url, where) if scheme == "file" else _http_chunks(url, where, cfg)
            with open(dest, "wb") as out:
                for chunk, expected in chunks:
                    check.feed(chunk, where)
                    out.write(chunk)
                    progress(check.size, expected)
            if expected and check.size != expected:
                raise _Retryable(f"{where}: got {check.size} bytes of {expected} announced")
            break
        except _Retryable as e:
            if attempt == cfg.attempts:
                raise SourceError(f"{e} (gave up after {attempt} tries)") from None
            delay = cfg.backoff * 2 ** (attempt - 1)
            logger.warning("%s; try %d of %d in %.1f s", e, attempt + 1, cfg.attempts, delay)
            time.sleep(delay)
    if url.endswith(".parquet"):
        header = _parquet_columns(dest, where)
    else:
        header = _read_through(dest, url.endswith(".gz"), where)
    catalog.resolve_header(svc, header, where)
    return {"url": url, "size": check.size, "sha256": check.sha256.hexdigest(), "header": header.rstrip("\r")}


def is_published(url: str) -> bool:
    """Whether the source has the file, without downloading it: a 404 (or a file missing from
    a file:// mirror) is False; any other failure is an error, never a silent False.

    A GET whose body is never read rather than a HEAD: the releases redirect to signed storage
    URLs, which need not answer HEAD."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return os.path.exists(urllib.parse.unquote(parsed.path))
    try:
        with requests.get(url, stream=True, timeout=settings.source().timeout) as resp:
            status = resp.status_code
    except (requests.ConnectionError, requests.Timeout) as e:
        raise SourceError(f"{url}: asking whether it is published: {type(e).__name__}: {e}") from None
    if status in (200, 404):
        return status == 200
    raise SourceError(f"{url}: asking whether it is published: HTTP {status}")


class Download(DatasetTask):
    """Fetch one month (or the zone lookup) from the source into the staging area."""

    def output(self):
        path = self.staging_path("raw", posixpath.basename(source_path(self.svc, self.month)))
        return {"file": luigi.LocalTarget(path), "meta": luigi.LocalTarget(path + ".json")}

    def run(self):
        url = source_url(self.svc, self.month)
        where = f"{self.label} ({url})"
        logger.info("%s: downloading %s", self.label, url)
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            self.report(done, total, f"downloaded {done / 1e6:.1f} of {total / 1e6:.1f} MB" if total else f"downloaded {done / 1e6:.1f} MB")

        out = self.output()
        with self.staged(out["file"]) as tmp:
            meta = fetch(url, tmp, self.svc, where, progress)
        # The data file is in place before its metadata: a run cut between the two renames leaves
        # the task incomplete (both are its outputs) and the next run fetches again.
        with self.staged(out["meta"]) as tmp:
            with open(tmp, "w") as f:
                json.dump(meta, f, indent=1)
        logger.info("%s: downloaded %s bytes in %.1f s, sha256 %s", self.label, f"{meta['size']:,}",
                    time.monotonic() - started, meta["sha256"])
        self.report(1, 1, "downloaded")
