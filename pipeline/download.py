"""Source -> raw file: fetch one dataset file from the source ([source] kind: the releases'
csv.gz or the TLC's Parquet, or any mirror of their layout), and refuse anything that is not that
file, before it is marked complete.

A download is checked as it streams and once more when it is on disk: an HTML page (a wrong URL
often answers 200 with one), a file that does not start as gzip or Parquet, a byte count different
from Content-Length, a gzip stream that ends early or fails its CRC (to its end for a small file;
a real month is inflated once, by ToParquet, which proves it whole and removes the download when
it is not), a Parquet file without its footer, or columns the catalog does not accept all fail
the step. 404 means the month is not
published (not retried); connection errors and 5xx answers are retried with backoff.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import logging
import os
import posixpath
import time
import urllib.parse
from typing import BinaryIO, Callable, Iterator, Mapping, Optional

import luigi
import pyarrow as pa
import pyarrow.parquet as pq
import requests
import urllib3
from isal import igzip, isal_zlib

from pipeline import catalog, retry, settings
from pipeline.dataset_task import DatasetTask

logger = logging.getLogger("pipeline.download")

CHUNK = 1 << 20  # file reads
NET_CHUNK = 64 << 10  # network reads: small, so progress moves and bytes reach disk on a slow link


class SourceError(RuntimeError):
    """The source did not give us the file we asked for."""


class MonthNotPublished(SourceError):
    """The source has no such file (HTTP 404, or missing from a file:// mirror)."""


class _Retryable(SourceError, retry.Transient):
    pass


def source_path(svc: catalog.Service, month) -> str:
    """The file's path under the source's base, in the configured kind's layout."""
    return catalog.SOURCES[settings.source().kind].path(svc, month)


def base_url() -> str:
    """The configured source's base: [source] base_url, or its kind's own."""
    cfg = settings.source()
    return (cfg.base_url or catalog.SOURCES[cfg.kind].base_url).rstrip("/")


def source_url(svc: catalog.Service, month) -> str:
    return f"{base_url()}/{source_path(svc, month)}"


def redact(url: str) -> str:
    """The URL as logs, errors and records show it: a user name, password or token in its user
    part, and a query string (signed URLs carry their signature there), become ***."""
    parts = urllib.parse.urlsplit(url)
    if not (parts.username or parts.password or parts.query):
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(
        (parts.scheme, ("***@" if "@" in parts.netloc else "") + host, parts.path, "***" if parts.query else "", "")
    )


def _scrub(text: str, url: str) -> str:
    """``text`` (an error from the HTTP client, which quotes what it was asked) without the
    secrets of ``url``."""
    parts = urllib.parse.urlsplit(url)
    for secret in (parts.password, parts.username, parts.query):
        if secret:
            text = text.replace(secret, "***")
    return text


def _suffix_of(url: str) -> str:
    return posixpath.splitext(urllib.parse.urlsplit(url).path)[1]


# How each kind of file starts, and what it is called: by the URL's suffix.
MAGIC = {".gz": (b"\x1f\x8b", "gzip"), ".parquet": (b"PAR1", "Parquet"), ".zip": (b"PK\x03\x04", "zip")}
# What a source that cannot be reached (no network, a mirror that is down) tells the user to try.
OFFLINE_HINT = (
    ". Is the network up? A mirror is set with [source] base_url (--source-base-url); offline, "
    "LUIGI_CONFIG_PATH=config/samples.cfg runs on the samples the repo ships"
)
# How much of the start is looked at: an HTML page shows itself in it, and every magic fits.
HEAD_BYTES = 512


class _StreamCheck:
    """Sizes and hashes the bytes as they arrive; refuses an HTML page, or a .gz or .parquet file
    that does not start like one, as soon as the first HEAD_BYTES are in (however the network cut
    them into chunks), and refuses a transfer slower than `[source] min_rate_kib` over any
    `[source] timeout` seconds, which the socket's own timeout misses when a byte trickles in
    now and then."""

    def __init__(self, url: str, where: str, cfg: settings.source):
        self.where = where
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.head = b""
        self.magic, self.kind = MAGIC.get(_suffix_of(url), (b"", ""))
        self.window, self.min_rate = cfg.timeout, cfg.min_rate_kib
        self.window_start, self.window_size = time.monotonic(), 0

    def feed(self, chunk: bytes) -> None:
        if len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]
            if len(self.head) == HEAD_BYTES:
                self.check_start()
        self.sha256.update(chunk)
        self.size += len(chunk)
        self.window_size += len(chunk)
        now = time.monotonic()
        if now - self.window_start >= self.window:
            if self.window_size < self.min_rate * 1024 * (now - self.window_start):
                raise _Retryable(
                    f"{self.where}: too slow: {self.window_size:,} bytes in the last "
                    f"{now - self.window_start:.0f} s, below [source] min_rate_kib ({self.min_rate:g} KiB/s)"
                )
            self.window_start, self.window_size = now, 0

    def finish(self) -> None:
        """The start of a file shorter than HEAD_BYTES, checked once it is all in."""
        if len(self.head) < HEAD_BYTES:
            self.check_start()

    def check_start(self) -> None:
        start = self.head.lstrip().lower()
        if start.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
            raise SourceError(
                f"{self.where}: got an HTML/XML page, not the data file (a wrong URL or an error page); it starts {self.head[:80]!r}"
            )
        if not self.head.startswith(self.magic):
            raise SourceError(f"{self.where}: not a {self.kind} file; it starts {self.head[:40]!r}")


