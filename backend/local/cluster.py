"""The local cluster: block volumes as image files (or block devices), snapshots as frozen copies.

A stand-in for a CSI driver's snapshots on one machine, laid out under a root folder:

    ROOT/snapshots/<namespace>/<name>/image       the frozen copy of the volume
    ROOT/snapshots/<namespace>/<name>/meta.json   handle, source, size, created, copy method
    ROOT/handles/<handle>.json                    {"namespace": ..., "name": ...}

A snapshot is addressed by namespace and name (like a VolumeSnapshot) or by its generated
handle (like VolumeSnapshotContent.status.snapshotHandle). See docs/local-cluster.md.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.extents import allocated_ranges
from ..engine.repository.config import utc_now
from ..errors import LaminaError, SourceError, UsageError
from ..names import name_problem, shown

# _IOW(0x94, 9, int): clone a whole file by sharing its extents (btrfs, xfs with reflink).
FICLONE = 0x40049409
COPY_CHUNK = 1024 * 1024

_NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_HANDLE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class SnapshotNotFound(LaminaError):
    """No snapshot of that name or handle in the local cluster."""


class SnapshotExists(LaminaError):
    """A snapshot of that name already exists in the namespace."""


@dataclass(frozen=True)
class LocalSnapshot:
    namespace: str
    name: str
    handle: str
    source: str
    size: int
    created: str
    copy_method: str
    image: Path
    made_by: str = ""  # "backup": taken by a lamina backup of a local volume; "": by hand

    def as_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "handle": self.handle,
            "source": self.source,
            "size": self.size,
            "created": self.created,
            "copy_method": self.copy_method,
            "image": str(self.image),
            "made_by": self.made_by,
        }


def _check_path_component(value: str, what: str) -> None:
    problem = name_problem(value)
    if problem is not None:
        raise UsageError(f"not a {what}: '{shown(value)}' ({problem})")


def check_namespace(namespace: str) -> str:
    _check_path_component(namespace, "namespace")
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise UsageError(
            f"not a namespace: {namespace!r} (lowercase letters, digits and '-', at most 63)"
        )
    return namespace


def check_snapshot_name(name: str) -> str:
    _check_path_component(name, "snapshot name")
    if not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"not a snapshot name: {name!r} (lowercase letters, digits, '-' and '.', at most 253)"
        )
    return name


def volume_size(fd: int, path: str) -> int:
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    raise SourceError(f"{path} is neither a regular file nor a block device")


def _try_reflink(src_fd: int, dst_fd: int) -> bool:
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS):
            return False
        raise
    return True


def _sparse_copy(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy only data ranges (SEEK_DATA/SEEK_HOLE), and leave all-zero chunks as holes."""
    zeros = bytes(COPY_CHUNK)
    for start, length in allocated_ranges(src_fd, size):
        offset, end = start, start + length
        while offset < end:
            want = min(COPY_CHUNK, end - offset)
            data = os.pread(src_fd, want, offset)
            if len(data) != want:
                raise SourceError(f"short read at {offset} while copying the volume")
            if data != zeros[:want]:
                os.pwrite(dst_fd, data, offset)
            offset += want
    os.ftruncate(dst_fd, size)


