"""FUSE operations over the repository view: a thin, read-only translation layer.

Every answer comes from ``RepositoryView`` (backend/engine/fsview.py); this class only turns
``Node``s into stat dictionaries, keeps open-file handles, refuses writes with EROFS and
notes when the mount was last used (for the idle timeout).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from lamina.backend.errors import LaminaError
from lamina.backend.service import Node, OpenFile, RepositoryView

log = logging.getLogger("lamina.fs")

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _erofs(*_args: object) -> int:
    raise OSError(errno.EROFS, "read-only file system")


class LaminaOperations:
    """The operations table handed to mfusepy.FUSE (duck-typed: mfusepy looks methods up)."""

    use_ns = True  # timestamps in nanoseconds

    def __init__(self, view: RepositoryView, *, on_init: Callable[[], None] | None = None) -> None:
        self.view = view
        self.on_init = on_init
        self.last_access = time.monotonic()
        self._handles: dict[int, OpenFile] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self.view.uid = os.getuid()
        self.view.gid = os.getgid()

    # ------------------------------------------------------------------ bookkeeping

    def _touch(self) -> None:
        self.last_access = time.monotonic()

    @property
    def open_handles(self) -> int:
        with self._lock:
            return len(self._handles)

    def idle_seconds(self) -> float:
        return time.monotonic() - self.last_access

    def _call(self, fn: Callable[[], Any], path: str) -> Any:
        """Run a view call; anything but an OSError becomes EIO with a log line."""
        self._touch()
        try:
            return fn()
        except OSError:
            raise
        except LaminaError as e:
            log.error("%s: %s", path, e)
            raise OSError(errno.EIO, str(e)) from None
        except Exception:
            log.exception("unexpected failure on %s", path)
            raise OSError(errno.EIO, "internal error") from None

    # ------------------------------------------------------------------ lifecycle

    def init(self, path: str) -> None:
        if self.on_init is not None:
            self.on_init()

    def destroy(self, path: str) -> None:
        self.view.close()

    # ------------------------------------------------------------------ reading

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        node: Node = self._call(lambda: self.view.stat(path), path)
        return {
            "st_mode": node.mode,
            "st_size": node.size,
            "st_nlink": node.nlink,
            "st_uid": node.uid,
            "st_gid": node.gid,
            "st_mtime": node.mtime_ns,
            "st_atime": node.atime_ns,
            "st_ctime": node.ctime_ns,
            "st_blocks": node.st_blocks,
            "st_blksize": 131072,
            "st_rdev": node.rdev,
        }

    def readdir(self, path: str, fh: int) -> list[str]:
        names: list[str] = self._call(lambda: self.view.listdir(path), path)
        return [".", "..", *names]

    def readlink(self, path: str) -> str:
        target: str = self._call(lambda: self.view.readlink(path), path)
        return target

    def open(self, path: str, flags: int) -> int:
        if flags & _WRITE_FLAGS or flags & os.O_ACCMODE != os.O_RDONLY:
            self._touch()
            raise OSError(errno.EROFS, "read-only file system")
        handle: OpenFile = self._call(lambda: self.view.open(path), path)
        with self._lock:
            number = next(self._numbers)
            self._handles[number] = handle
        return number

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._lock:
            handle = self._handles.get(fh)
        if handle is None:
            raise OSError(errno.EBADF, "bad file handle")
        data: bytes = self._call(lambda: handle.read(offset, size), path)
        return data

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self._handles.pop(fh, None)
        self._touch()
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": 0,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": 0,
            "f_ffree": 0,
            "f_favail": 0,
            "f_namemax": 255,
        }

    # ------------------------------------------------------------------ writing: never

    def create(self, path: str, mode: int, fi: object = None) -> int:
        return _erofs()

    write = staticmethod(_erofs)
    truncate = staticmethod(_erofs)
    mkdir = staticmethod(_erofs)
    mknod = staticmethod(_erofs)
    rmdir = staticmethod(_erofs)
    unlink = staticmethod(_erofs)
    symlink = staticmethod(_erofs)
    link = staticmethod(_erofs)
    rename = staticmethod(_erofs)
    chmod = staticmethod(_erofs)
    chown = staticmethod(_erofs)
    utimens = staticmethod(_erofs)
    setxattr = staticmethod(_erofs)
    removexattr = staticmethod(_erofs)
