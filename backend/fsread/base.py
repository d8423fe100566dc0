"""What ext4 and xfs share: path walking, listing, caches and assembling file contents."""

from __future__ import annotations

import stat
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from .api import Entry, decode_name, encode_name, kind_of_mode
from .blockcache import MAX_DATA_READ, BlockReader
from .errors import (
    CorruptFilesystem,
    FileNotFound,
    InvalidRange,
    NotADirectory,
    NotARegularFile,
    NotASymlink,
)

MAX_SYMLINK = 4096
MAX_DIRECTORY_SIZE = 4 << 30  # larger is damage: bounds the work a listing can cause
MAX_PATH_DEPTH = 4096
BILLION = 1_000_000_000
MAX_READ_GAP = 64 * 1024  # read through gaps this small rather than issue another request


@dataclass(frozen=True, slots=True)
class Run:
    """``count`` blocks of a file from logical block ``logical``, stored at byte ``disk``."""

    logical: int
    count: int
    disk: int


@dataclass(slots=True)
class Inode:
    """The stat fields of an on-disk inode; each filesystem adds what it needs to map data."""

    number: int
    mode: int
    kind: str
    size: int
    uid: int
    gid: int
    nlink: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int
    blocks: int


K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A small thread-safe least-recently-used map."""

    def __init__(self, capacity: int) -> None:
        self._items: OrderedDict[K, V] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)


InodeT = TypeVar("InodeT", bound=Inode)


class BaseFileSystem(Generic[InodeT]):
    """Generic parts of a reader; subclasses parse the on-disk structures."""

    kind = ""
    label = ""
    uuid = ""
    block_size = 4096
    root_inode = 0

    def __init__(self, reader: BlockReader) -> None:
        self.reader = reader
        self._inodes: LRU[int, InodeT] = LRU(8192)
        self._dirs: LRU[int, dict[bytes, int]] = LRU(256)

    # --------------------------------------------------------------- for subclasses

    def _load_inode(self, number: int) -> InodeT:
        raise NotImplementedError

    def _dir_entries(self, inode: InodeT) -> Iterator[tuple[bytes, int]]:
        """(name, inode number) of every entry but '.' and '..', in on-disk order."""
        raise NotImplementedError

    def _data_runs(self, inode: InodeT, first: int, end: int) -> Iterator[Run]:
        """Written blocks of a file in logical order, covering at least [first, end)."""
        raise NotImplementedError

    def _inline_content(self, inode: InodeT) -> bytes | None:
        """The contents of a file stored inside its inode, or None when kept in blocks."""
        return None

    def _symlink_target(self, inode: InodeT) -> bytes:
        raise NotImplementedError

    def _check_readable(self, inode: InodeT) -> None:
        """Raise when a file's contents cannot be read (encrypted, on another device, ...)."""

    # --------------------------------------------------------------- caches

    def inode(self, number: int) -> InodeT:
        cached = self._inodes.get(number)
        if cached is not None:
            return cached
        loaded = self._load_inode(number)
        self._inodes.put(number, loaded)
        return loaded

    def _children(self, directory: InodeT) -> dict[bytes, int]:
        cached = self._dirs.get(directory.number)
        if cached is not None:
            return cached
        children: dict[bytes, int] = {}
        for name, number in self._dir_entries(directory):
            children.setdefault(name, number)
        self._dirs.put(directory.number, children)
        return children

    # --------------------------------------------------------------- public interface

    def entry(self, name: str, inode: InodeT) -> Entry:
        target = None
        if inode.kind == "symlink":
            target = decode_name(self._symlink_target(inode))
        return Entry(
            name=name,
            kind=inode.kind,
            inode=inode.number,
            size=inode.size,
            mode=inode.mode,
            uid=inode.uid,
            gid=inode.gid,
            nlink=inode.nlink,
            mtime_ns=inode.mtime_ns,
            atime_ns=inode.atime_ns,
            ctime_ns=inode.ctime_ns,
            link_target=target,
            rdev=inode.rdev,
            blocks=inode.blocks,
        )

    def root(self) -> Entry:
        root = self.inode(self.root_inode)
        if root.kind != "dir":
            raise CorruptFilesystem(f"the root inode {self.root_inode} is not a directory")
        return self.entry("", root)

    def lookup(self, path: str) -> Entry:
        """The entry at ``path`` ('/a/b'). Symlinks are never followed, in any component.

        '.' and '..' are resolved by name: without symlinks that is exact.
        """
        parts = [part for part in path.split("/") if part]
        if len(parts) > MAX_PATH_DEPTH:
            raise FileNotFound(f"{path}: path has too many components")
        stack: list[tuple[str, InodeT]] = [("", self.inode(self.root_inode))]
        for part in parts:
            current = stack[-1][1]
            if current.kind != "dir":
                raise NotADirectory(f"{path}: {_joined(stack)} is not a directory")
            if part == ".":
                continue
            if part == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            number = self._children(current).get(encode_name(part))
            if number is None:
                raise FileNotFound(f"{path}: no such file or directory")
            stack.append((part, self.inode(number)))
        name, found = stack[-1]
        if path.endswith("/") and found.kind != "dir":
            raise NotADirectory(f"{path}: {_joined(stack)} is not a directory")
        return self.entry(name, found)

    def listdir(self, path_or_entry: str | Entry) -> list[Entry]:
        if isinstance(path_or_entry, str):
            entry = self.lookup(path_or_entry)
        else:
            entry = path_or_entry
        directory = self.inode(entry.inode)
        if directory.kind != "dir":
            raise NotADirectory(f"{entry.name or '/'}: not a directory")
        return [
            self.entry(decode_name(name), self.inode(number))
            for name, number in self._children(directory).items()
        ]

    def readlink(self, entry: Entry) -> str:
        inode = self.inode(entry.inode)
        if inode.kind != "symlink":
            raise NotASymlink(f"{entry.name or '/'}: not a symbolic link")
        return decode_name(self._symlink_target(inode))

    def read(self, entry: Entry, offset: int, length: int) -> bytes:
        """File contents from ``offset``: holes and unwritten extents read as zeros, short at EOF."""
        if offset < 0 or length < 0:
            raise InvalidRange(f"{entry.name}: negative offset or length ({offset}, {length})")
        inode = self.inode(entry.inode)
        if inode.kind != "file":
            raise NotARegularFile(f"{entry.name or '/'}: is a {inode.kind}, not a regular file")
        self._check_readable(inode)
        end = min(offset + length, inode.size)
        if offset >= end:
            return b""
        inline = self._inline_content(inode)
        if inline is not None:
            return inline[offset:end].ljust(end - offset, b"\0")
        out = bytearray(end - offset)
        view = memoryview(out)
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs + 1
        pieces: list[tuple[int, int, int]] = []  # (position in out, byte on disk, length)
        for run in merge_runs(self._data_runs(inode, first, last), bs):
            lo = max(run.logical * bs, offset)
            hi = min((run.logical + run.count) * bs, end)
            if lo >= end:
                break
            if lo < hi:
                pieces.append((lo - offset, run.disk + (lo - run.logical * bs), hi - lo))
        what = f"data of inode {inode.number}"
        for disk, span, group in group_reads(pieces):
            if len(group) == 1:
                at, _, size = group[0]
                self.reader.data_into(view[at : at + size], disk, what)
                continue
            buffer = bytearray(span)
            self.reader.data_into(memoryview(buffer), disk, what)
            for at, piece_disk, size in group:
                view[at : at + size] = buffer[piece_disk - disk : piece_disk - disk + size]
        return bytes(out)


