"""What a real cluster has around a CSI driver, for the real loopback API server: the
VolumeSnapshot CRDs as the external-snapshotter installs them, and a TEST STAND-IN for the
snapshot controller, the CSI external-provisioner and the driver itself.

- ``install_snapshot_crds(api)``: the CRDs ``volumesnapshots``, ``volumesnapshotcontents``,
  ``volumesnapshotclasses`` (``snapshot.storage.k8s.io/v1``, the external-snapshotter's names,
  scopes, short names and status subresources; the schema is left open) and
  ``snapshotmetadataservices`` (``cbt.storage.k8s.io/v1beta1``, cluster-scoped), once per
  cluster; waits until they are Established.
- ``CsiStandIn``: a thread that does, for the namespaces it is given, what the snapshot
  controller, the CSI sidecars and a hostpath-like driver do, with image files in a local
  folder: a VolumeSnapshot of a Bound PVC of its driver becomes a snapshot of lamina's
  LocalCluster under ``folder/local`` (a frozen copy of the PV's image file, which lamina's
  SnapshotMetadata server can serve for CBT), a VolumeSnapshotContent (its handle,
  restoreSize, creationTime) and ``readyToUse``; a Pending PVC
  of a StorageClass whose provisioner is its driver gets a new PV (an empty sparse image of
  the requested size in Block mode, a folder in Filesystem mode, or a copy of the snapshot's
  image for a PVC whose ``dataSource`` is a ready VolumeSnapshot), pre-bound to the claim so
  that the real PV binder binds them; a VolumeSnapshot that is deleted takes its content and
  the frozen copy with it (deletionPolicy Delete). The PVs are CSI PVs of the driver whose
  ``volumeHandle`` is the local path: the test node (kube_node.py) maps them to that path.
  It is not Kubernetes code; only the API server, the PV binder and the Job controller are.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
import urllib3

from lamina.backend.local import LocalCluster
from lamina.backend.local.cluster import SnapshotExists
from tests.support.kube_cluster import new_api_client

Obj = dict[str, Any]

SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
CBT_GROUP = "cbt.storage.k8s.io"
TEST_DRIVER = "hostpath.csi.lamina.test"
TEST_STORAGE_CLASS = "lamina-test-csi"
TEST_SNAPSHOT_CLASS = "lamina-test-snapclass"
APPROVED = "https://github.com/kubernetes-csi/external-snapshotter/pull/419"

_OPEN_SCHEMA = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}


def _crd(
    group: str,
    version: str,
    plural: str,
    kind: str,
    scope: str,
    short: list[str],
    status: bool,
    approved: str,
) -> Obj:
    served: Obj = {"name": version, "served": True, "storage": True, "schema": _OPEN_SCHEMA}
    if status:
        served["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{group}",
            "annotations": {"api-approved.kubernetes.io": approved},
        },
        "spec": {
            "group": group,
            "names": {
                "plural": plural,
                "singular": kind.lower(),
                "kind": kind,
                "listKind": f"{kind}List",
                "shortNames": short,
            },
            "scope": scope,
            "versions": [served],
        },
    }


SNAPSHOT_CRDS = [
    _crd(SNAPSHOT_GROUP, "v1", "volumesnapshots", "VolumeSnapshot", "Namespaced", ["vs"], True, APPROVED),
    _crd(SNAPSHOT_GROUP, "v1", "volumesnapshotcontents", "VolumeSnapshotContent", "Cluster", ["vsc", "vscs"], True, APPROVED),
    _crd(SNAPSHOT_GROUP, "v1", "volumesnapshotclasses", "VolumeSnapshotClass", "Cluster", ["vsclass", "vsclasses"], False, APPROVED),
    _crd(CBT_GROUP, "v1beta1", "snapshotmetadataservices", "SnapshotMetadataService", "Cluster", ["sms"], False,
         "https://github.com/kubernetes-csi/external-snapshot-metadata/pull/1"),
]  # fmt: skip


def install_snapshot_crds(api: Any) -> None:
    """Create the snapshot and CBT CRDs (those already there are kept) and wait for them."""
    extensions: Any = kubernetes.client.ApiextensionsV1Api(api)
    for crd in SNAPSHOT_CRDS:
        try:
            extensions.create_custom_resource_definition(crd)
        except kubernetes.client.ApiException as error:
            if error.status != 409:
                raise
    deadline = time.monotonic() + 30
    for crd in SNAPSHOT_CRDS:
        while True:
            found = extensions.read_custom_resource_definition(crd["metadata"]["name"])
            if any(
                c.type == "Established" and c.status == "True"
                for c in (found.status.conditions or [])
            ):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {crd['metadata']['name']} not Established")
            time.sleep(0.05)


def ensure_classes(
    api: Any,
    driver: str = TEST_DRIVER,
    storage_class: str = TEST_STORAGE_CLASS,
    snapshot_class: str = TEST_SNAPSHOT_CLASS,
) -> None:
    """A StorageClass (Immediate binding) and a default VolumeSnapshotClass for `driver`."""
    storage: Any = kubernetes.client.StorageV1Api(api)
    custom: Any = kubernetes.client.CustomObjectsApi(api)
    for create, body in (
        (
            storage.create_storage_class,
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": storage_class},
                "provisioner": driver,
                "reclaimPolicy": "Delete",
                "volumeBindingMode": "Immediate",
            },
        ),
        (
            lambda b: custom.create_cluster_custom_object(
                SNAPSHOT_GROUP, "v1", "volumesnapshotclasses", b
            ),
            {
                "apiVersion": f"{SNAPSHOT_GROUP}/v1",
                "kind": "VolumeSnapshotClass",
                "metadata": {
                    "name": snapshot_class,
                    "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"},
                },
                "driver": driver,
                "deletionPolicy": "Delete",
            },
        ),
    ):
        try:
            create(body)
        except kubernetes.client.ApiException as error:
            if error.status != 409:
                raise


def parse_size(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1000, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def csi_pv(
    name: str, path: Path, size: str, mode: str, claim: Obj, storage_class: str, driver: str
) -> Obj:
    """A CSI PV of the test driver whose volumeHandle is the local path, pre-bound to `claim`."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": driver}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": mode,
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": storage_class,
            "csi": {"driver": driver, "volumeHandle": str(path)},
            "claimRef": claim,
        },
    }


