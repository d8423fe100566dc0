"""The storage interface every repository backend implements, and the URL opener.

Backends know nothing of lamina's format: they store opaque objects under slash-separated
keys. Writes are atomic: a reader sees either no object or the whole object.
"""

from __future__ import annotations

from .base import InvalidRequest, ObjectInfo, ObjectNotFound, ShortRead, Storage, StorageError
from .open import open_storage

__all__ = [
    "InvalidRequest",
    "ObjectInfo",
    "ObjectNotFound",
    "ShortRead",
    "Storage",
    "StorageError",
    "open_storage",
]
