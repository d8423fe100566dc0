"""A folder on a local filesystem: the embedded default.

Each object is a file. A write goes to a hidden temporary file in the same folder, is synced,
then renamed (or hard-linked, for put-if-absent) into place, so readers never see part of an
object. Folders only hold keys: a folder is never an object itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from .base import (
    InvalidRequest,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    check_key,
    check_prefix,
    check_range,
    check_span,
)

_TMP_SUFFIX = ".tmp-lamina"

# A missing file, or a path through something that is not a folder: no such object.
_MISSING = (FileNotFoundError, NotADirectoryError)


class LocalStorage(Storage):
    def __init__(self, root: str | os.PathLike[str], *, create: bool = False) -> None:
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(f"cannot create {self.root}: {_reason(e)}") from e

    def _path(self, key: str) -> Path:
        check_key(key)
        if key.endswith(_TMP_SUFFIX):
            # Such names are reserved for the temporary files that list() hides.
            raise InvalidRequest(f"invalid object key: {key!r} (reserved suffix {_TMP_SUFFIX})")
        return self.root / key

    def put(
        self,
        key: str,
        data: bytes | bytearray,
        *,
        if_absent: bool = False,
        retain_until: float | None = None,
    ) -> bool:
        if retain_until is not None:
            raise InvalidRequest("Object Lock retention needs an S3 repository")
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{_TMP_SUFFIX}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if if_absent:
                # link() fails when the name exists: an atomic put-if-absent.
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    if path.is_dir():
                        raise StorageError(
                            f"cannot write {path}: a folder of that name holds other keys"
                        ) from None
                    return False
            else:
                os.replace(tmp, path)
            _fsync_dir(path.parent)
            return True
        except (FileExistsError, NotADirectoryError) as e:
            raise StorageError(
                f"cannot write {path}: a part of its folder path is an object, not a folder"
            ) from e
        except OSError as e:
            raise StorageError(f"cannot write {path}: {_reason(e)}") from e
        finally:
            # Never created when the write failed early (read-only, no space): nothing to undo.
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (*_MISSING, IsADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as e:
            raise StorageError(f"cannot read {path}: {_reason(e)}") from e

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        path = self._path(key)
        check_span(key, offset, length)
        try:
            fd = os.open(path, os.O_RDONLY)
        except _MISSING:
            raise ObjectNotFound(key) from None
        except OSError as e:
            raise StorageError(f"cannot read {path}: {_reason(e)}") from e
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ObjectNotFound(key)
            data = os.pread(fd, length, offset)
        except OSError as e:
            raise StorageError(f"cannot read {path}: {_reason(e)}") from e
        finally:
            os.close(fd)
        return check_range(key, data, offset, length)

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            st = path.stat()
        except _MISSING:
            return None
        except OSError as e:
            raise StorageError(f"cannot read {path}: {_reason(e)}") from e
        if not stat.S_ISREG(st.st_mode):
            return None
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        # Walk only the folder the prefix can live in.
        folder, _, _ = prefix.rpartition("/")
        start = self.root / folder if folder else self.root
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in sorted(filenames):
                if name.endswith(_TMP_SUFFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue  # deleted while we walked
                if stat.S_ISREG(st.st_mode):
                    # Every write is a new file renamed into place: a new inode.
                    etag = f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"
                    yield ObjectInfo(key, st.st_size, st.st_mtime, etag)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (*_MISSING, IsADirectoryError):
            pass  # no such object (a folder is not one)
        except OSError as e:
            raise StorageError(f"cannot delete {path}: {_reason(e)}") from e


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)