def _parquet_rows(path: str, where: str) -> tuple[str, int]:
    """Open the Parquet file's footer (which proves it whole: a cut file has no footer) and
    return its column names as a header line, and its row count."""
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(f"{where}: truncated or corrupt Parquet ({e}); the download is incomplete") from None
    return ",".join(file.schema_arrow.names), file.metadata.num_rows


# What reading a damaged gzip stream raises: cut short (EOFError), a bad CRC, length or header
# (gzip.BadGzipFile, an OSError), a bad deflate block (isal's IsalError).
GZIP_ERRORS = (EOFError, OSError, isal_zlib.error)


def gunzipped(raw: BinaryIO) -> BinaryIO:
    """The bytes of the gzip stream ``raw``, inflated by ISA-L (python-isal: about twice zlib's
    speed, and it lets go of the GIL while it inflates, so the other steps run on meanwhile).
    Read to its end, it proves the stream whole (its end-of-stream marker and CRC) or raises one
    of GZIP_ERRORS."""
    return igzip.open(raw, "rb")


def gzip_damage(path: str) -> Optional[str]:
    """What is wrong with the gzip stream in ``path``, read to its end, or None when it is whole."""
    with open(path, "rb") as raw, gunzipped(raw) as stream:
        try:
            while stream.read(CHUNK):
                pass
        except GZIP_ERRORS as e:
            return str(e)
    return None


# How much of a .gz the Download inflates: a small file (a zone lookup, a file cut short early) is
# proved whole here; a real month is inflated once, by ToParquet, which proves it whole as it
# converts it (a damaged stream there removes the download, so the next run fetches it again).
GZIP_PROBE = 4 << 20


