"""Turn a repository URL into a storage backend."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlparse

from ...errors import UsageError
from .base import Storage


def _s3_endpoint(url: str, query: str) -> str | None:
    """``?endpoint=http://host:port`` of an S3 URL: this repository's endpoint, where it is not
    the one of ``AWS_ENDPOINT_URL`` (the default)."""
    if not query:
        return None
    try:
        options = parse_qs(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise UsageError(f"S3 URL {url!r}: cannot read its query {query!r}") from None
    unknown = sorted(set(options) - {"endpoint"})
    if unknown:
        raise UsageError(f"S3 URL {url!r}: unknown option {unknown[0]!r} (known: endpoint)")
    (endpoint, *more) = options["endpoint"]
    if more or urlparse(endpoint).scheme not in ("http", "https") or not urlparse(endpoint).netloc:
        raise UsageError(
            f"S3 URL {url!r}: endpoint must be one http:// or https:// URL, like "
            "?endpoint=https://s3.example.com"
        )
    return endpoint


def open_storage(url: str, *, create: bool = False) -> Storage:
    """``file:///path``, a plain path, ``s3://bucket/prefix[?endpoint=URL]`` or ``mem://name``
    (tests)."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        from .s3 import S3Storage

        if not parsed.netloc:
            raise UsageError(f"S3 URL needs a bucket: {url!r} (example: s3://bucket/prefix)")
        storage = S3Storage(
            parsed.netloc, unquote(parsed.path), endpoint_url=_s3_endpoint(url, parsed.query)
        )
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
