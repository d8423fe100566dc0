"""The client's side of a ReadTree stream: ``TreeWriter`` rebuilds it in a folder, safely.

The stream's rules are in backend/api/tree.py (the server's side). The writer trusts
nothing it receives. It writes through backend/engine/safewrite.py, the safe writer
``files get`` uses too: every entry relative to an open descriptor of its parent folder,
folders entered with O_NOFOLLOW, files created with O_EXCL | O_NOFOLLOW, no symlink ever
followed, names that are empty, '.', '..' or hold '/' or NUL refused. On top of that, an
entry is placed only inside a folder this same stream created (or merged into) just
before it. It never writes outside its target folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NoReturn

import grpc

from lamina.protos import lamina_v1_pb2 as pb

from ..display import printable
from ..engine.extract import ExtractReport, Skipped
from ..engine.safewrite import (
    EntryWriter,
    NotAFolder,
    open_folder,
    unsafe_name_reason,
    write_sparse,
)
from .rpc_errors import ApiError

HOLE_BLOCK = 64 * 1024  # all-zero blocks of this size stay holes in files written
_ZERO_BLOCK = bytes(HOLE_BLOCK)


class MalformedStream(ApiError):
    """The server sent a tree that breaks the stream's rules."""


_MALFORMED = grpc.StatusCode.DATA_LOSS


@dataclass
class _Folder:
    parts: tuple[str, ...]
    fd: int
    entry: pb.FileEntry | None  # None: not created by this stream (its metadata is kept)


@dataclass
class _File:
    parts: tuple[str, ...]
    shown: str
    fd: int  # -1: the file is being skipped, its chunks are read and dropped
    folder_fd: int
    name: str
    entry: pb.FileEntry
    received: int = 0