def _read_through(path: str, gzipped: bool, where: str) -> tuple[str, Optional[int]]:
    """Read the file, through gunzip for a .gz (which, to its end, proves the stream whole: its
    end-of-stream marker and CRC), and return its header line and its number of lines after it;
    for a .gz longer than GZIP_PROBE inflated, only its start is read, and the count is None."""
    head = b""
    lines = read = 0
    last = b"\n"
    whole = True  # read to its end
    with open(path, "rb") as raw, gunzipped(raw) if gzipped else raw as stream:
        try:
            while chunk := stream.read(CHUNK):
                if b"\n" not in head and len(head) < 65536:
                    head += chunk[:65536]
                lines += chunk.count(b"\n")
                last = chunk[-1:]
                read += len(chunk)
                if gzipped and read >= GZIP_PROBE:
                    whole = False
                    break
        except GZIP_ERRORS as e:
            raise SourceError(f"{where}: truncated or corrupt gzip ({e}); the download is incomplete") from None
    if not head.strip():
        raise SourceError(f"{where}: the file is empty")
    if b"\n" not in head:
        raise SourceError(f"{where}: no complete header line in the first 64 KiB")
    try:
        header = head.split(b"\n", 1)[0].decode("utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(f"{where}: header is not UTF-8 text: {e}") from None
    # Lines after the header, a last one without its newline included (blank ones too: this is
    # the upper bound that proves a file cut short; ToParquet counts the rows themselves).
    return header, lines - 1 + (last != b"\n") if whole else None


@contextlib.contextmanager
def _get(url: str, where: str, cfg: settings.source) -> Iterator[requests.Response]:
    """One streamed GET of the file as published, with what may heal (connection errors while
    connecting or reading, a 5xx) raised as a retryable error and the rest named; the caller
    reads the status (200 or 404 left to it) and the body."""
    try:
        # No compression on the fly (requests asks for gzip by default, and a server that
        # compresses a text file would hand us bytes that are not the file).
        with requests.get(url, stream=True, timeout=cfg.timeout, headers={"Accept-Encoding": "identity"}) as resp:
            if resp.status_code >= 500:
                raise _Retryable(f"{where}: server error HTTP {resp.status_code}")
            if resp.status_code not in (200, 404):
                raise SourceError(f"{where}: unexpected HTTP {resp.status_code} {resp.reason}")
            yield resp
    except requests.TooManyRedirects as e:
        raise SourceError(f"{where}: too many redirects ({_scrub(str(e), url)})") from None
    except (requests.ConnectionError, requests.Timeout, urllib3.exceptions.HTTPError) as e:
        raise _Retryable(f"{where}: {type(e).__name__}: {_scrub(str(e), url)}{OFFLINE_HINT}") from None


def _http_chunks(url: str, where: str, cfg: settings.source, found: dict) -> Iterator[tuple[bytes, int]]:
    """Yield (chunk, expected total size or 0) for one GET, each chunk as soon as it arrives,
    after putting the response's validators in ``found``."""
    with _get(url, where, cfg) as resp:
        if resp.status_code == 404:
            raise MonthNotPublished(f"{where}: not published (HTTP 404)")
        expected = int(resp.headers.get("Content-Length") or 0)
        found.update(validators(resp.headers))
        # read1: what has arrived, without waiting for a full chunk (so a trickle is seen);
        # decode_content=False: the bytes exactly as sent, so the sha256 is the file's.
        while chunk := resp.raw.read1(NET_CHUNK, decode_content=False):
            yield chunk, expected


def _file_chunks(url: str, where: str, found: dict) -> Iterator[tuple[bytes, int]]:
    path = urllib.parse.unquote(urllib.parse.urlparse(url).path)
    try:
        f: BinaryIO = open(path, "rb")
    except FileNotFoundError:
        raise MonthNotPublished(f"{where}: not published (no such file in the mirror)") from None
    found.update(_file_validators(path))
    with f:
        total = os.fstat(f.fileno()).st_size
        while chunk := f.read(CHUNK):
            yield chunk, total


def fetch_file(url: str, dest: str, where: str, progress: Callable[[int, int], None] = lambda done, total: None) -> dict:
    """Download ``url`` to ``dest``, retrying what may heal, and check the transfer (the whole
    body, how it starts, the rate); return what we know about the file: its URL as shown, size,
    sha256, and the server's validators."""
    cfg = settings.source()
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise SourceError(f"{where}: unsupported URL scheme {scheme!r} (use http(s):// or file://)")

    found: dict[str, str] = {}

    def attempt() -> _StreamCheck:
        check = _StreamCheck(url, where, cfg)
        expected = 0
        chunks = _file_chunks(url, where, found) if scheme == "file" else _http_chunks(url, where, cfg, found)
        with open(dest, "wb") as out:
            for chunk, expected in chunks:
                check.feed(chunk)
                out.write(chunk)
                progress(check.size, expected)
        check.finish()
        if expected and check.size != expected:
            raise _Retryable(f"{where}: got {check.size} bytes of {expected} announced")
        return check

    check = retry.call(attempt, attempts=cfg.attempts, backoff=cfg.backoff, setting="[source]")
    # What the server said of this version of the file, so a republished one can be noticed.
    return {
        "url": redact(url),
        "size": check.size,
        "sha256": check.sha256.hexdigest(),
        "etag": found.get("etag", ""),
        "last_modified": found.get("last_modified", ""),
    }


def fetch(url: str, dest: str, svc: catalog.Service, where: str, progress: Callable[[int, int], None] = lambda done, total: None) -> dict:
    """Download a data file of ``svc`` to ``dest`` and check it (fetch_file, then its header
    and, where it is known here, its row count); return what we know about the file."""
    meta = fetch_file(url, dest, where, progress)
    if _suffix_of(url) == ".parquet":
        header, rows = _parquet_rows(dest, where)
    else:
        header, rows = _read_through(dest, _suffix_of(url) == ".gz", where)
    catalog.resolve_header(svc, header, where)
    if rows is not None:  # else ToParquet counts them
        catalog.check_rows(svc, rows, where)
    return {**meta, "header": header.rstrip("\r")}


def validators(headers: Mapping[str, str]) -> dict[str, str]:
    """What tells one published version of a file from another, as the server states it."""
    return {"size": headers.get("Content-Length", ""), "etag": headers.get("ETag", ""), "last_modified": headers.get("Last-Modified", "")}


def _file_validators(path: str) -> dict[str, str]:
    stat = os.stat(path)
    return {"size": str(stat.st_size), "etag": "", "last_modified": email.utils.formatdate(stat.st_mtime, usegmt=True)}


def published(url: str) -> Optional[dict[str, str]]:
    """The validators of the file the source publishes at ``url`` (see `validators`), without
    downloading it, or None when it is not published (404, or missing from a file:// mirror).
    Any other failure is an error after the [source] tries, never a silent None.

    A GET whose body is never read rather than a HEAD: the releases redirect to signed storage
    URLs, which need not answer HEAD."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = urllib.parse.unquote(parsed.path)
        return _file_validators(path) if os.path.exists(path) else None
    cfg = settings.source()
    where = f"{redact(url)}: asking whether it is published"

    def ask() -> Optional[dict[str, str]]:
        with _get(url, where, cfg) as resp:  # the body is never read
            return validators(resp.headers) if resp.status_code == 200 else None

    return retry.call(ask, attempts=cfg.attempts, backoff=cfg.backoff, setting="[source]")


class Download(DatasetTask):
    """Fetch one month (or the zone lookup) from the source into the staging area."""

    def output(self):
        path = self.staging_path("raw", posixpath.basename(source_path(self.svc, self.month)))
        return {"file": luigi.LocalTarget(path), "meta": luigi.LocalTarget(path + ".json")}

    def run(self):
        url = source_url(self.svc, self.month)
        where = f"{self.label} ({redact(url)})"
        logger.info("%s: downloading %s", self.label, redact(url))
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
        logger.info(
            "%s: downloaded %s bytes in %.1f s, sha256 %s", self.label, f"{meta['size']:,}", time.monotonic() - started, meta["sha256"]
        )
        self.report(1, 1, "downloaded")
