"""A read-only view of a repository as a tree of paths: what `lamina mount` serves.

    /<cluster>/<namespace>/<volume>/<point-time>-<point-id>/disk.img
                                                           /manifest.json
                                                           /files/...   (the volume's filesystem)
                                                           /files.unavailable  (when it has none)
    /<cluster>/<namespace>/<volume>/latest -> <newest point dir>

With a single point, its directory is the root. Nothing here knows about FUSE: paths in,
``Node``s, names and bytes out, failures as ``OSError`` with an errno, so the FUSE adapter
stays thin and the whole tree is testable without a mount.

``PointFiles`` is the filesystem inside one point, opened lazily through the lazy image
reader; the file browser, `lamina files` and extraction use it directly.

The view knows the repository only through ``PointSource`` (list the points, find one, open
one's image), defined here and satisfied by the service: the view never calls back into
anything wider, so the service can build views without a circle.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from ..errors import LaminaError
from ..fsread import Entry, FileSystem, open_filesystem
from ..fsread.errors import FsReadError, NotADirectory
from .image import DEFAULT_CACHE, DEFAULT_READAHEAD, ImageReader, ImageReadError
from .pipelines import VolumeRef

log = logging.getLogger("lamina.fsview")


class ViewPoint(Protocol):
    """What the view shows of a point."""

    @property
    def id(self) -> str: ...
    @property
    def volume(self) -> VolumeRef: ...
    @property
    def created(self) -> str: ...
    @property
    def capacity(self) -> int: ...
    @property
    def manifest(self) -> dict[str, Any]: ...


class PointSource(Protocol):
    """All the view asks of the repository (the service satisfies it)."""

    def list_points(self) -> Sequence[ViewPoint]: ...

    def get_point(self, ref: str) -> ViewPoint: ...

    def open_image(
        self, point_ref: str, *, cache_bytes: int, readahead_bytes: int
    ) -> ImageReader: ...


DISK_IMAGE = "disk.img"
MANIFEST = "manifest.json"
FILES = "files"
FILES_UNAVAILABLE = "files.unavailable"
LATEST = "latest"

_TYPE_BITS = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "fifo": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
    "chardev": stat.S_IFCHR,
    "blockdev": stat.S_IFBLK,
}
# Entries of one point kept after a lookup or a listing (an image never changes).
ENTRY_CACHE_SIZE = 50_000
LISTING_CACHE_ENTRIES = 200_000  # entries of directory listings kept, all directories together


class FilesUnavailable(LaminaError):
    """The volume of a point holds no filesystem lamina can read."""


def _enoent(path: str) -> OSError:
    return OSError(errno.ENOENT, "no such file or directory", path)


T = TypeVar("T")


@functools.lru_cache(maxsize=4096)
def point_time(created: str) -> str:
    """'2026-11-22T05:31:43.123456Z' -> '2026-11-22T053143Z' (sorts like the time)."""
    return _parse_time(created).strftime("%Y-%m-%dT%H%M%SZ")


def _parse_time(created: str) -> datetime:
    return datetime.fromisoformat(created.replace("Z", "+00:00"))


@functools.lru_cache(maxsize=4096)
def time_ns(created: str) -> int:
    dt = _parse_time(created)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def point_dir_name(point: ViewPoint) -> str:
    return f"{point_time(point.created)}-{point.id}"


def _safe_name(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


@dataclass(frozen=True)
class Node:
    """What ``stat`` says about one path of the view."""

    kind: str  # file, dir, symlink, fifo, socket, chardev, blockdev
    mode: int  # st_mode: type bits and permissions
    size: int
    mtime_ns: int
    atime_ns: int
    ctime_ns: int
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    link_target: str | None = None
    blocks: int = -1  # st_blocks; -1: derived from the size
    rdev: int = 0

    @property
    def st_blocks(self) -> int:
        return self.blocks if self.blocks >= 0 else (self.size + 511) // 512

    @classmethod
    def synthetic(
        cls,
        kind: str,
        *,
        size: int = 0,
        time_ns: int,
        link_target: str | None = None,
        uid: int = 0,
        gid: int = 0,
    ) -> Node:
        perms = {"dir": 0o555, "symlink": 0o777}.get(kind, 0o444)
        return cls(
            kind=kind,
            mode=_TYPE_BITS[kind] | perms,
            size=size,
            mtime_ns=time_ns,
            atime_ns=time_ns,
            ctime_ns=time_ns,
            uid=uid,
            gid=gid,
            nlink=2 if kind == "dir" else 1,
            link_target=link_target,
        )

    @classmethod
    def of_entry(cls, entry: Entry) -> Node:
        return cls(
            kind=entry.kind,
            mode=_TYPE_BITS.get(entry.kind, stat.S_IFREG) | stat.S_IMODE(entry.mode),
            blocks=entry.blocks,
            rdev=entry.rdev,
            size=entry.size,
            mtime_ns=entry.mtime_ns,
            atime_ns=entry.atime_ns,
            ctime_ns=entry.ctime_ns,
            uid=entry.uid,
            gid=entry.gid,
            nlink=max(entry.nlink, 1),
            link_target=entry.link_target,
        )


def normalize(path: str) -> str:
    """'/a//b/' -> '/a/b'. Never resolves '..': a view path names exactly one entry."""
    parts = [p for p in path.split("/") if p and p != "."]
    return "/" + "/".join(parts)


class PointFiles:
    """The filesystem inside one point's volume, opened on first use. Thread-safe."""

    def __init__(
        self,
        source: PointSource,
        point: ViewPoint,
        *,
        cache_bytes: int = DEFAULT_CACHE,
        readahead_bytes: int = DEFAULT_READAHEAD,
    ) -> None:
        self.source = source
        self.point = point
        self.cache_bytes = cache_bytes
        self.readahead_bytes = readahead_bytes
        self._reader: ImageReader | None = None
        self._fs: FileSystem | None = None
        self._unavailable: str | None = None
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._dirs: OrderedDict[str, list[Entry]] = OrderedDict()
        self._dirs_entries = 0
        self._cache_lock = threading.Lock()

    # ------------------------------------------------------------------ opening

    @property
    def reader(self) -> ImageReader:
        with self._lock:
            if self._reader is None:
                self._reader = self.source.open_image(
                    self.point.id,
                    cache_bytes=self.cache_bytes,
                    readahead_bytes=self.readahead_bytes,
                )
            return self._reader

    @property
    def is_open(self) -> bool:
        return self._reader is not None

    def filesystem(self) -> FileSystem:
        """The parsed filesystem, or FilesUnavailable saying why there is none."""
        reader = self.reader
        with self._lock:
            if self._fs is not None:
                return self._fs
            if self._unavailable is None:
                started = time.monotonic()
                try:
                    self._fs = open_filesystem(reader)
                except LaminaError as e:
                    self._unavailable = str(e)
                except Exception as e:  # a parser bug must not take the mount down
                    log.exception("cannot open the filesystem of point %s", self.point.id)
                    self._unavailable = f"the filesystem cannot be read: {type(e).__name__}: {e}"
                else:
                    log.info(
                        "point %s: %s filesystem opened in %.3f s",
                        self.point.id,
                        self._fs.kind,
                        time.monotonic() - started,
                    )
                    return self._fs
            raise FilesUnavailable(self._unavailable)

    def unavailable_reason(self) -> str | None:
        """None when the volume has a readable filesystem, else why not."""
        try:
            self.filesystem()
        except FilesUnavailable as e:
            return str(e)
        return None

    def close(self) -> None:
        """Release the reader (and its repository lock); the next use opens it again."""
        with self._lock:
            if self._reader is not None:
                self._reader.close()
            self._reader = None
            self._fs = None
            self._unavailable = None

    # ------------------------------------------------------------------ queries

    def lookup(self, path: str) -> Entry:
        """The entry at ``path``; no symlink is followed. Raises FileNotFound when absent."""
        path = normalize(path)
        with self._cache_lock:
            entry = self._entries.get(path)
            if entry is not None:
                self._entries.move_to_end(path)
                return entry
        fs = self.filesystem()
        entry = fs.root() if path == "/" else fs.lookup(path)
        self._remember(path, entry)
        return entry

    def listdir(self, path: str) -> list[Entry]:
        """The entries of a directory, sorted by name, without '.' and '..'."""
        path = normalize(path)
        with self._cache_lock:
            cached = self._dirs.get(path)
            if cached is not None:
                self._dirs.move_to_end(path)
                return cached
        children = self.children(self.lookup(path))
        with self._cache_lock:
            if path not in self._dirs:
                self._dirs[path] = children
                self._dirs_entries += len(children)
            while self._dirs_entries > LISTING_CACHE_ENTRIES and len(self._dirs) > 1:
                _, dropped = self._dirs.popitem(last=False)
                self._dirs_entries -= len(dropped)
        prefix = path.rstrip("/")
        for child in children:
            if _safe_name(child.name):
                self._remember(f"{prefix}/{child.name}", child)
        return children

    def children(self, entry: Entry) -> list[Entry]:
        """The entries of a directory entry, sorted by name, without '.' and '..'."""
        if entry.kind != "dir":
            raise NotADirectory(f"{entry.name} is not a directory")
        children = self.filesystem().listdir(entry)
        return sorted((c for c in children if c.name not in (".", "..")), key=lambda c: c.name)

    def read(self, entry: Entry, offset: int, length: int) -> bytes:
        if offset >= entry.size or length <= 0:
            return b""
        return self.filesystem().read(entry, offset, min(length, entry.size - offset))

    def readlink(self, entry: Entry) -> str:
        if entry.link_target is not None:
            return entry.link_target
        return self.filesystem().readlink(entry)

    def _remember(self, path: str, entry: Entry) -> None:
        with self._cache_lock:
            self._entries[path] = entry
            while len(self._entries) > ENTRY_CACHE_SIZE:
                self._entries.popitem(last=False)


