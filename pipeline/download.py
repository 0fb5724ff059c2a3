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

The source is http(s)://, file:// or s3://bucket/prefix (a mirror kept in S3, read with the
lake's S3 client and credentials, pipeline/targets/s3.py): `TRANSPORTS` is the one place that
decides how the bytes and the validators come; every check above is the same for all of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import hashlib
import json
import logging
import os
import posixpath
import re
import threading
import time
import urllib.parse
from typing import BinaryIO, Callable, Iterator, Mapping, Optional, cast

import luigi
import pyarrow as pa
import pyarrow.parquet as pq
import requests
import urllib3
from isal import igzip, isal_zlib

from pipeline import catalog, retry, settings
from pipeline.dataset_task import DatasetTask
from pipeline.errors import PipelineError
from pipeline.redaction import redact, scrub

logger = logging.getLogger("pipeline.download")

CHUNK = 1 << 20  # file reads
NET_CHUNK = 64 << 10  # network reads: small, so progress moves and bytes reach disk on a slow link


@dataclasses.dataclass(frozen=True)
class DownloadRecord:
    """What a download knows of the file it fetched, kept as JSON beside it (`{file}.json`, the
    Download's second output): written by `write` and read by `read`, nowhere else. ToParquet
    copies the source's fields into the lake file's record; a Reingest pins its flow to sha256;
    the report shows size."""

    url: str  # as shown in logs: redacted (redaction.redact)
    size: int  # bytes, as received
    sha256: str  # of the bytes as received
    # The server's validators ("" where it sent none; records of versions before them lack the
    # keys): what tells a republished file.
    etag: str = ""
    last_modified: str = ""
    # The header line (a csv's first line, a Parquet file's column names joined by commas), as
    # the catalog accepted it; "" from fetch_file, which reads no header.
    header: str = ""

    def write(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(dataclasses.asdict(self), f, indent=1)

    @classmethod
    def read(cls, path: str) -> DownloadRecord:
        """The record at ``path``, from this version or an earlier one (keys it does not know are
        left out); a file that is not one is a RecordUnreadable naming it."""
        try:
            with open(path) as f:
                values = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RecordUnreadable(path, f"not JSON: {e}") from None
        if not isinstance(values, dict):
            raise RecordUnreadable(path, f"not a JSON object but {type(values).__name__}")
        fields = {field.name for field in dataclasses.fields(cls)}
        lacking = [field.name for field in dataclasses.fields(cls) if field.default is dataclasses.MISSING and field.name not in values]
        if lacking:
            raise RecordUnreadable(path, f"it lacks {', '.join(lacking)}")
        return cls(**{k: v for k, v in values.items() if k in fields})


class RecordUnreadable(PipelineError, ValueError):
    """A download's record (DownloadRecord) that cannot be read as one."""

    def __init__(self, path: str, why: str):
        self.path, self.why = path, why
        super().__init__(
            f"{path}: not a download record ({why}); remove it and the file beside it, and the next run downloads the file again"
        )


class SourceError(PipelineError, RuntimeError):
    """The source did not give us the file we asked for (refused, cut short, too slow, not the
    file asked for): the message says which and what to do."""


class MonthNotPublished(SourceError):
    """The source has no such file (HTTP 404, a key missing from an s3:// mirror, a file from a file:// one)."""

    @property
    def hint(self) -> str:  # type: ignore[override]  # a property where the base has a class attribute: it depends on the source
        if settings.source().kind == "releases":
            return "check the month (the course's copies hold 2019-01..2021-07), or --source-kind tlc"
        return "check the month: the TLC publishes a month about two months after it ends"


class _Retryable(SourceError, retry.Transient):
    pass


class CutShort(_Retryable):
    """The transfer ended before the file did: fewer bytes than the server announced, or, where
    it announced none, a text file whose last line has no line end."""

    def __init__(self, where: str, size: int, announced: int):
        self.where, self.size, self.announced = where, size, announced
        if announced:
            super().__init__(f"{where}: got {size} bytes of {announced} announced")
        else:
            super().__init__(
                f"{where}: the transfer ended inside a line after {size:,} bytes, and the server sent no Content-Length "
                "that would tell a whole file: cut short"
            )


class TooLong(SourceError):
    """A file's download, its tries included, went on past `[source] deadline`."""

    def __init__(self, where: str, seconds: float, received: int, deadline: float):
        self.where, self.seconds, self.received, self.deadline = where, seconds, received, deadline
        super().__init__(
            f"{where}: not done after {seconds:,.0f} s ({received:,} bytes so far): over [source] deadline ({deadline:g} s); "
            "for a slow link, raise it (--source-deadline)"
        )


class TooBig(SourceError):
    """A file bigger than `[source] max_size_mib`, as announced or as it arrives."""

    def __init__(self, where: str, size: int, max_size_mib: float, announced: bool):
        self.where, self.size, self.max_size_mib, self.announced = where, size, max_size_mib, announced
        super().__init__(
            f"{where}: {size:,} bytes {'announced' if announced else 'and more'}: over [source] max_size_mib "
            f"({max_size_mib:g} MiB); if the source really publishes a file this big, raise it (--source-max-size-mib)"
        )


def source_path(svc: catalog.Service, month) -> str:
    """The file's path under the source's base, in the configured kind's layout."""
    return catalog.SOURCES[settings.source().kind].path(svc, month)


def base_url() -> str:
    """The configured source's base: [source] base_url, or its kind's own."""
    cfg = settings.source()
    return (cfg.base_url or catalog.SOURCES[cfg.kind].base_url).rstrip("/")


def source_url(svc: catalog.Service, month) -> str:
    return f"{base_url()}/{source_path(svc, month)}"


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
# Seconds between the lines that say a download is still waiting (issue 27: a stalled source
# talks). A constant: tests lower it.
TALK_SECONDS = 30.0


class _Limits:
    """What bounds one file's download in all, its tries and their backoff included: `[source]
    deadline` and `max_size_mib` (each wait within a try is bounded by `[source] timeout`, so a
    try ends at most that long after the deadline). While it runs, it says every TALK_SECONDS
    how far it got."""

    def __init__(self, where: str, cfg: settings.source):
        self.where, self.deadline, self.max_size_mib = where, cfg.deadline, cfg.max_size_mib
        self.started = time.monotonic()
        self.received = 0  # bytes of the current try

    def check(self, size: int = 0, announced: int = 0) -> None:
        if max(size, announced) > self.max_size_mib * 2**20:
            raise TooBig(self.where, max(size, announced), self.max_size_mib, announced > size)
        waited = time.monotonic() - self.started
        if waited > self.deadline:
            raise TooLong(self.where, waited, self.received, self.deadline)

    @contextlib.contextmanager
    def talking(self) -> Iterator[None]:
        stop = threading.Event()

        def talk() -> None:
            while not stop.wait(TALK_SECONDS):
                logger.info(
                    "%s: still downloading: %s bytes so far, %.0f s since it started (it gives up after [source] deadline, %g s)",
                    self.where,
                    f"{self.received:,}",
                    time.monotonic() - self.started,
                    self.deadline,
                )

        thread = threading.Thread(target=talk, name="download-talk", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


class _StreamCheck:
    """Sizes and hashes the bytes as they arrive; refuses an HTML page, or a .gz or .parquet file
    that does not start like one, as soon as the first HEAD_BYTES are in (however the network cut
    them into chunks), and refuses a transfer slower than `[source] min_rate_kib` over any
    `[source] timeout` seconds, which the socket's own timeout misses when a byte trickles in
    now and then."""

    def __init__(self, url: str, where: str, cfg: settings.source, limits: _Limits):
        self.where, self.limits = where, limits
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.head = self.tail = b""
        self.text = _suffix_of(url) == ".csv"
        self.magic, self.kind = MAGIC.get(_suffix_of(url), (b"", ""))
        self.window, self.min_rate = cfg.timeout, cfg.min_rate_kib
        self.window_start, self.window_size = time.monotonic(), 0

    def feed(self, chunk: bytes, announced: int) -> None:
        if len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]
            if len(self.head) == HEAD_BYTES:
                self.check_start()
        self.sha256.update(chunk)
        self.size += len(chunk)
        self.tail = chunk[-1:] or self.tail
        self.limits.received = self.size
        self.limits.check(self.size, announced)
        self.window_size += len(chunk)
        now = time.monotonic()
        if now - self.window_start >= self.window:
            if self.window_size < self.min_rate * 1024 * (now - self.window_start):
                raise _Retryable(
                    f"{self.where}: too slow: {self.window_size:,} bytes in the last "
                    f"{now - self.window_start:.0f} s, below [source] min_rate_kib ({self.min_rate:g} KiB/s)"
                )
            self.window_start, self.window_size = now, 0

    def finish(self, announced: int) -> None:
        """Once it is all in: the start of a file shorter than HEAD_BYTES, and that the file is
        whole. Done means proven whole: its bytes are the Content-Length the server announced;
        where it announced none, a text file ends in its line end (CR for a file whose line ends
        are CR only, else LF), so its last row is whole (a gzip, Parquet or zip file proves itself
        whole by its own end)."""
        if len(self.head) < HEAD_BYTES:
            self.check_start()
        if announced and self.size != announced:
            raise CutShort(self.where, self.size, announced)
        line_end = b"\r" if b"\r" in self.head and b"\n" not in self.head else b"\n"
        if not announced and self.text and self.size and self.tail != line_end:
            raise CutShort(self.where, self.size, announced)

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
# isal's stubs declare its error an instance; it is a class (ISA-L's zlib.error).
GZIP_ERRORS: tuple[type[Exception], ...] = (EOFError, OSError, cast(type[Exception], isal_zlib.error))


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
    end-of-stream marker and CRC), and return its header line (without a UTF-8 byte order mark)
    and its number of lines after it; for a .gz longer than GZIP_PROBE inflated, only its start
    is read, and the count is None. Lines end in LF or CRLF, or, where the header line ends in a
    CR alone, in CR (Arrow's csv reader, which converts the file, takes all three)."""
    head = b""
    lf = cr = read = 0
    last = b""
    whole = True  # read to its end
    with open(path, "rb") as raw, gunzipped(raw) if gzipped else raw as stream:
        try:
            while chunk := stream.read(CHUNK):
                if not _LINE_END.search(head) and len(head) < 65536:
                    head += chunk[:65536]
                lf += chunk.count(b"\n")
                cr += chunk.count(b"\r")
                last = chunk[-1:]
                read += len(chunk)
                if gzipped and read >= GZIP_PROBE:
                    whole = False
                    break
        except GZIP_ERRORS as e:
            raise SourceError(f"{where}: truncated or corrupt gzip ({e}); the download is incomplete") from None
    if not head.strip():
        raise SourceError(f"{where}: the file is empty")
    line_end = _LINE_END.search(head)
    if line_end is None:
        raise SourceError(f"{where}: no complete header line in the first 64 KiB")
    try:
        header = head[: line_end.start()].decode("utf-8").removeprefix(BOM)
    except UnicodeDecodeError as e:
        raise SourceError(f"{where}: header is not UTF-8 text: {e}") from None
    ending, lines = (b"\r", cr) if line_end[0] == b"\r" else (b"\n", lf)
    # Lines after the header, a last one without its line end included (blank ones too: this is
    # the upper bound that proves a file cut short; ToParquet counts the rows themselves).
    return header, lines - 1 + (last != ending) if whole else None


# The end of a line: CRLF, LF, or a CR alone (not one that a LF may follow in the next chunk:
# the header is looked for in the first 64 KiB at once).
_LINE_END = re.compile(rb"\r\n|\n|\r(?=[^\n])")
# A UTF-8 byte order mark, as some editors and exports put before the header.
BOM = "\ufeff"


@contextlib.contextmanager
def _get(url: str, where: str, cfg: settings.source) -> Iterator[requests.Response]:
    """One streamed GET of the file as published, with what may heal (connection errors while
    connecting or reading, a 5xx) raised as a retryable error and the rest named; the caller
    reads the status (200 or 404 left to it) and the body."""
    try:
        # No compression on the fly (requests asks for gzip by default, and a server that
        # compresses a text file would hand us bytes that are not the file).
        with requests.get(
            url, stream=True, timeout=cfg.timeout, headers={"Accept-Encoding": "identity"}, hooks={"response": _unread_redirect}
        ) as resp:
            if resp.status_code >= 500:
                raise _Retryable(f"{where}: server error HTTP {resp.status_code}")
            if resp.status_code not in (200, 404):
                raise SourceError(f"{where}: unexpected HTTP {resp.status_code} {resp.reason}")
            yield resp
    except requests.TooManyRedirects as e:
        raise SourceError(f"{where}: too many redirects ({scrub(str(e), [url])})") from None
    except (requests.Timeout, urllib3.exceptions.TimeoutError) as e:
        raise _Retryable(
            f"{where}: {type(e).__name__}: {scrub(str(e), [url])}: no answer within [source] timeout ({cfg.timeout:g} s); "
            f"to wait longer, raise it (--source-timeout){OFFLINE_HINT if isinstance(e, requests.ConnectionError) else ''}"
        ) from None
    except (requests.ConnectionError, urllib3.exceptions.HTTPError) as e:
        raise _Retryable(f"{where}: {type(e).__name__}: {scrub(str(e), [url])}{OFFLINE_HINT}") from None
    except requests.RequestException as e:  # a URL it cannot use (a bad port, no host): never retried
        raise SourceError(f"{where}: {type(e).__name__}: {scrub(str(e), [url])}") from None


def _unread_redirect(resp: requests.Response, **kwargs) -> None:
    """requests reads a redirect's body to its end before it follows the redirect, and an endless
    one never ends: the body is dropped unread (its connection closed) and taken for empty."""
    if resp.is_redirect:
        resp.raw.close()
        resp._content = b""


def _http_chunks(url: str, where: str, cfg: settings.source, found: dict) -> Iterator[tuple[bytes, int]]:
    with _get(url, where, cfg) as resp:
        if resp.status_code == 404:
            raise MonthNotPublished(f"{where}: not published (HTTP 404)")
        expected = int(resp.headers.get("Content-Length") or 0)
        found.update(validators(resp.headers))
        # read1: what has arrived, without waiting for a full chunk (so a trickle is seen);
        # decode_content=False: the bytes exactly as sent, so the sha256 is the file's.
        while chunk := resp.raw.read1(NET_CHUNK, decode_content=False):
            yield chunk, expected


def _http_probe(url: str, where: str, cfg: settings.source) -> Optional[dict[str, str]]:
    # A GET whose body is never read rather than a HEAD: the releases redirect to signed storage
    # URLs, which need not answer HEAD.
    with _get(url, where, cfg) as resp:
        return validators(resp.headers) if resp.status_code == 200 else None


def _file_path(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlparse(url).path)


def _file_chunks(url: str, where: str, cfg: settings.source, found: dict) -> Iterator[tuple[bytes, int]]:
    path = _file_path(url)
    try:
        f: BinaryIO = open(path, "rb")
    except FileNotFoundError:
        raise MonthNotPublished(f"{where}: not published (no such file in the mirror)") from None
    found.update(_file_validators(path))
    with f:
        total = os.fstat(f.fileno()).st_size
        while chunk := f.read(CHUNK):
            yield chunk, total


def _file_probe(url: str, where: str, cfg: settings.source) -> Optional[dict[str, str]]:
    path = _file_path(url)
    return _file_validators(path) if os.path.exists(path) else None


class S3SourceError(SourceError):
    """The S3 source refused a request for a reason other than a missing key (a missing bucket,
    credentials refused or absent, ...): ``why`` in the words of pipeline.targets.s3.reason,
    which never holds a credential."""

    def __init__(self, where: str, bucket: str, why: str):
        self.where, self.bucket, self.why = where, bucket, why
        super().__init__(f"{where}: {why}")


@contextlib.contextmanager
def _s3_answers(url: str, where: str) -> Iterator[None]:
    """The S3 client's errors as the source's: a missing key is not published, in the same line
    as an HTTP 404; anything else the client refused is one line (S3SourceError). The request
    itself was already tried again by the client (retry.s3()), so those are final; what breaks
    while the body streams, which the client does not try again, is retried as a dropped HTTP
    transfer is ([source] attempts)."""
    from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError, ResponseStreamingError

    from pipeline.targets import s3

    bucket = s3.split(url)[0]
    try:
        yield
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == "NoSuchKey":
            raise MonthNotPublished(f"{where}: not published (HTTP 404)") from None
        raise S3SourceError(where, bucket, s3.reason(e, bucket)) from None
    except (ReadTimeoutError, ResponseStreamingError) as e:
        raise _Retryable(f"{where}: {type(e).__name__}: {e}") from None
    except BotoCoreError as e:
        raise S3SourceError(where, bucket, s3.reason(e, bucket)) from None


def _s3_headers(response: dict) -> Mapping[str, str]:
    """The HTTP headers of an S3 answer, as the HTTP source's are read (any case): so its
    validators are the same strings (Content-Length, ETag, Last-Modified) whichever call got them."""
    return requests.structures.CaseInsensitiveDict(response["ResponseMetadata"]["HTTPHeaders"])


def _s3_chunks(url: str, where: str, cfg: settings.source, found: dict) -> Iterator[tuple[bytes, int]]:
    from botocore.exceptions import IncompleteReadError

    from pipeline.targets import s3

    bucket, key = s3.split(url)
    with _s3_answers(url, where):
        response = s3.client().get_object(Bucket=bucket, Key=key)
        headers = _s3_headers(response)
        expected = int(headers.get("Content-Length") or 0)
        found.update(validators(headers))
        with contextlib.closing(response["Body"]) as body:
            while True:
                try:
                    chunk = body.read(NET_CHUNK)
                except IncompleteReadError:  # fewer bytes than announced: _StreamCheck.finish says so, as for HTTP
                    return
                if not chunk:
                    return
                yield chunk, expected


def _s3_probe(url: str, where: str, cfg: settings.source) -> Optional[dict[str, str]]:
    from botocore.exceptions import ClientError

    from pipeline.targets import s3

    bucket, key = s3.split(url)
    with _s3_answers(url, where):
        try:
            return validators(_s3_headers(s3.client().head_object(Bucket=bucket, Key=key)))
        except ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                raise
        # A HEAD's 404 has no body to tell a missing key from a missing bucket; a listing does
        # (NoSuchBucket). Asked only for a month that is not there.
        s3.client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
        return None


@dataclasses.dataclass(frozen=True)
class Transport:
    """How the source's bytes come, by the URL's scheme: ``chunks`` yields one try's (chunk,
    announced size or 0), each as it arrives, after putting the validators in ``found``, or raises
    MonthNotPublished; ``probe`` returns the validators without the body, or None when the file
    is not published. Every check of what arrives (_StreamCheck, _Limits, the content checks)
    is the same for all of them."""

    chunks: Callable[[str, str, settings.source, dict], Iterator[tuple[bytes, int]]]
    probe: Callable[[str, str, settings.source], Optional[dict[str, str]]]


_HTTP = Transport(_http_chunks, _http_probe)
# The one place the transport is decided.
TRANSPORTS = {"http": _HTTP, "https": _HTTP, "file": Transport(_file_chunks, _file_probe), "s3": Transport(_s3_chunks, _s3_probe)}


def transport(url: str, where: str) -> Transport:
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in TRANSPORTS:
        raise SourceError(f"{where}: unsupported URL scheme {scheme!r} (use http(s)://, file:// or s3://)")
    return TRANSPORTS[scheme]


def fetch_file(url: str, dest: str, where: str, progress: Callable[[int, int], None] = lambda done, total: None) -> DownloadRecord:
    """Download ``url`` to ``dest``, retrying what may heal, and check the transfer (the whole
    body, how it starts, the rate); return what we know about the file: its URL as shown, size,
    sha256, and the server's validators (no header: see fetch)."""
    cfg = settings.source()
    chunks_of = transport(url, where).chunks

    found: dict[str, str] = {}
    limits = _Limits(where, cfg)

    def attempt() -> _StreamCheck:
        limits.check()  # the tries before and their backoff count
        check = _StreamCheck(url, where, cfg, limits)
        expected = 0
        with open(dest, "wb") as out:
            for chunk, expected in chunks_of(url, where, cfg, found):
                check.feed(chunk, expected)
                out.write(chunk)
                progress(check.size, expected)
        check.finish(expected)
        return check

    with limits.talking():
        check = retry.call(attempt, attempts=cfg.attempts, backoff=cfg.backoff, setting="[source]")
    # What the server said of this version of the file, so a republished one can be noticed.
    return DownloadRecord(
        url=redact(url),
        size=check.size,
        sha256=check.sha256.hexdigest(),
        etag=found.get("etag", ""),
        last_modified=found.get("last_modified", ""),
    )


def fetch(
    url: str, dest: str, svc: catalog.Service, where: str, progress: Callable[[int, int], None] = lambda done, total: None
) -> DownloadRecord:
    """Download a data file of ``svc`` to ``dest`` and check it (fetch_file, then its header
    and, where it is known here, its row count); return what we know about the file."""
    record = fetch_file(url, dest, where, progress)
    rows: Optional[int]  # None: a csv.gz file read only in part, counted by ToParquet
    if _suffix_of(url) == ".parquet":
        header, rows = _parquet_rows(dest, where)
    else:
        header, rows = _read_through(dest, _suffix_of(url) == ".gz", where)
    catalog.resolve_header(svc, header, where)
    if rows is not None:  # else ToParquet counts them
        catalog.check_rows(svc, rows, where)
    return dataclasses.replace(record, header=header)


def validators(headers: Mapping[str, str]) -> dict[str, str]:
    """What tells one published version of a file from another, as the server states it."""
    return {"size": headers.get("Content-Length", ""), "etag": headers.get("ETag", ""), "last_modified": headers.get("Last-Modified", "")}


def _file_validators(path: str) -> dict[str, str]:
    stat = os.stat(path)
    return {"size": str(stat.st_size), "etag": "", "last_modified": email.utils.formatdate(stat.st_mtime, usegmt=True)}


def published(url: str) -> Optional[dict[str, str]]:
    """The validators of the file the source publishes at ``url`` (see `validators`), without
    downloading it, or None when it is not published (HTTP 404, a key missing from an s3://
    mirror, a file from a file:// one). Any other failure is an error after the [source] tries,
    never a silent None."""
    cfg = settings.source()
    where = f"{redact(url)}: asking whether it is published"
    probe = transport(url, where).probe
    limits = _Limits(where, cfg)

    def ask() -> Optional[dict[str, str]]:
        limits.check()
        return probe(url, where, cfg)

    with limits.talking():
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
            record = fetch(url, tmp, self.svc, where, progress)
        # The data file is in place before its record: a run cut between the two renames leaves
        # the task incomplete (both are its outputs) and the next run fetches again.
        with self.staged(out["meta"]) as tmp:
            record.write(tmp)
        logger.info(
            "%s: downloaded %s bytes in %.1f s, sha256 %s", self.label, f"{record.size:,}", time.monotonic() - started, record.sha256
        )
        self.report(1, 1, "downloaded")