def frozen_copy(source: str, target: Path) -> tuple[int, str]:
    """Copy ``source`` to the new file ``target``. Returns (size, method)."""
    try:
        src_fd = os.open(source, os.O_RDONLY)
    except FileNotFoundError:
        raise SourceError(f"volume {source} does not exist") from None
    except OSError as e:
        raise SourceError(f"cannot open volume {source}: {e.strerror}") from None
    try:
        size = volume_size(src_fd, source)
        dst_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            if stat.S_ISREG(os.fstat(src_fd).st_mode) and _try_reflink(src_fd, dst_fd):
                method = "reflink"
            else:
                _sparse_copy(src_fd, dst_fd, size)
                method = "sparse copy"
            os.fsync(dst_fd)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)
    return size, method


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class LocalCluster:
    """Snapshots of local block volumes under one root folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.snapshots_dir = self.root / "snapshots"
        self.handles_dir = self.root / "handles"

    def _snapshot_dir(self, namespace: str, name: str) -> Path:
        return self.snapshots_dir / check_namespace(namespace) / check_snapshot_name(name)

    def create_snapshot(
        self, source: str, namespace: str, name: str, *, made_by: str = ""
    ) -> LocalSnapshot:
        final = self._snapshot_dir(namespace, name)
        if final.exists():
            raise SnapshotExists(f"snapshot {namespace}/{name} already exists in {self.root}")
        final.parent.mkdir(parents=True, exist_ok=True)
        self.handles_dir.mkdir(parents=True, exist_ok=True)
        building = final.parent / f".creating-{name}-{uuid.uuid4().hex[:8]}"
        building.mkdir()
        try:
            size, method = frozen_copy(source, building / "image")
            meta = {
                "handle": str(uuid.uuid4()),
                "namespace": namespace,
                "name": name,
                "source": os.path.realpath(source),
                "size": size,
                "created": utc_now(),
                "copy_method": method,
            }
            if made_by:
                meta["made_by"] = made_by
            _write_json(building / "meta.json", meta)
            _write_json(
                self.handles_dir / f"{meta['handle']}.json", {"namespace": namespace, "name": name}
            )
            try:
                os.rename(building, final)
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    (self.handles_dir / f"{meta['handle']}.json").unlink(missing_ok=True)
                    raise SnapshotExists(
                        f"snapshot {namespace}/{name} already exists in {self.root}"
                    ) from None
                raise
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        return self.snapshot(namespace, name)

    def snapshot(self, namespace: str, name: str) -> LocalSnapshot:
        folder = self._snapshot_dir(namespace, name)
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except FileNotFoundError:
            raise SnapshotNotFound(f"no snapshot {namespace}/{name} in {self.root}") from None
        return LocalSnapshot(
            namespace=str(meta["namespace"]),
            name=str(meta["name"]),
            handle=str(meta["handle"]),
            source=str(meta["source"]),
            size=int(meta["size"]),
            created=str(meta["created"]),
            copy_method=str(meta.get("copy_method", "")),
            image=folder / "image",
            made_by=str(meta.get("made_by", "")),
        )

    @contextlib.contextmanager
    def hold(self, snapshot: LocalSnapshot) -> Iterator[None]:
        """Keep ``snapshot`` from being deleted (by any process) while the block runs."""
        fd = os.open(snapshot.image.parent / "meta.json", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def delete_snapshot(self, snapshot: LocalSnapshot) -> bool:
        """Delete a snapshot unless a backup holds it. Returns whether it went.

        The folder is renamed away first, so a crash leaves either the whole snapshot or
        a hidden folder that the next listing ignores, never half a snapshot.
        """
        folder = snapshot.image.parent
        try:
            fd = os.open(folder / "meta.json", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a backup is reading it
            doomed = folder.parent / f".deleting-{folder.name}-{uuid.uuid4().hex[:8]}"
            os.rename(folder, doomed)
        finally:
            os.close(fd)
        handle_file = self.handles_dir / f"{snapshot.handle}.json"
        with contextlib.suppress(OSError, ValueError):
            if json.loads(handle_file.read_text()) == {
                "namespace": snapshot.namespace,
                "name": snapshot.name,
            }:
                handle_file.unlink()
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def snapshot_by_handle(self, handle: str) -> LocalSnapshot:
        if not _HANDLE_RE.fullmatch(handle):
            raise SnapshotNotFound(f"no snapshot with handle {handle!r} in {self.root}")
        try:
            ref = json.loads((self.handles_dir / f"{handle}.json").read_text())
        except FileNotFoundError:
            raise SnapshotNotFound(f"no snapshot with handle {handle} in {self.root}") from None
        snap = self.snapshot(str(ref["namespace"]), str(ref["name"]))
        if snap.handle != handle:  # the name was reused by a newer snapshot
            raise SnapshotNotFound(f"no snapshot with handle {handle} in {self.root}")
        return snap

    def list_snapshots(self) -> list[LocalSnapshot]:
        found = []
        for namespace_dir in self._folders(self.snapshots_dir):
            for snapshot_dir in self._folders(namespace_dir):
                with contextlib.suppress(SnapshotNotFound, UsageError):
                    found.append(self.snapshot(namespace_dir.name, snapshot_dir.name))
        return sorted(found, key=lambda s: (s.namespace, s.created, s.name))

    @staticmethod
    def _folders(path: Path) -> Iterator[Path]:
        if not path.is_dir():
            return
        for child in sorted(path.iterdir()):
            if child.is_dir() and not child.name.startswith("."):
                yield child
