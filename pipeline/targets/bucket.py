"""What the object-store lakes (gs://, s3://, az://) share: their URLs, and the shape of their
luigi target."""

from __future__ import annotations

from typing import Any, ClassVar

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
