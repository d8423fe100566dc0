"""Writing on the local machine without being led astray: the one safe writer.

Restores (an image file or a device), extracts (``files get``, the TUI, the API's StartExtract)
and the client side of the API's tree download all write through this module.

* Targets are checked before anything is written, and each failure is one plain line
  (``TargetError``): a folder where a file is wanted, a read-only filesystem, a name that is
  too long, a folder that does not exist, /proc.
* With ``within`` (the server's ``--allow-path`` folders) a target is opened at write time
  component by component from its allowed folder, each with O_NOFOLLOW: a symlink planted
  on the path after the request was checked is refused, never followed.
* Entries from an image or a stream are created relative to an open descriptor of their
  parent folder, never through a path: folders are entered with O_NOFOLLOW, files created
  with O_EXCL | O_NOFOLLOW, symlinks recreated and never followed, names that are empty,
  '.', '..' or hold '/' or NUL refused, setuid and setgid dropped.
* A restore writes ``NAME.lamina-partial`` and renames it only on success; on every failure
  the partial file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable, Sequence
from typing import Protocol

from ..errors import LaminaError, UsageError
from ..names import ComponentFault, component_fault

HOLE_BLOCK = 64 * 1024  # all-zero blocks of this size stay holes in files written
_ZERO_BLOCK = bytes(HOLE_BLOCK)
PARTIAL_SUFFIX = ".lamina-partial"
PATH_MAX = 4096  # Linux's limit on a path given to a system call
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_KEPT_MODE = 0o1777  # setuid and setgid dropped: the image is untrusted


class TargetError(UsageError):
    """A place to write that cannot be used as asked (one line, before anything is written)."""


class TargetExists(TargetError):
    """The target file exists and the caller did not ask to overwrite it."""


class PathNotAllowed(LaminaError):
    """A path lies outside the folders writes are allowed under (``--allow-path``)."""


class NotAFolder(Exception):
    """An entry to merge into exists and is not a real folder (or is a symlink)."""


def unsafe_name_reason(name: str) -> str | None:
    """Why ``name`` cannot be created inside a folder, or None when it can.

    Only the rules of one path component (``names.component_fault``): a file inside a
    volume may have any other name, control characters included.
    """
    fault = component_fault(name)
    if fault is ComponentFault.EMPTY:
        return "empty name"
    if fault is ComponentFault.DOT:
        return f"the name {name!r} refers to a directory itself"
    if fault is ComponentFault.SLASH:
        return "the name contains '/'"
    if fault is ComponentFault.NUL:
        return "the name contains a NUL byte"
    return None


def _reason(e: OSError) -> str:
    if e.errno == errno.EROFS:
        return "the filesystem is read-only"
    if e.errno == errno.ENAMETOOLONG:
        return "a name on the path is too long for the filesystem"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.ENOSPC:
        return "no space left on the filesystem"
    if e.errno == errno.EFBIG:
        return "the filesystem cannot hold a file that big"
    return e.strerror or str(e)


# ---------------------------------------------------------------------------- folders


def _root_of(path: str, within: Sequence[str]) -> tuple[str, list[str]]:
    """The allowed folder holding ``path`` (lexically), and the names below it."""
    for root in within:
        real_root = os.path.realpath(root)
        if os.path.commonpath([path, real_root]) == real_root:
            rest = os.path.relpath(path, real_root)
            return real_root, [] if rest == "." else rest.split(os.sep)
    raise PathNotAllowed(f"{path} is outside the folders this server allows (--allow-path)")


def _open_beneath(path: str, within: Sequence[str], *, create: bool) -> int:
    """Open folder ``path`` from its allowed folder, one name at a time, never following a
    symlink; missing folders are made when ``create``."""
    root, names = _root_of(path, within)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    walked = root
    try:
        for name in names:
            walked = os.path.join(walked, name)
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno == errno.ELOOP or (
                    e.errno == errno.ENOTDIR
                    and stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
                ):
                    raise TargetError(
                        f"{walked} is a symlink; it is not followed under --allow-path"
                    ) from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _folder_error(path: str, e: OSError) -> TargetError:
    if e.errno == errno.ENOENT:
        return TargetError(f"folder {path} does not exist")
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return TargetError(f"{path} is not a folder (or a name on its path is a file)")
    return TargetError(f"cannot use folder {path}: {_reason(e)}")


def open_folder(path: str, *, within: Sequence[str] = (), create: bool = False) -> int:
    """A descriptor of folder ``path`` (made with its parents when ``create``).

    Without ``within`` the path is the caller's own and opened as given; with it, see
    ``_open_beneath``. Failures are TargetErrors naming the folder.
    """
    _check_path_text(path, "folder")
    absolute = os.path.abspath(path)
    try:
        if within:
            return _open_beneath(absolute, within, create=create)
        if create:
            os.makedirs(absolute, exist_ok=True)
        return os.open(absolute, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise _folder_error(absolute, e) from None


def check_folder_target(path: str, *, within: Sequence[str] = ()) -> None:
    """Refuse, before any work, a target folder that cannot be made or written into."""
    _check_path_text(path, "folder")
    absolute = os.path.abspath(path)
    existing = absolute
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if within:
        _root_of(absolute, within)
    fd = open_folder(existing, within=within)
    try:
        # access() knows read-only mounts and permissions without writing anything.
        if not os.access(".", os.W_OK, dir_fd=fd, effective_ids=True):
            raise TargetError(
                f"cannot write in folder {existing}: "
                + ("the filesystem is read-only" if _read_only(fd) else "permission denied")
            )
        if existing != absolute:
            limit = os.fpathconf(fd, "PC_NAME_MAX")
            missing = os.path.relpath(absolute, existing).split(os.sep)
            for name in missing:
                if len(os.fsencode(name)) > limit:
                    raise TargetError(
                        f"the name {name[:40]}... is too long: at most {limit} bytes here"
                    )
            # Made and removed at once: /proc and its kind refuse new folders to root too.
            try:
                os.mkdir(missing[0], 0o700, dir_fd=fd)
                os.rmdir(missing[0], dir_fd=fd)
            except FileExistsError:
                pass  # made meanwhile by someone else: it is there now
            except OSError as e:
                reason = "it does not take new folders" if e.errno == errno.ENOENT else _reason(e)
                raise TargetError(f"cannot make a folder in {existing}: {reason}") from None
    finally:
        os.close(fd)


def _read_only(fd: int) -> bool:
    return bool(os.fstatvfs(fd).f_flag & os.ST_RDONLY)


def _check_path_text(path: str, what: str) -> None:
    if not path or not path.strip():
        raise TargetError(f"give the {what} to write to")
    if "\0" in path:
        raise TargetError(f"the {what} path must not contain a NUL byte")
    size = len(os.fsencode(path))
    if size > PATH_MAX:
        raise TargetError(f"the {what} path is {size} bytes long; at most {PATH_MAX}")


# ---------------------------------------------------------------------------- image targets


class ImageTarget:
    """Where a restore writes: a block device, or ``NAME.lamina-partial`` next to NAME.

    ``open`` checks everything it can before the first byte is written; ``commit`` renames
    the partial file into place; ``discard`` removes it. Use as a context manager: leaving
    without ``commit`` discards.
    """

    def __init__(self, path: str, parent_fd: int, name: str, fd: int, is_device: bool) -> None:
        self.path = path
        self.parent_fd = parent_fd
        self.name = name
        self.fd = fd
        self.is_device = is_device
        self.partial_path = path if is_device else path + PARTIAL_SUFFIX
        self._finished = False
        self.committed: os.stat_result | None = None  # fstat of the image once in place

    @classmethod
    def open(
        cls,
        target: str,
        *,
        capacity: int,
        overwrite: bool = False,
        within: Sequence[str] = (),
    ) -> ImageTarget:
        _check_path_text(target, "restore target")
        path = os.path.abspath(target)
        folder, name = os.path.split(path)
        if not name:
            raise TargetError(f"{target} is a folder; give a file or block device to restore to")
        parent_fd = open_folder(folder, within=within)
        try:
            return cls._open_in(path, parent_fd, name, capacity, overwrite, follow=not within)
        except BaseException:
            os.close(parent_fd)
            raise

    @classmethod
    def _open_in(
        cls, path: str, parent_fd: int, name: str, capacity: int, overwrite: bool, follow: bool
    ) -> ImageTarget:
        limit = os.fpathconf(parent_fd, "PC_NAME_MAX")
        if len(os.fsencode(name + PARTIAL_SUFFIX)) > limit:
            raise TargetError(
                f"the file name is too long: at most {limit - len(PARTIAL_SUFFIX)} bytes "
                f"(lamina writes it as NAME{PARTIAL_SUFFIX} first)"
            )
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=parent_fd, follow_symlinks=follow)
        except FileNotFoundError:
            st = None  # a dangling symlink when following: it is replaced, never followed
        except OSError as e:
            raise TargetError(f"cannot use {path}: {_reason(e)}") from None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise TargetError(f"{path} is a folder; give a file or block device to restore to")
        if st is not None and stat.S_ISBLK(st.st_mode):
            return cls._open_device(path, parent_fd, name, capacity, follow)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise TargetError(f"{path} is a symlink; it is not followed under --allow-path")
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise TargetError(f"{path} is not a regular file or a block device")
        if st is not None and not overwrite:
            raise TargetExists(f"{path} exists; choose a new file, or pass --overwrite")
        partial = name + PARTIAL_SUFFIX
        fd = cls._create_partial(path, parent_fd, partial)
        try:
            os.ftruncate(fd, capacity)
        except OSError as e:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(partial, dir_fd=parent_fd)
            raise TargetError(f"cannot write {path}: {_reason(e)}") from None
        return cls(path, parent_fd, name, fd, False)

    @staticmethod
    def _create_partial(path: str, parent_fd: int, partial: str) -> int:
        # The writer holds an flock on its partial file: one found unlocked was left by a
        # crash and is ours to replace; a locked one belongs to a restore still running.
        for attempt in (1, 2):
            try:
                fd = os.open(partial, _FILE_FLAGS, 0o600, dir_fd=parent_fd)
                with contextlib.suppress(OSError):  # a filesystem without locks: no guard
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except FileExistsError:
                if attempt == 2:
                    raise TargetError(f"cannot create {path}{PARTIAL_SUFFIX}: it exists") from None
                _replace_leftover(path, parent_fd, partial)
            except OSError as e:
                if e.errno == errno.ENOENT:  # the folder is there: /proc and its kind
                    raise TargetError(
                        f"cannot create {path}: its folder does not take new files"
                    ) from None
                raise TargetError(f"cannot create {path}: {_reason(e)}") from None
        raise AssertionError("unreachable")

    @classmethod
    def _open_device(
        cls, path: str, parent_fd: int, name: str, capacity: int, follow: bool
    ) -> ImageTarget:
        flags = os.O_WRONLY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        try:
            fd = os.open(name, flags, dir_fd=parent_fd)
        except OSError as e:
            raise TargetError(f"cannot open device {path}: {_reason(e)}") from None
        size = os.lseek(fd, 0, os.SEEK_END)
        if size < capacity:
            os.close(fd)
            raise TargetError(f"device {path} has {size} bytes, less than the volume's {capacity}")
        return cls(path, parent_fd, name, fd, True)

    def commit(self) -> None:
        """Make the written image the target (a device: nothing to do)."""
        os.fsync(self.fd)
        if not self.is_device:
            try:  # renamed while still open: our lock on it holds until it is in place
                os.rename(
                    self.name + PARTIAL_SUFFIX,
                    self.name,
                    src_dir_fd=self.parent_fd,
                    dst_dir_fd=self.parent_fd,
                )
            except OSError as e:
                self.discard()
                raise TargetError(f"cannot put the image at {self.path}: {_reason(e)}") from None
        self.committed = os.fstat(self.fd)  # after the rename, which changes the ctime
        os.close(self.fd)
        self.fd = -1
        self._finished = True
        self._close_parent()

    def discard(self) -> None:
        """Remove the partial file (after a failure or a cancel) and close everything."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if not self.is_device and not self._finished:
            with contextlib.suppress(OSError):
                os.unlink(self.name + PARTIAL_SUFFIX, dir_fd=self.parent_fd)
        self._finished = True
        self._close_parent()

    def _close_parent(self) -> None:
        if self.parent_fd >= 0:
            os.close(self.parent_fd)
            self.parent_fd = -1

    def __enter__(self) -> ImageTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._finished:
            self.discard()


