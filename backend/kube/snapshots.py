"""CSI VolumeSnapshots (snapshot.storage.k8s.io/v1) of block PVCs: create, wait, read, delete.

What a backup records of a snapshot comes from its bound VolumeSnapshotContent: the CSI
snapshot handle (the base of the next changed-block delta), the restore size and the driver.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from .cluster import KubeCluster
from .errors import KubeError, NoSnapshotClass, SnapshotFailed, SnapshotTimeout
from .objects import (
    DEFAULT_SNAPSHOT_CLASS_ANNOTATION,
    SNAPSHOT_GROUP,
    SNAPSHOT_VERSION,
    dns_label,
    meta,
    parse_quantity,
    section,
)
from .volumes import get_volume, require_block_volume

DEFAULT_SNAPSHOT_TIMEOUT = 300.0


@dataclass(frozen=True)
class SnapshotInfo:
    """A ready VolumeSnapshot and what its VolumeSnapshotContent says."""

    namespace: str
    name: str
    pvc: str | None
    snapshot_class: str | None
    content_name: str
    handle: str
    restore_size: int
    driver: str
    creation_time: str | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def choose_snapshot_class(cluster: KubeCluster, driver: str, requested: str | None = None) -> str:
    """The VolumeSnapshotClass for `driver`: the requested one (checked), else the one marked
    default, else the only one; NoSnapshotClass if there is none or the choice is ambiguous."""
    classes = cluster.list_custom(SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshotclasses")
    matching = sorted(
        (c for c in classes if c.get("driver") == driver), key=lambda c: str(meta(c).get("name"))
    )
    names = [str(meta(c).get("name")) for c in matching]
    if requested:
        if requested in names:
            return requested
        other = next((c for c in classes if meta(c).get("name") == requested), None)
        if other is not None:
            raise NoSnapshotClass(
                f"VolumeSnapshotClass {requested!r} is for driver {other.get('driver')!r}, not {driver!r}"
            )
        raise NoSnapshotClass(
            f"no VolumeSnapshotClass named {requested!r} (context {cluster.context!r})"
        )
    if not matching:
        raise NoSnapshotClass(
            f"no VolumeSnapshotClass for CSI driver {driver!r} (context {cluster.context!r}); "
            "create one to take snapshots of its volumes"
        )
    defaults = [
        str(meta(c).get("name"))
        for c in matching
        if (meta(c).get("annotations") or {}).get(DEFAULT_SNAPSHOT_CLASS_ANNOTATION) == "true"
    ]
    if defaults:
        return defaults[0]
    if len(names) == 1:
        return names[0]
    raise NoSnapshotClass(
        f"several VolumeSnapshotClasses for driver {driver!r} ({', '.join(names)}) and none is "
        "marked default; choose one with --class"
    )


def default_snapshot_name(pvc: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{dns_label(pvc, 40)}-lamina-{stamp}"


def volume_snapshot_manifest(
    namespace: str, name: str, pvc: str, snapshot_class: str | None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"source": {"persistentVolumeClaimName": pvc}}
    if snapshot_class:
        spec["volumeSnapshotClassName"] = snapshot_class
    return {
        "apiVersion": f"{SNAPSHOT_GROUP}/{SNAPSHOT_VERSION}",
        "kind": "VolumeSnapshot",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "lamina", "lamina.io/pvc": dns_label(pvc)},
        },
        "spec": spec,
    }


def create_snapshot(
    cluster: KubeCluster,
    namespace: str,
    pvc: str,
    *,
    name: str | None = None,
    snapshot_class: str | None = None,
    timeout: float = DEFAULT_SNAPSHOT_TIMEOUT,
    poll: float = 1.0,
) -> SnapshotInfo:
    """Snapshot a bound block PVC and wait until the snapshot is ready to use."""
    volume = get_volume(cluster, namespace, pvc)
    require_block_volume(volume)
    assert volume.driver is not None
    chosen = choose_snapshot_class(cluster, volume.driver, snapshot_class)
    name = name or default_snapshot_name(pvc)
    cluster.create_custom(
        SNAPSHOT_GROUP,
        SNAPSHOT_VERSION,
        "volumesnapshots",
        volume_snapshot_manifest(namespace, name, pvc, chosen),
        namespace=namespace,
    )
    return wait_for_snapshot(cluster, namespace, name, timeout=timeout, poll=poll)


def _read_ready(cluster: KubeCluster, snapshot: dict[str, Any]) -> SnapshotInfo | None:
    """The SnapshotInfo of a ready snapshot; None while not ready; SnapshotFailed on error."""
    m = meta(snapshot)
    where = f"VolumeSnapshot {m.get('namespace')}/{m.get('name')}"
    status = section(snapshot, "status")
    error = section(status, "error")
    if error.get("message"):
        raise SnapshotFailed(f"{where} failed: {error['message']}")
    content_name = status.get("boundVolumeSnapshotContentName")
    if status.get("readyToUse") is not True or not content_name:
        return None
    content = cluster.get_custom(
        SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshotcontents", str(content_name)
    )
    content_status = section(content, "status")
    content_error = section(content_status, "error")
    if content_error.get("message"):
        raise SnapshotFailed(f"{where} failed: {content_error['message']}")
    handle = content_status.get("snapshotHandle")
    if not handle:
        return None  # ready is reported before the content caught up: look again
    restore_size = content_status.get("restoreSize")
    if restore_size is None:
        restore_size = status.get("restoreSize")
    if restore_size is None:
        raise KubeError(f"{where} is ready but states no restore size")
    spec = section(snapshot, "spec")
    return SnapshotInfo(
        namespace=str(m.get("namespace")),
        name=str(m.get("name")),
        pvc=section(spec, "source").get("persistentVolumeClaimName"),
        snapshot_class=spec.get("volumeSnapshotClassName")
        or section(content, "spec").get("volumeSnapshotClassName"),
        content_name=str(content_name),
        handle=str(handle),
        restore_size=parse_quantity(restore_size),
        driver=str(section(content, "spec").get("driver", "")),
        creation_time=str(status["creationTime"]) if status.get("creationTime") else None,
    )


def get_snapshot(cluster: KubeCluster, namespace: str, name: str) -> SnapshotInfo | None:
    """A snapshot's details if it is ready, None if not yet; errors if it failed or is missing."""
    snapshot = cluster.get_custom(
        SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshots", name, namespace
    )
    return _read_ready(cluster, snapshot)


def wait_for_snapshot(
    cluster: KubeCluster,
    namespace: str,
    name: str,
    *,
    timeout: float = DEFAULT_SNAPSHOT_TIMEOUT,
    poll: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> SnapshotInfo:
    """Poll until the snapshot is ready; SnapshotTimeout after `timeout` seconds."""
    deadline = clock() + timeout
    while True:
        info = get_snapshot(cluster, namespace, name)
        if info is not None:
            return info
        remaining = deadline - clock()
        if remaining <= 0:
            raise SnapshotTimeout(
                f"VolumeSnapshot {namespace}/{name} was not ready within {timeout:g} s; it is left in "
                f"place (delete it with: lamina kube delete-snapshot --context {cluster.context} "
                f"--namespace {namespace} {name})"
            )
        time.sleep(min(poll, remaining))


def delete_snapshot(cluster: KubeCluster, namespace: str, name: str) -> None:
    cluster.delete_custom(SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshots", name, namespace)
