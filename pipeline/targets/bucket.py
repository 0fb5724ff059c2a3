"""What the object-store lakes (gs://, s3://) share about their URLs."""

from __future__ import annotations


def split(url: str, scheme: str) -> tuple[str, str]:
    """``scheme``bucket/some/key -> ("bucket", "some/key"); a URL of another scheme, or without a
    bucket, is a ValueError naming it."""
    if not url.startswith(scheme):
        raise ValueError(f"{url}: does not start with {scheme}")
    bucket, _, key = url[len(scheme) :].partition("/")
    if not bucket:
        raise ValueError(f"{url}: no bucket name")
    return bucket, key
