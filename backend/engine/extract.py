"""Copy files and directories out of a point's filesystem, without mounting anything.

The names inside an image are untrusted. Nothing is ever written outside the target
folder: every entry is made by backend/safewrite.py (the one safe writer, shared with the
API's tree download) relative to an open descriptor of its parent directory. A name that
is empty, '.', '..', or holds '/' or NUL is skipped with a warning, and so is anything
that would replace an existing entry. Whatever can be extracted still is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import PurePosixPath

from ..display import printable as printable  # skipped paths, and callers of extract.printable
from ..errors import Cancelled, LaminaError, UsageError
from ..fsread import Entry
from ..progress import ProgressCallback, ProgressTracker
from ..units import plural
from .extract_report import ExtractReport as ExtractReport
from .extract_report import Skipped as Skipped
from .fsview import PointFiles, normalize
from .safewrite import EntryWriter, NotAFolder, open_folder, unsafe_name_reason, write_sparse

log = logging.getLogger("lamina.extract")

CHUNK = 4 * 1024 * 1024


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
        self.writer = EntryWriter()

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
                self.writer.fifo(dir_fd, name, entry)
                self.report.others += 1
            else:
                self.skip(path, f"{entry.kind} not extracted")
        except FileExistsError:
            self.skip(path, "already exists in the target; not replaced")
        except NotAFolder:
            self.skip(path, "exists in the target and is not a directory")
        except LaminaError as e:
            self.skip(path, f"cannot read it: {e}")
        except OSError as e:
            self.skip(path, f"cannot create it: {e.strerror or e}")

    def extract_dir(self, parent_fd: int, name: str, entry: Entry, path: str) -> None:
        fd, created = self.writer.folder(parent_fd, name)
        try:
            self.extract_children(fd, entry, path)
            if created:
                self.writer.finish_fd(fd, entry)
        finally:
            os.close(fd)
        self.report.directories += 1

    def extract_children(self, fd: int, entry: Entry, path: str) -> None:
        for child in self.children(entry):
            self.extract_into(fd, child.name, child, _join(path, child.name))

    def extract_file(self, dir_fd: int, name: str, entry: Entry, path: str) -> None:
        fd = self.writer.new_file(dir_fd, name)
        try:
            self.copy_data(fd, entry)
            self.writer.finish_fd(fd, entry)
        except BaseException:
            self.writer.drop_file(dir_fd, name, fd)  # no half-written file left behind
            raise
        os.close(fd)
        self.report.files += 1

    def copy_data(self, fd: int, entry: Entry) -> None:
        offset = 0
        while offset < entry.size:
            self.check_cancel()
            data = self.files.read(entry, offset, min(CHUNK, entry.size - offset))
            if not data:
                raise LaminaError(f"the file ends early at byte {offset} of {entry.size}")
            write_sparse(fd, data, offset)
            offset += len(data)
            self.report.bytes += len(data)
            self.tracker.add(len(data), read=len(data))
        os.ftruncate(fd, entry.size)

    def extract_symlink(self, dir_fd: int, name: str, entry: Entry, path: str) -> None:
        target = self.files.readlink(entry)
        try:
            self.writer.symlink(dir_fd, name, target, entry)
        except ValueError as e:
            self.skip(path, str(e))
            return
        self.report.symlinks += 1


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
    within: Sequence[str] = (),
    progress: ProgressCallback | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> ExtractReport:
    """Extract ``paths`` of a point's filesystem into the folder ``target`` (created if needed).

    ``within``: the folders the target must lie in, walked without following symlinks.
    """
    if not paths:
        raise UsageError("name at least one path to extract")
    tops = list(_top_level(paths))
    root_fd = open_folder(target, within=within, create=True)
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
        tracker.set_phase(
            "extracting", total, f"extracting {plural(len(entries), 'path')} to {target}"
        )
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