class CsiStandIn:
    """Snapshot controller + external-provisioner + driver for the test (see the module)."""

    def __init__(
        self,
        kubeconfig: Path | str,
        folder: Path,
        namespaces: Collection[str],
        *,
        driver: str = TEST_DRIVER,
        interval: float = 0.1,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.folder = Path(folder)
        self.namespaces = list(namespaces)
        self.driver = driver
        self.interval = interval
        self.errors: list[str] = []
        self.outages = 0  # rounds cut short because the API server did not answer
        self.deleted_snapshots: list[str] = []  # NAMESPACE/NAME of snapshots deleted with theirs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._api: Any = None
        # the snapshots are a LocalCluster's: lamina's own SnapshotMetadata server
        # (backend/cbt/server.py) serves their changed blocks, as a CSI driver's sidecar would
        self.local = LocalCluster(self.folder / "local")

    def __enter__(self) -> CsiStandIn:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._api = new_api_client(self.kubeconfig)
        self._thread = threading.Thread(target=self._loop, name="csi-stand-in", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._api.close()

    @property
    def core(self) -> Any:
        return kubernetes.client.CoreV1Api(self._api)

    @property
    def custom(self) -> Any:
        return kubernetes.client.CustomObjectsApi(self._api)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                for namespace in self.namespaces:
                    self._snapshots(namespace)
                    self._claims(namespace)
            except (urllib3.exceptions.HTTPError, ConnectionError):
                self.outages += 1  # the API server is away (a fault test restarts it)
            except kubernetes.client.ApiException as error:
                if error.status < 500:
                    self.errors.append(repr(error)[:300])
                else:
                    self.outages += 1
            except Exception as error:  # the next round tries again
                self.errors.append(repr(error)[:300])
            self._stop.wait(self.interval)

    def _volume_of(self, namespace: str, claim: str) -> Any:
        try:
            pvc = self.core.read_namespaced_persistent_volume_claim(claim, namespace)
        except kubernetes.client.ApiException:
            return None
        if pvc.status.phase != "Bound":
            return None
        pv = self.core.read_persistent_volume(pvc.spec.volume_name)
        if pv.spec.csi is None or pv.spec.csi.driver != self.driver:
            return None
        return pv

    def _snapshots(self, namespace: str) -> None:
        try:
            listed = self.custom.list_namespaced_custom_object(
                SNAPSHOT_GROUP, "v1", namespace, "volumesnapshots"
            )
            contents = self.custom.list_cluster_custom_object(
                SNAPSHOT_GROUP, "v1", "volumesnapshotcontents"
            )
        except kubernetes.client.ApiException as error:
            if error.status != 404:
                raise
            # an API server just started again serves custom resources a moment later
            self.outages += 1
            return
        present = {s["metadata"]["name"] for s in listed["items"]}
        self._deleted_snapshots(namespace, present, contents["items"])
        for snapshot in listed["items"]:
            if (snapshot.get("status") or {}).get("readyToUse"):
                continue
            source = snapshot["spec"]["source"].get("persistentVolumeClaimName")
            pv = self._volume_of(namespace, source or "")
            if pv is None:
                continue  # a real controller waits for the claim too
            uid = snapshot["metadata"]["uid"]
            name = snapshot["metadata"]["name"]
            try:
                local = self.local.create_snapshot(
                    pv.spec.csi.volume_handle, namespace, name, made_by="csi-stand-in"
                )
            except SnapshotExists:
                local = self.local.snapshot(namespace, name)
            image = local.image
            content_name = f"snapcontent-{uid}"
            content = {
                "apiVersion": f"{SNAPSHOT_GROUP}/v1",
                "kind": "VolumeSnapshotContent",
                "metadata": {"name": content_name},
                "spec": {
                    "deletionPolicy": "Delete",
                    "driver": self.driver,
                    "source": {"volumeHandle": pv.spec.csi.volume_handle},
                    "volumeSnapshotClassName": snapshot["spec"].get("volumeSnapshotClassName")
                    or TEST_SNAPSHOT_CLASS,
                    "volumeSnapshotRef": {
                        "apiVersion": f"{SNAPSHOT_GROUP}/v1",
                        "kind": "VolumeSnapshot",
                        "name": snapshot["metadata"]["name"],
                        "namespace": namespace,
                        "uid": uid,
                    },
                },
            }
            try:
                created = self.custom.create_cluster_custom_object(
                    SNAPSHOT_GROUP, "v1", "volumesnapshotcontents", content
                )
            except kubernetes.client.ApiException as error:
                if error.status != 409:
                    raise
                created = self.custom.get_cluster_custom_object(
                    SNAPSHOT_GROUP, "v1", "volumesnapshotcontents", content_name
                )
            size = image.stat().st_size
            created["status"] = {
                "creationTime": time.time_ns(),
                "readyToUse": True,
                "restoreSize": size,
                "snapshotHandle": local.handle,
            }
            self.custom.replace_cluster_custom_object_status(
                SNAPSHOT_GROUP, "v1", "volumesnapshotcontents", content_name, created
            )
            snapshot["status"] = {
                "boundVolumeSnapshotContentName": content_name,
                "creationTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "readyToUse": True,
                "restoreSize": pv.spec.capacity["storage"],
            }
            self.custom.replace_namespaced_custom_object_status(
                SNAPSHOT_GROUP,
                "v1",
                namespace,
                "volumesnapshots",
                snapshot["metadata"]["name"],
                snapshot,
            )

    def _deleted_snapshots(self, namespace: str, present: set[str], contents: list[Obj]) -> None:
        """A VolumeSnapshot that is gone takes its content and the driver's snapshot with it
        (deletionPolicy Delete), as the snapshot controller and the driver do: its handle is
        then unknown to the SnapshotMetadata server."""
        for local in self.local.list_snapshots():
            if local.namespace != namespace or local.name in present:
                continue
            if local.made_by != "csi-stand-in":
                continue
            if self.local.delete_snapshot(local):
                self.deleted_snapshots.append(f"{namespace}/{local.name}")
        for content in contents:
            ref = content["spec"].get("volumeSnapshotRef") or {}
            if content["spec"].get("driver") != self.driver or ref.get("namespace") != namespace:
                continue
            if ref.get("name") in present:
                continue
            try:
                self.custom.delete_cluster_custom_object(
                    SNAPSHOT_GROUP, "v1", "volumesnapshotcontents", content["metadata"]["name"]
                )
            except kubernetes.client.ApiException as error:
                if error.status != 404:
                    raise

    def _claims(self, namespace: str) -> None:
        storage: Any = kubernetes.client.StorageV1Api(self._api)
        for pvc in self.core.list_namespaced_persistent_volume_claim(namespace).items:
            if pvc.status.phase != "Pending" or pvc.spec.volume_name:
                continue
            class_name = pvc.spec.storage_class_name
            try:
                if (
                    not class_name
                    or storage.read_storage_class(class_name).provisioner != self.driver
                ):
                    continue
            except kubernetes.client.ApiException:
                continue
            uid = pvc.metadata.uid
            pv_name = f"pvc-{uid}"
            size = pvc.spec.resources.requests["storage"]
            mode = pvc.spec.volume_mode or "Filesystem"
            path = self.folder / f"vol-{uid}{'.img' if mode == 'Block' else ''}"
            source = pvc.spec.data_source
            if source is not None and source.kind == "VolumeSnapshot":
                snapshot = self.custom.get_namespaced_custom_object(
                    SNAPSHOT_GROUP, "v1", namespace, "volumesnapshots", source.name
                )
                status = snapshot.get("status") or {}
                if not status.get("readyToUse"):
                    continue
                if parse_size(size) < parse_size(str(status["restoreSize"])):
                    continue  # a real provisioner refuses a claim smaller than the snapshot
                snapshot_image = self.local.snapshot(namespace, source.name).image
                if not path.exists():
                    shutil.copyfile(snapshot_image, path)
            elif mode == "Block":
                if not path.exists():
                    with open(path, "wb") as image:
                        image.truncate(parse_size(size))
            else:
                path.mkdir(exist_ok=True)
            claim = {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "name": pvc.metadata.name,
                "namespace": namespace,
                "uid": uid,
            }
            body = csi_pv(pv_name, path, size, mode, claim, class_name, self.driver)
            try:
                self.core.create_persistent_volume(body)
            except kubernetes.client.ApiException as error:
                if error.status != 409:
                    raise


def unique_suffix() -> str:
    return uuid.uuid4().hex[:8]
