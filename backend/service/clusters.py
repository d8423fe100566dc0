"""Clusters and their volumes, for the service layer: kubeconfig contexts and the local cluster.

The local cluster keeps block volumes as image files (or symlinks to block devices) under a
root folder, next to its snapshots (see docs/local-cluster.md):

    ROOT/volumes/<namespace>/<name>      a volume: image file, or symlink to a block device
    ROOT/snapshots/...                   frozen copies, managed by lamina.backend.local

Backing up a local volume goes the way a cluster backup goes: take a snapshot, ask the
SnapshotMetadata gRPC service (a real server, in process, on loopback) for the allocated or
changed blocks, and back up exactly those, recording the snapshot handle for the next delta.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..engine.extents import Range
from ..errors import LaminaError, UsageError
from ..limits import checked_context
from .models import ClusterSummary, ClusterVolume, Reachability

if TYPE_CHECKING:
    from ..kube.config import ClusterInfo

LOCAL = "local"
MADE_BY_BACKUP = "backup"  # snapshots a backup takes, and may delete once no point needs them
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def list_clusters(kubeconfig: str | None, local_root: str | None) -> list[ClusterSummary]:
    """The kubeconfig's contexts (none when there is no kubeconfig), then the local cluster."""
    return [_summary(c, local_root) for c in _contexts(kubeconfig)]


def check_clusters(
    kubeconfig: str | None,
    local_root: str | None,
    names: Iterable[str] | None = None,
    *,
    timeout: float = 3.0,
) -> dict[str, Reachability]:
    """Whether each cluster answers, probed in parallel; never hangs past the timeout."""
    from ..kube.config import check_reachability

    wanted = {checked_context(n) for n in names} if names is not None else None
    infos = [c for c in _contexts(kubeconfig) if wanted is None or c.name in wanted]
    results = {
        name: Reachability(r.ok, r.detail, r.seconds)
        for name, r in check_reachability(infos, kubeconfig, timeout=timeout).items()
    }
    if any(c.local for c in infos):
        ok = bool(local_root) and os.path.isdir(local_root or "")
        results[LOCAL] = Reachability(
            ok,
            f"volumes under {local_root}" if ok else "no local cluster folder (see --local-root)",
            0.0,
        )
    return results


def _contexts(kubeconfig: str | None) -> list[ClusterInfo]:
    """The one listing of clusters: kube's, which ends with the local pseudo-cluster."""
    from ..kube.config import list_clusters as kube_clusters

    return kube_clusters(kubeconfig, include_local=True)


def _summary(c: ClusterInfo, local_root: str | None) -> ClusterSummary:
    if c.local:
        return ClusterSummary(c.name, LOCAL, False, local_root, None, c.cluster, c.user)
    return ClusterSummary(c.name, "kubernetes", c.current, c.server, c.namespace, c.cluster, c.user)


def local_volumes(root: str | Path, namespace: str | None = None) -> list[ClusterVolume]:
    volumes_dir = Path(root) / "volumes"
    out: list[ClusterVolume] = []
    if not volumes_dir.is_dir():
        return out
    for ns_dir in sorted(volumes_dir.iterdir()):
        if not ns_dir.is_dir() or (namespace and ns_dir.name != namespace):
            continue
        for path in sorted(ns_dir.iterdir()):
            if path.name.startswith("."):
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            if stat.S_ISBLK(st.st_mode):
                with open(path, "rb") as f:
                    capacity = f.seek(0, os.SEEK_END)
            elif stat.S_ISREG(st.st_mode):
                capacity = st.st_size
            else:
                continue
            out.append(
                ClusterVolume(
                    cluster=LOCAL,
                    namespace=ns_dir.name,
                    name=path.name,
                    mode="Block",
                    capacity=capacity,
                    storage_class="local-image",
                    driver="lamina.local",
                    cbt=True,
                    source=str(path.absolute()),
                )
            )
    return out


def add_local_volume(root: str | Path, namespace: str, name: str, source: str | Path) -> Path:
    """Register an image file or block device as a volume of the local cluster (a symlink)."""
    for what, value in (("namespace", namespace), ("volume name", name)):
        if not _NAME_RE.fullmatch(value):
            raise UsageError(f"{what} {value!r} must be lowercase letters, digits, '-' or '.'")
    folder = Path(root) / "volumes" / namespace
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / name
    if link.exists() or link.is_symlink():
        raise UsageError(f"volume {namespace}/{name} already exists in {root}")
    os.symlink(os.path.abspath(source), link)
    return link


def snapshot_name(volume: str) -> str:
    """A name for a new snapshot of a volume, unique to the millisecond and sortable."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{int(time.time() * 1000) % 1000:03d}"
    return f"{volume[: 253 - len(stamp) - 1]}-{stamp}"


@dataclass
class LocalBackupPlan:
    """What a local-cluster backup reads: a snapshot, and where its ranges come from."""

    source: str
    snapshot_handle: str
    parent: str
    changed_ranges: Callable[[], Iterable[Range]] | None
    allocated_ranges: Callable[[], Iterable[Range]]
    origin: str
    close: Callable[[], None]


def plan_local_backup(
    root: str | Path, namespace: str, name: str, base_handle: str | None, base_point: str | None
) -> LocalBackupPlan:
    """Snapshot a local volume and open a CBT session for it over real gRPC on loopback."""
    from ..cbt.client import SnapshotMetadataClient
    from ..cbt.server import start_server
    from ..local.cluster import LocalCluster, SnapshotNotFound

    volume = Path(root) / "volumes" / namespace / name
    if not volume.exists():
        raise LaminaError(f"no volume {namespace}/{name} in the local cluster at {root}")
    cluster = LocalCluster(root)
    held = contextlib.ExitStack()  # the base and the new snapshot stay until the backup ends
    base = None
    if base_handle:
        try:
            base = cluster.snapshot_by_handle(base_handle)
            held.enter_context(cluster.hold(base))
        except (SnapshotNotFound, FileNotFoundError):
            base = None
    try:
        snap = cluster.create_snapshot(
            str(volume), namespace, snapshot_name(name), made_by=MADE_BY_BACKUP
        )
        held.enter_context(cluster.hold(snap))
        server = start_server(root, "127.0.0.1:0")
    except BaseException:
        held.close()
        raise
    client = SnapshotMetadataClient(server.address)

    def close() -> None:
        client.close()
        server.stop()
        held.close()

    allocated = lambda: client.allocated(namespace, snap.name, capacity_hint=snap.size)  # noqa: E731
    if base is not None and base_point is not None:
        return LocalBackupPlan(
            source=str(snap.image),
            snapshot_handle=snap.handle,
            parent=base_point,
            changed_ranges=lambda: client.delta(
                namespace, base.handle, snap.name, capacity_hint=snap.size
            ),
            allocated_ranges=allocated,
            origin=f"CBT GetMetadataDelta from snapshot {base.handle} (gRPC {server.address})",
            close=close,
        )
    return LocalBackupPlan(
        source=str(snap.image),
        snapshot_handle=snap.handle,
        parent="none" if base_point is None else base_point,
        changed_ranges=None,
        allocated_ranges=allocated,
        origin=f"CBT GetMetadataAllocated (gRPC {server.address})",
        close=close,
    )
