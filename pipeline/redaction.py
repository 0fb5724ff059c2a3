"""One scrubber for secrets: every message that leaves a task passes `scrub`, whatever raised it.

The secrets are what the settings carry: the user part (user name, password, token) and the
query (a signed URL's signature) of `[source] base_url`, and PGPASSWORD when it is set. They
leave a task by three ways, each passed through here once:
- log lines: `install()` (run when the package is imported, pipeline/__init__.py) makes every log record, of any
  logger, a ScrubbedRecord, whose message and traceback come out scrubbed under whatever handlers
  luigi or a user's logging configuration sets up later;
- the explanation luigid keeps of a failure (the visualiser shows it, with no login): what a
  task's `on_failure` returns; `explained` scrubs it (DatasetTask and ZoneShapes use it);
- records and footers: they name the source by `redact(url)`.

A secret is replaced wherever it appears, as written in the URL and percent-decoded. One shorter
than MIN_SECRET characters would turn every word that holds it into ***, so it is scrubbed only
where it appears as a URL's user part, like any URL's user part (`scheme://...@`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import urllib.parse
from typing import Iterable

import luigi.configuration
from luigi.cmdline_parser import CmdlineParser

MIN_SECRET = 4
MASK = "***"
# Any URL's user part, up to the last @ before its path: what an HTTP client quotes of a URL.
_USER_PART = re.compile(r"(?<=://)[^/?#\s]*@")


def redact(url: str) -> str:
    """The URL as logs, errors and records show it: a user name, password or token in its user
    part, and a query string (signed URLs carry their signature there), become ***."""
    parts = urllib.parse.urlsplit(url)
    if not (parts.username or parts.password or parts.query):
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(
        (parts.scheme, ("***@" if "@" in parts.netloc else "") + host, parts.path, MASK if parts.query else "", "")
    )


def secrets_of(url: str) -> set[str]:
    """The secrets ``url`` carries (its user part, each of its user name and password, its
    query and each value in it), each as written and percent-decoded."""
    user_part = url.partition("://")[2].split("/", 1)[0].rpartition("@")[0] if "://" in url else ""
    query = urllib.parse.urlsplit(url).query
    values = [value for _, value in urllib.parse.parse_qsl(query, keep_blank_values=True)]
    found: set[str] = set()
    for secret in (user_part, *user_part.split(":", 1), query, *values):
        found.update((secret, urllib.parse.unquote(secret), urllib.parse.unquote_plus(secret)))
    return {s for s in found if s}


_cache: tuple[tuple, frozenset] = ((), frozenset())
_busy = threading.local()


def configured() -> frozenset[str]:
    """The secrets the settings carry now (see the module's docstring). Building the settings
    costs about 0.7 ms, too much for every log line: they are read again only when what they
    come from changes (the settings files' value, the command line, PGPASSWORD)."""
    global _cache
    from pipeline import settings  # here: settings reads the luigi configuration when imported

    key = (
        luigi.configuration.get_config().get("source", "base_url", ""),
        id(CmdlineParser.get_instance()),
        os.environ.get("PGPASSWORD", ""),
    )
    if key != _cache[0]:
        try:
            base_url = settings.source().base_url
        except Exception:  # settings that cannot be read (their own error says why): the last ones known
            return _cache[1]
        _cache = (key, frozenset({*secrets_of(base_url), *filter(None, key[2:])}))
    return _cache[1]


def scrub(text: str, urls: Iterable[str] = ()) -> str:
    """``text`` without any secret: the configured ones, those of ``urls`` (a URL the caller
    was given, not from the settings), and any URL's user part."""
    secrets = set(configured()).union(*map(secrets_of, urls))
    # Longest first: a password that holds the user name is replaced whole.
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET:
            text = text.replace(secret, MASK)
    return _USER_PART.sub(MASK + "@", text)


class ScrubbedRecord(logging.LogRecord):
    """A log record whose message and traceback come out scrubbed however they are formatted:
    its message when a formatter asks for it (after every filter, which may rewrite it), and
    its traceback text when the formatter stores it. A record of any logger is one (`install`)."""

    def getMessage(self) -> str:
        return _scrub_once(super().getMessage())

    @property
    def exc_text(self):
        return self._exc_text

    @exc_text.setter
    def exc_text(self, text) -> None:
        self._exc_text = _scrub_once(text) if text else text


def _scrub_once(text: str) -> str:
    """scrub(text), but for a record logged while the settings are read for a scrub (which
    holds no secret): that one passes as it is, rather than recursing."""
    if getattr(_busy, "on", False):
        return text
    _busy.on = True
    try:
        return scrub(text)
    finally:
        _busy.on = False


def install() -> None:
    """Make every log record a ScrubbedRecord, from now on, whatever logging configuration
    luigi or the user sets up later (it keeps the record factory)."""
    logging.setLogRecordFactory(ScrubbedRecord)