class OpenFile:
    """An open file of the view: resolved once at open, then read by offset."""

    def __init__(self, path: str, node: Node) -> None:
        self.path = path
        self.node = node

    def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError


class _BytesFile(OpenFile):
    def __init__(self, path: str, node: Node, data: bytes) -> None:
        super().__init__(path, node)
        self.data = data

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


class _DiskFile(OpenFile):
    def __init__(self, path: str, node: Node, files: PointFiles) -> None:
        super().__init__(path, node)
        self.files = files

    def read(self, offset: int, length: int) -> bytes:
        try:
            return self.files.reader.pread(length, offset)
        except ImageReadError as e:
            log.error(
                "EIO: %s [%d, +%d): volume offset %d: %s", self.path, offset, length, e.offset, e
            )
            raise OSError(errno.EIO, str(e), self.path) from None


class _InnerFile(OpenFile):
    def __init__(self, path: str, node: Node, files: PointFiles, entry: Entry) -> None:
        super().__init__(path, node)
        self.files = files
        self.entry = entry

    def read(self, offset: int, length: int) -> bytes:
        try:
            return self.files.read(self.entry, offset, length)
        except ImageReadError as e:
            log.error(
                "EIO: %s [%d, +%d): volume offset %d: %s", self.path, offset, length, e.offset, e
            )
            raise OSError(errno.EIO, str(e), self.path) from None
        except FsReadError as e:
            raise OSError(e.errno, str(e), self.path) from None
        except Exception as e:  # a parser bug: this read fails, the mount goes on
            log.exception("cannot read %s at %d", self.path, offset)
            raise OSError(errno.EIO, f"{type(e).__name__}: {e}", self.path) from None