class TreeWriter:
    """Rebuilds a ReadTree stream inside ``target`` (created if needed)."""

    def __init__(self, target: str) -> None:
        root = open_folder(target, create=True)
        self.writer = EntryWriter()
        self.report = ExtractReport(target=target)
        self._stack = [_Folder((), root, None)]
        self._file: _File | None = None
        self._skipped_prefixes: set[tuple[str, ...]] = set()
        self._ended = False
        self._closed = False

    # ------------------------------------------------------------------ feeding

    def feed(self, item: pb.TreeItem) -> None:
        kind = item.WhichOneof("item")
        if self._ended:
            self._fail("the tree went on after its end")
        if kind == "entry":
            self._entry(item.entry)
        elif kind == "chunk":
            self._chunk(item.chunk)
        elif kind == "skipped":
            if self._file is not None:
                self._drop_file()
            self.report.skipped.append(Skipped(item.skipped.path, item.skipped.reason))
        elif kind == "end":
            if self._file is not None:
                self._fail(f"{self._file.shown} ended before all its bytes arrived")
            self._ended = True
        else:
            self._fail("an empty item")

    def close(self) -> ExtractReport:
        """Finish folders (their modes and times) and return the report."""
        if self._closed:
            return self.report
        complete = self._ended
        self._release()
        if not complete:
            raise MalformedStream("the tree stream ended before its end marker", _MALFORMED)
        return self.report

    def abort(self) -> None:
        """Stop after an error: drop an incomplete file, close every descriptor."""
        self._release()

    # ------------------------------------------------------------------ entries

    def _fail(self, what: str) -> NoReturn:
        self._release()
        raise MalformedStream(f"the server sent a malformed tree: {what}", _MALFORMED)

    def _skip(self, parts: tuple[str, ...], shown: str, reason: str) -> None:
        self._skipped_prefixes.add(parts)
        self.report.skipped.append(Skipped(printable(shown), reason))

    def _under_skipped(self, parts: tuple[str, ...]) -> bool:
        return any(parts[:n] in self._skipped_prefixes for n in range(1, len(parts)))

    def _entry(self, tree_entry: pb.TreeEntry) -> None:
        if self._file is not None:
            self._fail(f"a new entry before the end of {self._file.shown}")
        if not tree_entry.path:
            self._fail("an entry without a path")
        entry = tree_entry.entry
        if entry.kind == "file" and entry.size < 0:
            self._fail("a file with a negative size")
        parts = tuple(p.decode("utf-8", "surrogateescape") for p in tree_entry.path)
        shown = "/" + "/".join(parts)
        self._place(parts, shown, entry)
        if entry.kind == "file" and self._file is None:
            # Not created here, but its chunks still come: read them, write nothing.
            self._file = _File(parts, shown, -1, -1, parts[-1], entry)
            if entry.size == 0:
                self._complete_file()

    def _place(self, parts: tuple[str, ...], shown: str, entry: pb.FileEntry) -> None:
        if self._under_skipped(parts):
            return
        for part in parts:
            reason = unsafe_name_reason(part)
            if reason is not None:
                self._skip(parts, shown, reason)
                return
        while len(self._stack) > 1 and self._stack[-1].parts != parts[: len(self._stack[-1].parts)]:
            self._finish_folder(self._stack.pop())
        parent = self._stack[-1]
        if parent.parts != parts[:-1]:
            self._skip(parts, shown, "its folder was not sent before it")
            return
        name = parts[-1]
        try:
            if entry.kind == "dir":
                self._make_folder(parent, parts, shown, name, entry)
            elif entry.kind == "file":
                self._open_file(parent, parts, shown, name, entry)
            elif entry.kind == "symlink":
                self._make_symlink(parent, parts, shown, name, entry)
            elif entry.kind == "fifo":
                self.writer.fifo(parent.fd, name, entry)
                self.report.others += 1
            else:
                self._skip(parts, shown, f"{entry.kind} not extracted")
        except FileExistsError:
            self._skip(parts, shown, "already exists in the target; not replaced")
        except NotAFolder:
            self._skip(parts, shown, "exists in the target and is not a folder")
        except OSError as e:
            self._skip(parts, shown, f"cannot create it: {e.strerror or e}")

    def _make_folder(
        self,
        parent: _Folder,
        parts: tuple[str, ...],
        shown: str,
        name: str,
        entry: pb.FileEntry,
    ) -> None:
        fd, created = self.writer.folder(parent.fd, name)
        self._stack.append(_Folder(parts, fd, entry if created else None))
        self.report.directories += 1

    def _open_file(
        self,
        parent: _Folder,
        parts: tuple[str, ...],
        shown: str,
        name: str,
        entry: pb.FileEntry,
    ) -> None:
        fd = self.writer.new_file(parent.fd, name)
        self._file = _File(parts, shown, fd, parent.fd, name, entry)
        if entry.size == 0:
            self._complete_file()

    def _make_symlink(
        self,
        parent: _Folder,
        parts: tuple[str, ...],
        shown: str,
        name: str,
        entry: pb.FileEntry,
    ) -> None:
        target = entry.link_target if entry.HasField("link_target") else b""
        try:
            self.writer.symlink(parent.fd, name, target, entry)
        except ValueError as e:
            self._skip(parts, shown, str(e))
            return
        self.report.symlinks += 1

    # ------------------------------------------------------------------ file content

    def _chunk(self, chunk: pb.Chunk) -> None:
        current = self._file
        if current is None:
            self._fail("a chunk outside a file")
        length = chunk.zero_length if chunk.zero_length else len(chunk.data)
        if chunk.zero_length and chunk.data:
            self._fail(f"a chunk of {current.shown} with both data and a zero run")
        if chunk.offset != current.received or length <= 0:
            self._fail(f"chunks of {current.shown} out of order")
        if current.received + length > current.entry.size:
            self._fail(f"{current.shown} got more bytes than its size")
        if current.fd >= 0 and chunk.data:
            try:
                write_sparse(current.fd, chunk.data, chunk.offset)
            except OSError as e:
                self._drop_file(f"cannot write it: {e.strerror or e}")
                return
        current.received += length
        if current.received == current.entry.size:
            self._complete_file()

    def _complete_file(self) -> None:
        current = self._file
        assert current is not None
        self._file = None
        if current.fd < 0:
            return
        try:
            os.ftruncate(current.fd, current.entry.size)
            self.writer.finish_fd(current.fd, current.entry)
        finally:
            os.close(current.fd)
        self.report.files += 1
        self.report.bytes += current.entry.size

    def _drop_file(self, reason: str | None = None) -> None:
        current = self._file
        assert current is not None
        self._file = None
        if current.fd >= 0:
            self.writer.drop_file(current.folder_fd, current.name, current.fd)
        if reason is not None:
            self._skip(current.parts, current.shown, reason)

    # ------------------------------------------------------------------ metadata

    def _finish_folder(self, folder: _Folder) -> None:
        try:
            if folder.entry is not None:
                self.writer.finish_fd(folder.fd, folder.entry)
        finally:
            os.close(folder.fd)

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._drop_file()
        while len(self._stack) > 1:
            self._finish_folder(self._stack.pop())
        os.close(self._stack.pop().fd)
