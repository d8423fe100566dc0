"""Files and folders of a point as message streams: the server's side of ReadFile and ReadTree.

A tree is sent depth first: each entry names its place by path components relative to
the folder being rebuilt; a folder comes before its contents, and a file is followed by
chunks that cover exactly its size, in order (runs of zeros are sent as a length only).
A ``skipped`` item that arrives while a file is still incomplete means that file could not
be read: the client drops what it wrote of it. The client's side, which trusts nothing it
receives, is backend/service/tree_writer.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from lamina.protos import lamina_v1_pb2 as pb

from ..display import printable
from ..errors import LaminaError, UsageError
from ..service import unsafe_name_reason
from ..service.tree_writer import HOLE_BLOCK
from ..service.wire import entry_message

if TYPE_CHECKING:
    from ..service import Entry, PointFiles

CHUNK = 1024 * 1024  # well under gRPC's default 4 MiB message limit
_ZERO_BLOCK = bytes(HOLE_BLOCK)


# ---------------------------------------------------------------------------- server side


def checked_path(path: str) -> str:
    """A path inside a point's filesystem, absolute and without '..'."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"the path {printable(path)!r} must not contain '..'")
    return "/" + "/".join(parts)


def file_chunks(
    files: PointFiles, entry: Entry, offset: int = 0, end: int | None = None
) -> Iterator[pb.Chunk]:
    """Chunks of a file from ``offset`` to ``end`` (default: its size); runs of all-zero
    64 KiB blocks go as lengths only, so holes cost nothing on the wire."""
    stop = entry.size if end is None else min(end, entry.size)
    position = offset
    while position < stop:
        data = files.read(entry, position, min(CHUNK, stop - position))
        if not data:
            raise LaminaError(f"the file ends early at byte {position} of {entry.size}")
        yield from _split_zero_runs(data, position)
        position += len(data)


def _split_zero_runs(data: bytes, offset: int) -> Iterator[pb.Chunk]:
    view = memoryview(data)
    start = 0
    while start < len(data):
        stop = min(start + HOLE_BLOCK, len(data))
        zero = view[start:stop] == _ZERO_BLOCK[: stop - start]
        while stop < len(data):  # extend over following blocks of the same kind
            nxt = min(stop + HOLE_BLOCK, len(data))
            if (view[stop:nxt] == _ZERO_BLOCK[: nxt - stop]) != zero:
                break
            stop = nxt
        if zero:
            yield pb.Chunk(offset=offset + start, zero_length=stop - start)
        else:
            yield pb.Chunk(offset=offset + start, data=bytes(view[start:stop]))
        start = stop


def _raw(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def tree_items(files: PointFiles, path: str) -> Iterator[pb.TreeItem]:
    """The folder (or file) at ``path`` with everything it holds, as TreeItems."""
    path = checked_path(path)
    top = files.lookup(path)
    end = pb.TreeEnd()

    def skip(shown: str, reason: str) -> pb.TreeItem:
        skipped = pb.SkippedPath(path=printable(shown), reason=reason)
        end.skipped.append(skipped)
        return pb.TreeItem(skipped=skipped)

    # Depth first with an explicit stack: a deep tree cannot exhaust the recursion limit.
    stack: list[tuple[Entry, tuple[str, ...], str]] = []
    if path == "/":
        stack.extend((c, (c.name,), "/" + c.name) for c in reversed(files.children(top)))
    else:
        stack.append((top, (PurePosixPath(path).name,), path))
    while stack:
        entry, parts, shown = stack.pop()
        reason = unsafe_name_reason(parts[-1])
        if reason is not None:
            yield skip(shown, reason)
            continue
        try:
            target = files.readlink(entry) if entry.kind == "symlink" else None
            children = files.children(entry) if entry.kind == "dir" else []
        except LaminaError as e:
            yield skip(shown, f"cannot read it: {e}")
            continue
        yield pb.TreeItem(
            entry=pb.TreeEntry(
                path=[_raw(p) for p in parts],
                display_path=printable(shown),
                entry=entry_message(entry, target),
            )
        )
        if entry.kind == "file":
            try:
                yield from (pb.TreeItem(chunk=c) for c in file_chunks(files, entry))
            except LaminaError as e:
                yield skip(shown, f"cannot read it: {e}")
                continue
            end.files += 1
            end.bytes += entry.size
        elif entry.kind == "dir":
            end.directories += 1
            base = shown.rstrip("/")
            stack.extend((c, (*parts, c.name), f"{base}/{c.name}") for c in reversed(children))
        elif entry.kind == "symlink":
            end.symlinks += 1
    yield pb.TreeItem(end=end)