@dataclass
class _Catalog:
    """Which points exist, arranged as cluster -> namespace -> volume -> points (oldest first)."""

    tree: dict[str, dict[str, dict[str, list[ViewPoint]]]]
    by_dir: dict[tuple[str, str, str, str], ViewPoint]  # (cluster, ns, volume, dir name)
    loaded: float

    @classmethod
    def build(cls, points: Iterable[ViewPoint]) -> _Catalog:
        tree: dict[str, dict[str, dict[str, list[ViewPoint]]]] = {}
        for p in points:
            v = p.volume
            if not all(_safe_name(n) for n in (v.cluster, v.namespace, v.name)):
                log.warning("volume %r has a name that cannot be a path; not shown", str(v))
                continue
            tree.setdefault(v.cluster, {}).setdefault(v.namespace, {}).setdefault(v.name, [])
            tree[v.cluster][v.namespace][v.name].append(p)
        by_dir: dict[tuple[str, str, str, str], ViewPoint] = {}
        for cluster, namespaces in tree.items():
            for namespace, volumes in namespaces.items():
                for volume, points_of in volumes.items():
                    points_of.sort(key=lambda p: (p.created, p.id))
                    for p in points_of:
                        by_dir[(cluster, namespace, volume, point_dir_name(p))] = p
        return cls(tree, by_dir, time.monotonic())


