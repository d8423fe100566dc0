"""Turn a repository URL into a storage backend."""

from __future__ import annotations

from urllib.parse import unquote, urlparse

from ...errors import UsageError
from .base import Storage


def open_storage(url: str, *, create: bool = False) -> Storage:
    """``file:///path``, a plain path, ``s3://bucket/prefix`` or ``mem://name`` (tests)."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        from .s3 import S3Storage

        if not parsed.netloc:
            raise UsageError(f"S3 URL needs a bucket: {url!r} (example: s3://bucket/prefix)")
        storage = S3Storage(parsed.netloc, unquote(parsed.path))
        if create:
            storage.create_bucket()
        return storage
    if parsed.scheme == "mem":
        from .memory import MemoryStorage

        return _memory_registry.setdefault(url, MemoryStorage(url))
    if parsed.scheme == "file":
        from .local import LocalStorage

        return LocalStorage(unquote(parsed.path), create=create)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise UsageError(f"unknown repository URL scheme {parsed.scheme!r} in {url!r}")
    from .local import LocalStorage

    return LocalStorage(url, create=create)


_memory_registry: dict[str, Storage] = {}
