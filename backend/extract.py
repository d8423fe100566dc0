"""Copy files and directories out of a point's filesystem, without mounting anything.

The names inside an image are untrusted. Nothing is ever written outside the target
folder: every entry is created relative to an open descriptor of its parent directory,
never through a path; directories are entered with O_NOFOLLOW; files are created with
O_CREAT | O_EXCL | O_NOFOLLOW; symlinks are recreated as links and never followed. A name
that is empty, '.', '..', or holds '/' or NUL is skipped with a warning, and so is anything
that would replace an existing entry. Whatever can be extracted still is.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from .display import printable
from .errors import Cancelled, LaminaError, UsageError
from .fsread import Entry
from .fsview import PointFiles, normalize
from .progress import ProgressCallback, ProgressTracker

log = logging.getLogger("lamina.extract")

CHUNK = 4 * 1024 * 1024
HOLE_BLOCK = 64 * 1024  # all-zero blocks of this size stay holes in extracted files
_ZEROS = bytes(HOLE_BLOCK)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Permission bits kept: setuid and setgid are dropped, an image is untrusted.
_KEPT_MODE = 0o1777


def unsafe_name_reason(name: str) -> str | None:
    """Why ``name`` cannot be created inside a folder, or None when it can."""
    if name == "":
        return "empty name"
    if name in (".", ".."):
        return f"the name {name!r} refers to a directory itself"
    if "/" in name:
        return "the name contains '/'"
    if "\0" in name:
        return "the name contains a NUL byte"
    return None


@dataclass(frozen=True)
class Skipped:
    path: str  # as in the image, printable
    reason: str


@dataclass
class ExtractReport:
    target: str
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    others: int = 0
    bytes: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.skipped

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "files": self.files,
            "directories": self.directories,
            "symlinks": self.symlinks,
            "others": self.others,
            "bytes": self.bytes,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


class _Extractor:
    def __init__(
        self,
        files: PointFiles,
        report: ExtractReport,
        tracker: ProgressTracker,
        cancelled: Callable[[], bool],
    ) -> None:
        self.files = files
        self.report = report
        self.tracker = tracker
        self.cancelled = cancelled
        self.set_owner = os.geteuid() == 0

    def skip(self, path: str, reason: str) -> None:
        shown = printable(path)
        log.info("skipped %s: %s", shown, reason)
        self.report.skipped.append(Skipped(shown, reason))

    def check_cancel(self) -> None:
        if self.cancelled():
            raise Cancelled("extraction cancelled; what was extracted so far is kept")

    # ------------------------------------------------------------------ walking

    def children(self, entry: Entry) -> list[Entry]:
        # By entry, not by path: a hostile name can never make a path mean something else.
        return self.files.children(entry)

    def total_bytes(self, entry: Entry, path: str) -> int:
        if entry.kind == "file":
            return entry.size
        if entry.kind != "dir":
            return 0
        total = 0
        for child in self.children(entry):
            if unsafe_name_reason(child.name) is None:
                total += self.total_bytes(child, _join(path, child.name))
        return total

    # ------------------------------------------------------------------ writing

    def extract_into(self, dir_fd: int, name: str, entry: Entry, path: str) -> None:
        """Create ``entry`` as ``name`` inside the directory open as ``dir_fd``."""
        self.check_cancel()
        reason = unsafe_name_reason(name)
        if reason is not None:
            self.skip(path, reason)
            return
        try:
            if entry.kind == "dir":
                self.extract_dir(dir_fd, name, entry, path)
            elif entry.kind == "file":
                self.extract_file(dir_fd, name, entry, path)
            elif entry.kind == "symlink":
                self.extract_symlink(dir_fd, name, entry, path)
            elif entry.kind == "fifo":
                os.mkfifo(name, 0o600, dir_fd=dir_fd)
                self.finish_metadata(dir_fd, name, entry, None)
                self.report.others += 1
            else:
                self.skip(path, f"{entry.kind} not extracted")
        except FileExistsError:
            self.skip(path, "already exists in the target; not replaced")
        except LaminaError as e:
            self.skip(path, f"cannot read it: {e}")
        except OSError as e:
            self.skip(path, f"cannot create it: {e.strerror or e}")

    def extract_dir(self, parent_fd: int, name: str, entry: Entry, path: str) -> None:
        created = True
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            created = False  # merge into an existing real directory (never a symlink)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                self.skip(path, "exists in the target and is not a directory")
                return
            raise
        try:
            self.extract_children(fd, entry, path)
            if created:
                self.finish_metadata(fd, None, entry, fd)
        finally:
            os.close(fd)
        self.report.directories += 1

    def extract_children(self, fd: int, entry: Entry, path: str) -> None:
        for child in self.children(entry):
            self.extract_into(fd, child.name, child, _join(path, child.name))

    def extract_file(self, dir_fd: int, name: str, entry: Entry, path: str) -> None:
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            try:
                self.copy_data(fd, entry)
            except BaseException:
                os.close(fd)
                fd = -1
                os.unlink(name, dir_fd=dir_fd)  # no half-written file left behind
                raise
            self.finish_metadata(fd, None, entry, fd)
        finally:
            if fd >= 0:
                os.close(fd)
        self.report.files += 1

    def copy_data(self, fd: int, entry: Entry) -> None:
        offset = 0
        while offset < entry.size:
            self.check_cancel()
            data = self.files.read(entry, offset, min(CHUNK, entry.size - offset))
            if not data:
                raise LaminaError(f"the file ends early at byte {offset} of {entry.size}")
            _write_sparse(fd, data, offset)
            offset += len(data)
            self.report.bytes += len(data)
            self.tracker.add(len(data), read=len(data))
        os.ftruncate(fd, entry.size)

    def extract_symlink(self, dir_fd: int, name: str, entry: Entry, path: str) -> None:
        target = self.files.readlink(entry)
        if "\0" in target or not target:
            self.skip(path, "the symlink target is empty or contains a NUL byte")
            return
        os.symlink(target, name, dir_fd=dir_fd)
        self.finish_metadata(dir_fd, name, entry, None)
        self.report.symlinks += 1

    def finish_metadata(self, dir_fd: int, name: str | None, entry: Entry, fd: int | None) -> None:
        """Owner (as root), mode and times: on ``fd`` if given, else on ``name`` unfollowed."""
        times = (entry.atime_ns, entry.mtime_ns)
        if fd is not None:
            if self.set_owner:
                _ignore_errors(os.fchown, fd, entry.uid, entry.gid)
            os.fchmod(fd, stat.S_IMODE(entry.mode) & _KEPT_MODE)
            os.utime(fd, ns=times)
            return
        assert name is not None
        if self.set_owner:
            _ignore_errors(
                lambda: os.chown(name, entry.uid, entry.gid, dir_fd=dir_fd, follow_symlinks=False)
            )
        if entry.kind != "symlink":  # Linux cannot chmod a symlink
            os.chmod(
                name, stat.S_IMODE(entry.mode) & _KEPT_MODE, dir_fd=dir_fd, follow_symlinks=False
            )
        os.utime(name, ns=times, dir_fd=dir_fd, follow_symlinks=False)


def _write_sparse(fd: int, data: bytes, offset: int) -> None:
    """Write ``data`` at ``offset``, leaving all-zero blocks as holes."""
    view = memoryview(data)
    start = 0
    while start < len(data):
        end = min(start + HOLE_BLOCK, len(data))
        if view[start:end] == _ZEROS[: end - start]:
            start = end
            continue
        run_end = end  # extend over the following non-zero blocks: one write per run
        while run_end < len(data):
            nxt = min(run_end + HOLE_BLOCK, len(data))
            if view[run_end:nxt] == _ZEROS[: nxt - run_end]:
                break
            run_end = nxt
        while start < run_end:
            start += os.pwrite(fd, view[start:run_end], offset + start)


def _ignore_errors(fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except OSError:
        pass


def _join(parent: str, name: str) -> str:
    return f"{parent.rstrip('/')}/{name}"


def _top_level(paths: Sequence[str]) -> Iterator[tuple[str, str | None]]:
    """(image path, name to create in the target); name None for the root (its contents)."""
    for raw in paths:
        path = normalize(raw)
        if any(part == ".." for part in PurePosixPath(path).parts):
            raise UsageError(f"the path {raw!r} must not contain '..'")
        yield path, (None if path == "/" else PurePosixPath(path).name)


def extract(
    files: PointFiles,
    paths: Sequence[str],
    target: str,
    *,
    progress: ProgressCallback | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> ExtractReport:
    """Extract ``paths`` of a point's filesystem into the folder ``target`` (created if needed)."""
    if not paths:
        raise UsageError("name at least one path to extract")
    tops = list(_top_level(paths))
    try:
        os.makedirs(target, exist_ok=True)
        root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"cannot use {target} as the target folder: {e.strerror or e}") from None
    report = ExtractReport(target=target)
    tracker = ProgressTracker(progress)
    worker = _Extractor(files, report, tracker, cancelled)
    try:
        entries: list[tuple[str, str | None, Entry]] = []
        for path, name in tops:
            try:
                entries.append((path, name, files.lookup(path)))
            except LaminaError as e:
                worker.skip(path, str(e))
        total = sum(worker.total_bytes(entry, path) for path, _, entry in entries)
        tracker.set_phase("extracting", total, f"extracting {len(entries)} path(s) to {target}")
        for path, name, entry in entries:
            if name is not None:
                worker.extract_into(root_fd, name, entry, path)
            elif entry.kind == "dir":
                worker.extract_children(root_fd, entry, path)
        tracker.finish(
            f"extracted {report.files} files, {report.directories} directories, "
            f"{report.symlinks} symlinks; {len(report.skipped)} skipped"
        )
    finally:
        os.close(root_fd)
    return report
