"""What the filesystem readers offer: entries, the image they read from, the reader protocol."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

KINDS = ("file", "dir", "symlink", "fifo", "socket", "chardev", "blockdev")

_KIND_BY_FORMAT = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
}


def kind_of_mode(mode: int) -> str | None:
    """The entry kind for a full st_mode, or None for a type no filesystem defines."""
    return _KIND_BY_FORMAT.get(stat.S_IFMT(mode))


def decode_name(raw: bytes) -> str:
    """A name as stored on disk, decoded losslessly (undecodable bytes become surrogates)."""
    return raw.decode("utf-8", "surrogateescape")


def encode_name(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


@runtime_checkable
class ReadAt(Protocol):
    """Random access to a volume image. ``pread`` is short only at the end of the image."""

    size: int

    def pread(self, length: int, offset: int) -> bytes: ...


@dataclass(frozen=True)
class Entry:
    """One file, directory, symlink or special file, as stat(2) would describe it."""

    name: str  # last path component ("" for the root); raw bytes decoded with surrogateescape
    kind: str  # one of KINDS
    inode: int
    size: int
    mode: int  # full st_mode: type bits and permissions
    uid: int
    gid: int
    nlink: int
    mtime_ns: int
    atime_ns: int
    ctime_ns: int
    link_target: str | None  # symlinks only; never followed
    rdev: int = 0  # device number of character and block devices (os.makedev form)
    blocks: int = 0  # space allocated, in 512-byte units (st_blocks)

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"


class FileSystem(Protocol):
    """A read-only view of the filesystem inside a volume image. Safe to use from many threads."""

    kind: str  # "ext2", "ext3", "ext4" or "xfs"
    label: str
    uuid: str
    block_size: int

    @property
    def needs_recovery(self) -> bool:
        """The image was not cleanly unmounted: its journal or log held pending changes."""
        ...

    @property
    def journal_note(self) -> str:
        """Empty, or one line on pending changes that could not be replayed."""
        ...

    def root(self) -> Entry: ...

    def lookup(self, path: str) -> Entry: ...

    def listdir(self, path_or_entry: str | Entry) -> list[Entry]: ...

    def read(self, entry: Entry, offset: int, length: int) -> bytes: ...

    def readlink(self, entry: Entry) -> str: ...


class ImageFile:
    """A local image file (or block device) as a ``ReadAt``. Thread-safe: it uses pread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            self.size = os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            os.close(self._fd)
            raise

    def pread(self, length: int, offset: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ImageFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