def group_reads(
    pieces: list[tuple[int, int, int]],
) -> Iterator[tuple[int, int, list[tuple[int, int, int]]]]:
    """Batch pieces that lie close together on disk into one read: (disk, length, pieces).

    A remote image pays per request, so reading a small gap (an indirect block, a neighbour's
    block) along with the data is cheaper than a second request.
    """
    group: list[tuple[int, int, int]] = []
    start = stop = 0
    for piece in pieces:
        _, disk, length = piece
        if group and stop <= disk <= stop + MAX_READ_GAP and disk + length - start <= MAX_DATA_READ:
            group.append(piece)
            stop = disk + length
            continue
        if group:
            yield start, stop - start, group
        group, start, stop = [piece], disk, disk + length
    if group:
        yield start, stop - start, group


def merge_runs(runs: Iterable[Run], block_size: int) -> Iterator[Run]:
    """Join runs that follow each other both in the file and on disk, so reads are large."""
    pending: Run | None = None
    for run in runs:
        if (
            pending is not None
            and pending.logical + pending.count == run.logical
            and pending.disk + pending.count * block_size == run.disk
        ):
            pending = Run(pending.logical, pending.count + run.count, pending.disk)
            continue
        if pending is not None:
            yield pending
        pending = run
    if pending is not None:
        yield pending


def check_mode_kind(number: int, mode: int) -> str:
    kind = kind_of_mode(mode)
    if kind is None:
        raise CorruptFilesystem(f"inode {number}: file type {stat.S_IFMT(mode):#o} is not valid")
    return kind


def _joined(stack: list[tuple[str, InodeT]]) -> str:
    return "/" + "/".join(name for name, _ in stack[1:])
