"""A local cache of repository objects that never change, so start-up skips most GETs.

One folder per repository id (``$XDG_CACHE_HOME/lamina/<repo-id>/``, or
``$LAMINA_CACHE_DIR/<repo-id>/``) holds copies of index segments, extent maps, fingerprints
and manifests exactly as they were downloaded. The cache is checked, never trusted:

* every cache file carries its object key, a tag and a BLAKE3 checksum of all three; a file
  that fails them is removed and the object fetched afresh;
* its caller decodes a cached object exactly as a fresh download (envelope checksum or AEAD
  tag), and a copy that fails is removed and replaced;
* which keys may be used is decided by the repository (docs/format.md, "Local cache"): a
  segment only while ``index/`` lists it, a map or fingerprints only while a current
  manifest names them, a manifest only under the generation it was read in.

Its size is bounded (``LAMINA_CACHE_SIZE``, default 1 GiB): the least recently used files
go first. ``LAMINA_CACHE=off`` turns it off. It only serves remote repositories (S3): a
local folder is as fast as the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import threading
from pathlib import Path

import blake3

from ..errors import UsageError
from ..units import parse_size

log = logging.getLogger(__name__)

CACHE_ENV = "LAMINA_CACHE"  # "off" (or "0", "no") turns the cache off
CACHE_DIR_ENV = "LAMINA_CACHE_DIR"  # the folder holding one cache folder per repository
CACHE_SIZE_ENV = "LAMINA_CACHE_SIZE"  # the bound on one repository's cache, e.g. 512MiB
DEFAULT_MAX_BYTES = 1024**3
KINDS = ("index", "maps", "manifests")  # the key prefixes whose objects may be cached
_MAGIC = b"lamina-cache 1\n"
_CHECKSUM_SIZE = 16
_REPO_ID = re.compile(r"[0-9a-f]{8,64}")


def cache_root() -> Path | None:
    """The folder of all repository caches, or None when the cache is turned off."""
    if os.environ.get(CACHE_ENV, "").strip().lower() in ("off", "0", "no", "false"):
        return None
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "lamina"


def max_cache_bytes() -> int:
    text = os.environ.get(CACHE_SIZE_ENV)
    if not text:
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(text)
    except UsageError:
        raise UsageError(
            f"{CACHE_SIZE_ENV} is not a size: {text.strip()[:40]!r} (examples: 512MiB, 2GiB)"
        ) from None


def open_cache(repo_id: str, url: str) -> ObjectCache | None:
    """The cache of one repository, or None (turned off, not remote, or not usable)."""
    if not url.startswith("s3://"):
        return None
    root = cache_root()
    # The id comes from the repository's config: it names a folder only when it is plain hex.
    if root is None or not _REPO_ID.fullmatch(repo_id):
        return None
    max_bytes = max_cache_bytes()
    if max_bytes <= 0:
        return None
    try:
        return ObjectCache(root / repo_id, max_bytes)
    except OSError as e:
        log.warning("running without the local cache: cannot use %s: %s", root, e.strerror)
        return None


def _checksum(key: bytes, tag: bytes, data: bytes) -> bytes:
    hasher = blake3.blake3()
    for part in (key, b"\n", tag, b"\n", data):
        hasher.update(part)
    return hasher.digest(_CHECKSUM_SIZE)


class ObjectCache:
    """Copies of repository objects in a folder, bounded in size (least recently used go)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        for kind in KINDS:
            (folder / kind).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        # Summed from the folder at the first write, not here: a reader never needs it, and
        # a cache of 30,000 manifests takes a stat of each (0.3 s of a listing's 0.8 s).
        self._size: int | None = None
        self.hits = 0
        self.misses = 0
        self.rejected = 0  # cache files that failed a check and were removed

    def _path(self, key: str) -> Path | None:
        kind = key.split("/", 1)[0]
        if kind not in KINDS:
            return None
        # Keys come from the repository: hashed, none can name a path outside the folder.
        return (
            self.folder / kind / hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
        )

    def get(self, key: str, tag: str = "") -> bytes | None:
        """The object cached under ``key`` with ``tag``, or None. A damaged file is removed."""
        path = self._path(key)
        if path is None:
            return None
        try:
            blob = path.read_bytes()
        except OSError:
            self.misses += 1
            return None
        data = self._parse(blob, key, tag)
        if data is None:
            self.discard(key)
            self.misses += 1
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: evicted last
        self.hits += 1
        return data

    def _parse(self, blob: bytes, key: str, tag: str) -> bytes | None:
        """The data of a cache file when its header names ``key`` and ``tag`` and its checksum
        holds; None otherwise (a file from another tag, a torn or damaged file)."""
        if not blob.startswith(_MAGIC):
            self.rejected += 1
            return None
        rest = blob[len(_MAGIC) :]
        parts = rest.split(b"\n", 2)
        if len(parts) != 3 or len(parts[2]) < _CHECKSUM_SIZE:
            self.rejected += 1
            return None
        key_bytes, tag_bytes, body = parts
        data, checksum = body[:-_CHECKSUM_SIZE], body[-_CHECKSUM_SIZE:]
        if checksum != _checksum(key_bytes, tag_bytes, data):
            self.rejected += 1
            return None
        if key_bytes != key.encode("utf-8", "surrogateescape") or tag_bytes != tag.encode():
            return None  # another manifest generation (or a hash collision): just not ours
        return data

    def put(self, key: str, data: bytes | bytearray, tag: str = "") -> None:
        """Keep a copy of ``data``; written whole or not at all (never a torn file)."""
        path = self._path(key)
        if path is None or "\n" in tag or len(data) > self.max_bytes // 4:
            return
        key_bytes = key.encode("utf-8", "surrogateescape")
        if b"\n" in key_bytes:
            return
        record = b"".join(
            [
                _MAGIC,
                key_bytes,
                b"\n",
                tag.encode(),
                b"\n",
                data,
                _checksum(key_bytes, tag.encode(), bytes(data)),
            ]
        )
        try:
            old = path.stat().st_size if path.exists() else 0
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(record)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as e:  # a full or read-only disk costs speed, never a backup
            log.debug("cannot cache %s: %s", key, e.strerror)
            return
        with self._lock:
            if self._size is None:
                self._size = sum(size for _path, size, _used in self._files())
            else:
                self._size += len(record) - old
            over = self._size > self.max_bytes
        if over:
            self._evict()

    def discard(self, key: str) -> None:
        path = self._path(key)
        if path is None:
            return
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            return
        with self._lock:
            if self._size is not None:
                self._size -= size

    def retain(self, kind: str, present: set[str]) -> int:
        """Remove cached objects of ``kind`` (a key prefix) whose key is not in ``present``
        (a full listing of that prefix). Returns how many went."""
        keep = {p.name for key in present if (p := self._path(key)) is not None}
        removed = 0
        for path, size, _used in self._files(kind):
            if path.name not in keep:
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
                    with self._lock:
                        if self._size is not None:
                            self._size -= size
        return removed

    def _files(self, kind: str | None = None) -> list[tuple[Path, int, float]]:
        found = []
        for k in (kind,) if kind else KINDS:
            try:
                entries = list(os.scandir(self.folder / k))
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(".tmp-"):
                    continue
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    found.append((Path(entry.path), st.st_size, st.st_mtime))
        return found

    def _evict(self) -> None:
        """Remove the least recently used files until the cache is below 90% of its bound.
        Other processes share the folder: the sizes are read from it, not remembered."""
        files = sorted(self._files(), key=lambda f: f[2])
        total = sum(size for _path, size, _used in files)
        target = self.max_bytes * 9 // 10
        for path, size, _used in files:
            if total <= target:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
        with self._lock:
            self._size = total
