"""What the object-store lakes (gs://, s3://, az://) share: their URLs, the completeness of many
objects by one listing, and the shape of their luigi target."""

from __future__ import annotations

import posixpath
from typing import Any, Callable, ClassVar, Iterable

import luigi.target


def split(url: str, scheme: str) -> tuple[str, str]:
    """``scheme``bucket/some/key -> ("bucket", "some/key"); a URL of another scheme, or without a
    bucket, is a ValueError naming it."""
    if not url.startswith(scheme):
        raise ValueError(f"{url}: does not start with {scheme}")
    bucket, _, key = url[len(scheme) :].partition("/")
    if not bucket:
        raise ValueError(f"{url}: no bucket name")
    return bucket, key


def existing(paths: Iterable[str], scheme: str, names_under: Callable[[str, str], set[str]]) -> set[str]:
    """Which of ``paths`` (URLs of ``scheme``) exist, from one listing of their common prefix per
    bucket (not one request per path): what a backfill asking about hundreds of months needs.
    ``names_under(bucket, prefix)`` is the store's listing: the names of the objects under it."""
    by_bucket: dict[str, list[str]] = {}
    for path in paths:
        bucket, name = split(path, scheme)
        by_bucket.setdefault(bucket, []).append(name)
    found: set[str] = set()
    for bucket, names in by_bucket.items():
        listed = names_under(bucket, posixpath.commonprefix(names))
        found.update(f"{scheme}{bucket}/{name}" for name in listed.intersection(names))
    return found


class BucketTarget(luigi.target.FileSystemTarget):
    """An object in a bucket or container (``scheme``bucket/key), written only whole through its
    file system's upload(), read through download(). Each store's target sets ``fs`` (its file
    system: exists, existing, upload, download, remove) and ``scheme``."""

    fs: ClassVar[Any]
    scheme: ClassVar[str]

    def __init__(self, path: str):
        split(path, self.scheme)
        super().__init__(path)

    def open(self, mode: str = "r"):
        raise ValueError(f"{self.path}: {type(self).__name__} is not opened; write with upload(), read with download()")

    @classmethod
    def bulk_exists(cls, targets: list[BucketTarget]) -> list[bool]:
        """One listing for all the objects (see pipeline/completion.py)."""
        found = cls.fs.existing(t.path for t in targets)
        return [t.path in found for t in targets]

    def upload(self, local_path: str, metadata: dict[str, str]) -> Any:
        return self.fs.upload(local_path, self.path, metadata)

    def download(self, local_path: str) -> None:
        self.fs.download(self.path, local_path)