class RepositoryView:
    """The read-only tree of a repository (or of one point). Thread-safe.

    Memory: each opened point keeps an image reader; ``cache_bytes`` is shared among the
    opened readers (their piece caches are resized as points open).
    """

    def __init__(
        self,
        source: PointSource,
        *,
        point: str | None = None,
        cache_bytes: int = DEFAULT_CACHE,
        readahead_bytes: int = DEFAULT_READAHEAD,
        refresh_seconds: float = 30.0,
    ) -> None:
        self.source = source
        self.cache_bytes = cache_bytes
        self.readahead_bytes = readahead_bytes
        self.refresh_seconds = refresh_seconds
        self.uid = 0
        self.gid = 0
        self._points: dict[str, PointFiles] = {}
        self._lock = threading.Lock()
        self._catalog: _Catalog | None = None
        self.single: ViewPoint | None = source.get_point(point) if point else None
        if self.single is None:
            self._catalog = _Catalog.build(source.list_points())
        self.mounted_ns = time.time_ns()

    # ------------------------------------------------------------------ catalog

    def _catalog_now(self, *, refresh: bool = False) -> _Catalog:
        """The catalog; listed again when ``refresh`` and older than ``refresh_seconds``."""
        with self._lock:
            catalog = self._catalog
            assert catalog is not None
            stale = time.monotonic() - catalog.loaded > self.refresh_seconds
        if refresh and stale:
            fresh = _Catalog.build(self.source.list_points())
            with self._lock:
                self._catalog = catalog = fresh
        return catalog

    def _tree(self, *, refresh: bool = False) -> dict[str, dict[str, dict[str, list[ViewPoint]]]]:
        return self._catalog_now(refresh=refresh).tree

    def _volume_points(self, parts: list[str], *, refresh: bool = False) -> list[ViewPoint]:
        try:
            return self._tree(refresh=refresh)[parts[0]][parts[1]][parts[2]]
        except KeyError:
            if not refresh:
                return self._volume_points(parts, refresh=True)
            raise _enoent("/" + "/".join(parts)) from None

    def point_files(self, point: ViewPoint) -> PointFiles:
        with self._lock:
            files = self._points.get(point.id)
            if files is None:
                files = self._points[point.id] = PointFiles(
                    self.source,
                    point,
                    cache_bytes=self.cache_bytes,
                    readahead_bytes=self.readahead_bytes,
                )
                share = max(self.cache_bytes // len(self._points), 16 * 1024 * 1024)
                for other in self._points.values():
                    other.cache_bytes = share
                    if other.is_open:
                        other.reader.cache_limit = share
            return files

    def close(self) -> None:
        with self._lock:
            points = list(self._points.values())
            self._points.clear()
        for files in points:
            files.close()

    # ------------------------------------------------------------------ resolving paths

    def _split(self, path: str) -> tuple[ViewPoint | None, list[str], list[str]]:
        """(point, path to the point dir, parts inside the point dir); point None above it."""
        parts = normalize(path).split("/")[1:] if normalize(path) != "/" else []
        if self.single is not None:
            return self.single, [], parts
        if len(parts) > 4 and parts[3] == LATEST:
            raise _enoent(path)  # the kernel follows the link itself; the view never does
        if len(parts) < 4 or parts[3] == LATEST:
            return None, parts, []
        key = (parts[0], parts[1], parts[2], parts[3])
        for refresh in (False, True):  # a point made since the last look: list again
            catalog = self._catalog_now(refresh=refresh)
            point = catalog.by_dir.get(key)
            if point is not None:
                return point, parts[:4], parts[4:]
        raise _enoent(path)

    def stat(self, path: str) -> Node:
        point, above, inside = self._split(path)
        if point is None:
            return self._stat_above(above)
        return self._stat_point(point, inside, path)

    def listdir(self, path: str) -> list[str]:
        """Names in a directory, sorted."""
        point, above, inside = self._split(path)
        if point is None:
            return self._list_above(above)
        files = self.point_files(point)
        if not inside:
            names = [DISK_IMAGE, MANIFEST]
            names.append(FILES if files.unavailable_reason() is None else FILES_UNAVAILABLE)
            return sorted(names)
        if inside[0] != FILES:
            node = self._stat_point(point, inside, path)
            raise OSError(errno.ENOTDIR, "not a directory", path) if node else _enoent(path)
        entries = self._inner(files, path, lambda: files.listdir("/" + "/".join(inside[1:])))
        return [e.name for e in entries if _safe_name(e.name)]

    def readlink(self, path: str) -> str:
        node = self.stat(path)
        if node.kind != "symlink" or node.link_target is None:
            raise OSError(errno.EINVAL, "not a symbolic link", path)
        return node.link_target

    def open(self, path: str) -> OpenFile:
        point, _, inside = self._split(path)
        node = self.stat(path)
        if node.kind == "dir":
            raise OSError(errno.EISDIR, "is a directory", path)
        if node.kind != "file" or point is None:
            raise OSError(errno.EACCES, "not a regular file", path)
        files = self.point_files(point)
        if inside == [DISK_IMAGE]:
            return _DiskFile(path, node, files)
        if inside == [MANIFEST]:
            return _BytesFile(path, node, self._manifest_bytes(point))
        if inside == [FILES_UNAVAILABLE]:
            return _BytesFile(path, node, self._unavailable_text(files))
        entry = self._inner(files, path, lambda: files.lookup("/" + "/".join(inside[1:])))
        return _InnerFile(path, node, files, entry)

    # ------------------------------------------------------------------ above the points

    def _stat_above(self, parts: list[str]) -> Node:
        tree = self._tree()
        if not parts:
            newest = [
                p.created
                for ns in tree.values()
                for vs in ns.values()
                for ps in vs.values()
                for p in ps
            ]
            return self._dir_node(max(newest) if newest else None)
        if len(parts) == 4:  # <volume>/latest
            points = self._volume_points(parts[:3])
            target = point_dir_name(points[-1])
            return Node.synthetic(
                "symlink",
                size=len(target),
                time_ns=time_ns(points[-1].created),
                link_target=target,
                uid=self.uid,
                gid=self.gid,
            )
        try:
            level: object = tree
            for name in parts:
                assert isinstance(level, dict)
                level = level[name]
        except KeyError:
            if len(parts) == 3:
                self._volume_points(parts, refresh=True)  # a volume backed up since the last look
                return self._stat_above(parts)
            raise _enoent("/" + "/".join(parts)) from None
        return self._dir_node(self._newest(level))

    def _newest(self, level: object) -> str | None:
        if isinstance(level, list):
            return str(level[-1].created) if level else None
        assert isinstance(level, dict)
        times = [t for sub in level.values() if (t := self._newest(sub))]
        return max(times) if times else None

    def _dir_node(self, created: str | None) -> Node:
        when = time_ns(created) if created else self.mounted_ns
        return Node.synthetic("dir", time_ns=when, uid=self.uid, gid=self.gid)

    def _list_above(self, parts: list[str]) -> list[str]:
        tree = self._tree(refresh=True)
        if len(parts) == 3:
            points = self._volume_points(parts, refresh=True)
            return sorted([point_dir_name(p) for p in points] + [LATEST])
        if len(parts) == 4:
            raise OSError(errno.ENOTDIR, "not a directory", "/" + "/".join(parts))
        level: object = tree
        try:
            for name in parts:
                assert isinstance(level, dict)
                level = level[name]
        except KeyError:
            raise _enoent("/" + "/".join(parts)) from None
        assert isinstance(level, dict)
        return sorted(level)

    # ------------------------------------------------------------------ inside a point

    def _stat_point(self, point: ViewPoint, inside: list[str], path: str) -> Node:
        created = time_ns(point.created)
        if not inside:
            return Node.synthetic("dir", time_ns=created, uid=self.uid, gid=self.gid)
        name = inside[0]
        if name == DISK_IMAGE and len(inside) == 1:
            return Node.synthetic(
                "file", size=point.capacity, time_ns=created, uid=self.uid, gid=self.gid
            )
        if name == MANIFEST and len(inside) == 1:
            size = len(self._manifest_bytes(point))
            return Node.synthetic("file", size=size, time_ns=created, uid=self.uid, gid=self.gid)
        if name == FILES_UNAVAILABLE and len(inside) == 1:
            files = self.point_files(point)
            if files.unavailable_reason() is None:
                raise _enoent(path)
            size = len(self._unavailable_text(files))
            return Node.synthetic("file", size=size, time_ns=created, uid=self.uid, gid=self.gid)
        if name == FILES:
            files = self.point_files(point)
            if files.unavailable_reason() is not None:
                raise _enoent(path)
            entry = self._inner(files, path, lambda: files.lookup("/" + "/".join(inside[1:])))
            return Node.of_entry(entry)
        if len(inside) > 1 and name in (DISK_IMAGE, MANIFEST, FILES_UNAVAILABLE):
            raise OSError(errno.ENOTDIR, "not a directory", path)
        raise _enoent(path)

    @staticmethod
    def _inner(files: PointFiles, path: str, call: Callable[[], T]) -> T:
        """Run a query on a point's filesystem; failures become OSError with an errno."""
        try:
            return call()
        except ImageReadError as e:
            log.error(
                "EIO: %s: volume offset %d of point %s: %s", path, e.offset, files.point.id, e
            )
            raise OSError(errno.EIO, str(e), path) from None
        except FilesUnavailable:
            raise _enoent(path) from None
        except FsReadError as e:
            raise OSError(e.errno, str(e), path) from None
        except OSError:
            raise
        except Exception as e:  # a parser bug: this path fails, the mount goes on
            log.exception("cannot read %s", path)
            raise OSError(errno.EIO, f"{type(e).__name__}: {e}", path) from None

    @staticmethod
    def _manifest_bytes(point: ViewPoint) -> bytes:
        return (json.dumps(point.manifest, indent=2, sort_keys=True) + "\n").encode()

    @staticmethod
    def _unavailable_text(files: PointFiles) -> bytes:
        return (f"{files.unavailable_reason()}\n").encode()
