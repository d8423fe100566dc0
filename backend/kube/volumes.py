"""Namespaces and PersistentVolumeClaims of a cluster, with what lamina needs to know of each:
volume mode, size, StorageClass, CSI driver, and whether the driver offers changed-block
tracking (a SnapshotMetadataService named after it)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from kubernetes import client as k8s

from .cluster import KubeCluster
from .errors import FilesystemVolume, KubeError, KubeForbidden, KubeNotFound, VolumeNotBound
from .objects import CBT_GROUP, CBT_PLURAL, CBT_VERSION, meta, parse_quantity


@dataclass(frozen=True)
class KubeVolume:
    """One PVC as lamina sees it."""

    namespace: str
    name: str
    phase: str
    volume_mode: str
    capacity: str | None  # the quantity as Kubernetes states it, e.g. "10Gi"
    capacity_bytes: int | None
    storage_class: str | None
    driver: str | None  # CSI driver; None when it cannot be told
    cbt: bool | None  # the driver has a SnapshotMetadataService; None: could not be checked
    volume_name: str | None  # the bound PersistentVolume
    access_modes: tuple[str, ...] = ()
    # why the driver could not be told (a refused or failed lookup), for require_block_volume
    driver_error: KubeError | None = field(default=None, compare=False, repr=False)

    @property
    def block(self) -> bool:
        return self.volume_mode == "Block"

    @property
    def bound(self) -> bool:
        return self.phase == "Bound"

    def as_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "driver_error"}
        data["access_modes"] = list(self.access_modes)
        return data


@dataclass
class VolumeListing:
    volumes: list[KubeVolume]
    notes: list[str] = field(default_factory=list)  # what could not be looked up, and why


def list_namespaces(cluster: KubeCluster) -> list[str]:
    result = cluster.request(
        "list",
        "namespaces",
        lambda: cluster.core.list_namespace(_request_timeout=cluster.request_timeout),
    )
    return sorted(str(ns.metadata.name) for ns in result.items if ns.metadata and ns.metadata.name)


def cbt_drivers(cluster: KubeCluster) -> set[str]:
    """Names of the drivers with a SnapshotMetadataService. Empty when the CRD is not installed."""
    try:
        services = cluster.list_custom(CBT_GROUP, CBT_VERSION, CBT_PLURAL)
    except KubeNotFound:
        return set()
    return {str(meta(s).get("name")) for s in services if meta(s).get("name")}


def _storage_class_drivers(cluster: KubeCluster) -> dict[str, str]:
    result = cluster.request(
        "list",
        "storageclasses",
        lambda: cluster.storage.list_storage_class(_request_timeout=cluster.request_timeout),
    )
    return {str(sc.metadata.name): str(sc.provisioner) for sc in result.items if sc.metadata}


def _volume_drivers(cluster: KubeCluster) -> dict[str, str]:
    result = cluster.request(
        "list",
        "persistentvolumes",
        lambda: cluster.core.list_persistent_volume(_request_timeout=cluster.request_timeout),
    )
    return {
        str(pv.metadata.name): str(pv.spec.csi.driver)
        for pv in result.items
        if pv.metadata and pv.spec and pv.spec.csi and pv.spec.csi.driver
    }


def _volume(
    pvc: k8s.V1PersistentVolumeClaim,
    volume_drivers: dict[str, str],
    class_drivers: dict[str, str],
    cbt: set[str] | None,
) -> KubeVolume:
    spec = pvc.spec or k8s.V1PersistentVolumeClaimSpec()
    status = pvc.status or k8s.V1PersistentVolumeClaimStatus()
    requested = (spec.resources.requests or {}) if spec.resources else {}
    capacity = (status.capacity or {}).get("storage") or requested.get("storage")
    # The bound PV names the driver exactly; the StorageClass names the one that will be used.
    driver = volume_drivers.get(spec.volume_name or "") or class_drivers.get(
        spec.storage_class_name or ""
    )
    return KubeVolume(
        namespace=str(pvc.metadata.namespace if pvc.metadata else ""),
        name=str(pvc.metadata.name if pvc.metadata else ""),
        phase=str(status.phase or "Pending"),
        volume_mode=str(spec.volume_mode or "Filesystem"),
        capacity=str(capacity) if capacity else None,
        capacity_bytes=parse_quantity(str(capacity)) if capacity else None,
        storage_class=spec.storage_class_name,
        driver=driver,
        cbt=None if cbt is None or not driver else driver in cbt,
        volume_name=spec.volume_name,
        access_modes=tuple(spec.access_modes or ()),
    )


def _lookups(
    cluster: KubeCluster, notes: list[str]
) -> tuple[dict[str, str], dict[str, str], set[str] | None]:
    """The cluster-scoped lookups behind the driver and CBT columns. Users who may only see
    their namespace get what can be seen, and a note saying what could not."""
    try:
        volume_drivers = _volume_drivers(cluster)
    except KubeForbidden as e:
        volume_drivers = {}
        notes.append(f"{e}; drivers are taken from StorageClasses")
    try:
        class_drivers = _storage_class_drivers(cluster)
    except KubeForbidden as e:
        class_drivers = {}
        notes.append(str(e))
    try:
        cbt: set[str] | None = cbt_drivers(cluster)
    except KubeForbidden as e:
        cbt = None
        notes.append(f"{e}; changed-block tracking unknown")
    return volume_drivers, class_drivers, cbt


def list_volumes(cluster: KubeCluster, namespace: str | None = None) -> VolumeListing:
    """The PVCs of one namespace, or of all namespaces, sorted by namespace and name."""
    if namespace:
        claims = cluster.request(
            "list",
            "persistentvolumeclaims",
            lambda: cluster.core.list_namespaced_persistent_volume_claim(
                namespace, _request_timeout=cluster.request_timeout
            ),
            namespace=namespace,
        )
    else:
        claims = cluster.request(
            "list",
            "persistentvolumeclaims",
            lambda: cluster.core.list_persistent_volume_claim_for_all_namespaces(
                _request_timeout=cluster.request_timeout
            ),
        )
    notes: list[str] = []
    volume_drivers, class_drivers, cbt = _lookups(cluster, notes)
    volumes = [_volume(pvc, volume_drivers, class_drivers, cbt) for pvc in claims.items]
    volumes.sort(key=lambda v: (v.namespace, v.name))
    return VolumeListing(volumes, notes)


def get_volume(cluster: KubeCluster, namespace: str, name: str) -> KubeVolume:
    """One PVC, its driver taken from its PV (or else its StorageClass)."""
    pvc = cluster.request(
        "get",
        "persistentvolumeclaims",
        lambda: cluster.core.read_namespaced_persistent_volume_claim(
            name, namespace, _request_timeout=cluster.request_timeout
        ),
        namespace=namespace,
        name=name,
    )
    spec = pvc.spec or k8s.V1PersistentVolumeClaimSpec()
    volume_drivers: dict[str, str] = {}
    class_drivers: dict[str, str] = {}
    problem: KubeError | None = None
    volume_name, class_name = spec.volume_name, spec.storage_class_name
    if volume_name:
        try:
            pv = cluster.request(
                "get",
                "persistentvolumes",
                lambda: cluster.core.read_persistent_volume(
                    volume_name, _request_timeout=cluster.request_timeout
                ),
                name=volume_name,
            )
            if pv.spec and pv.spec.csi and pv.spec.csi.driver:
                volume_drivers[volume_name] = pv.spec.csi.driver
        except (KubeForbidden, KubeNotFound) as e:
            problem = e
    if not volume_drivers and class_name:
        try:
            sc = cluster.request(
                "get",
                "storageclasses",
                lambda: cluster.storage.read_storage_class(
                    class_name, _request_timeout=cluster.request_timeout
                ),
                name=class_name,
            )
            class_drivers[class_name] = sc.provisioner
        except (KubeForbidden, KubeNotFound) as e:
            problem = problem or e
    volume = _volume(pvc, volume_drivers, class_drivers, None)
    if volume.driver is None and problem is not None:
        return replace(volume, driver_error=problem)
    return volume


def require_block_volume(volume: KubeVolume) -> None:
    """Refuse what lamina cannot back up: Filesystem-mode and unbound PVCs."""
    where = f"PVC {volume.namespace}/{volume.name}"
    if not volume.block:
        raise FilesystemVolume(
            f"{where} is in {volume.volume_mode} mode; lamina backs up block volumes (volumeMode: Block)"
        )
    if not volume.bound:
        raise VolumeNotBound(f"{where} is {volume.phase}, not Bound to a PersistentVolume")
    if not volume.driver:
        if volume.driver_error is not None:
            raise volume.driver_error
        raise KubeError(
            f"{where} has no CSI driver (neither its PersistentVolume nor its StorageClass names one)"
        )