def _replace_leftover(path: str, parent_fd: int, partial: str) -> None:
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except OSError:
        raise TargetError(f"{path}{PARTIAL_SUFFIX} exists and is not a file lamina wrote") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise TargetError(f"another restore is writing {path} right now") from None
    finally:
        os.close(fd)
    os.unlink(partial, dir_fd=parent_fd)


def check_image_target(
    target: str, *, capacity: int = 0, overwrite: bool = False, within: Sequence[str] = ()
) -> bool:
    """Refuse, before any work, a restore target that cannot be written (TargetError).

    Creates and removes the partial file to be sure the filesystem takes it. Returns
    whether the target is a block device.
    """
    image = ImageTarget.open(target, capacity=capacity, overwrite=overwrite, within=within)
    device = image.is_device
    image.discard()
    return device


# ---------------------------------------------------------------------------- entries


class EntryMetadata(Protocol):
    """What is restored of an entry: fsread's Entry and the API's FileEntry both have it."""

    @property
    def kind(self) -> str: ...
    @property
    def mode(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def atime_ns(self) -> int: ...
    @property
    def mtime_ns(self) -> int: ...


class EntryWriter:
    """Creates entries inside open folders: never through a path, never through a symlink."""

    def __init__(self) -> None:
        self.set_owner = os.geteuid() == 0

    def folder(self, parent_fd: int, name: str) -> tuple[int, bool]:
        """Make (or merge into) folder ``name``: its descriptor, and whether it was made."""
        created = True
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            created = False  # merge into an existing real folder, never through a symlink
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd), created
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise NotAFolder(name) from None
            raise

    def new_file(self, parent_fd: int, name: str) -> int:
        """Create file ``name`` (never replacing anything): FileExistsError if it exists."""
        return os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent_fd)

    def drop_file(self, parent_fd: int, name: str, fd: int) -> None:
        """Close and remove a file this writer made and could not finish."""
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=parent_fd)

    def symlink(self, parent_fd: int, name: str, target: str | bytes, meta: EntryMetadata) -> None:
        raw = os.fsencode(target)
        if not raw or b"\0" in raw:
            raise ValueError("the symlink target is empty or contains a NUL byte")
        os.symlink(raw, os.fsencode(name), dir_fd=parent_fd)
        self.finish_name(parent_fd, name, meta)

    def fifo(self, parent_fd: int, name: str, meta: EntryMetadata) -> None:
        os.mkfifo(name, 0o600, dir_fd=parent_fd)
        self.finish_name(parent_fd, name, meta)

    def finish_fd(self, fd: int, meta: EntryMetadata) -> None:
        """Owner (as root), mode and times of an open file or folder."""
        if self.set_owner:
            _quietly(lambda: os.fchown(fd, meta.uid, meta.gid))
        os.fchmod(fd, stat.S_IMODE(meta.mode) & _KEPT_MODE)
        os.utime(fd, ns=(meta.atime_ns, meta.mtime_ns))

    def finish_name(self, parent_fd: int, name: str, meta: EntryMetadata) -> None:
        """Owner, mode and times of ``name`` in ``parent_fd``, the name itself not followed."""
        if self.set_owner:
            _quietly(
                lambda: os.chown(name, meta.uid, meta.gid, dir_fd=parent_fd, follow_symlinks=False)
            )
        if meta.kind != "symlink":  # Linux cannot chmod a symlink
            os.chmod(
                name,
                stat.S_IMODE(meta.mode) & _KEPT_MODE,
                dir_fd=parent_fd,
                follow_symlinks=False,
            )
        os.utime(name, ns=(meta.atime_ns, meta.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)


def write_sparse(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write ``data`` at ``offset``, leaving all-zero blocks as holes."""
    view = memoryview(data)
    start = 0
    while start < len(view):
        stop = min(start + HOLE_BLOCK, len(view))
        if view[start:stop] == _ZERO_BLOCK[: stop - start]:
            start = stop
            continue
        run_end = stop
        while run_end < len(view):  # one write for a run of non-zero blocks
            nxt = min(run_end + HOLE_BLOCK, len(view))
            if view[run_end:nxt] == _ZERO_BLOCK[: nxt - run_end]:
                break
            run_end = nxt
        while start < run_end:
            start += os.pwrite(fd, view[start:run_end], offset + start)


def _quietly(action: Callable[[], object]) -> None:
    try:
        action()
    except OSError:
        pass
