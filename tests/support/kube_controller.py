"""What the cluster-controller tests share: a real `lamina controller --kubeconfig` process,
the cluster objects a backup needs (StorageClass, VolumeSnapshotClass, the data mover's RBAC,
a block PVC over a local image), and a TEST STAND-IN for the CSI snapshot controller.

The stand-in (``SnapshotStandIn``) does for one namespace what the snapshot controller and a
hostpath-like CSI driver would: a VolumeSnapshot of a Bound PVC gets a copy of the PV's image
file, a VolumeSnapshotContent and ``readyToUse``; a Pending PVC whose ``dataSource`` is a ready
VolumeSnapshot gets a PV over that copy, pre-bound so that the real PV binder binds them.
It is not Kubernetes code: the API server, the PV binder and the Job controller are real, and
the test node (kube_node.py) stands in for the kubelet.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import kubernetes

from lamina.backend.kube.crds import GROUP, VERSION
from lamina.backend.kube.datamover import rbac_manifests
from tests.support.kube_cluster import new_api_client
from tests.support.kube_objects import TEST_DRIVER, TEST_STORAGE_CLASS, wait_for

Obj = dict[str, Any]
SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
SNAPSHOT_CLASS = "lamina-test-snapclass"
VENV_BIN = Path(sys.executable).parent
APPROVED = "https://github.com/kubernetes-csi/external-snapshotter/pull/419"


def _open_crd(kind: str, plural: str, scope: str) -> Obj:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{SNAPSHOT_GROUP}",
            "annotations": {"api-approved.kubernetes.io": APPROVED},
        },
        "spec": {
            "group": SNAPSHOT_GROUP,
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def _ignore_conflict(call: Any, *args: Any) -> None:
    try:
        call(*args)
    except kubernetes.client.ApiException as error:
        if error.status != 409:
            raise


def install_cluster_basics(api: Any) -> None:
    """The VolumeSnapshot CRDs (open schema, as a cluster with the external-snapshotter has
    them), the test StorageClass and VolumeSnapshotClass of TEST_DRIVER; once per cluster."""
    extensions: Any = kubernetes.client.ApiextensionsV1Api(api)
    for kind, plural, scope in (
        ("VolumeSnapshot", "volumesnapshots", "Namespaced"),
        ("VolumeSnapshotContent", "volumesnapshotcontents", "Cluster"),
        ("VolumeSnapshotClass", "volumesnapshotclasses", "Cluster"),
    ):
        _ignore_conflict(
            extensions.create_custom_resource_definition, _open_crd(kind, plural, scope)
        )
    for plural in ("volumesnapshots", "volumesnapshotcontents", "volumesnapshotclasses"):

        def established(name: str = f"{plural}.{SNAPSHOT_GROUP}") -> bool:
            conditions = extensions.read_custom_resource_definition(name).status.conditions
            return any(c.type == "Established" and c.status == "True" for c in conditions or [])

        wait_for(established)
    storage: Any = kubernetes.client.StorageV1Api(api)
    _ignore_conflict(
        storage.create_storage_class,
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": TEST_STORAGE_CLASS},
            "provisioner": TEST_DRIVER,
        },
    )
    custom: Any = kubernetes.client.CustomObjectsApi(api)

    def create_class() -> bool:
        try:
            custom.create_cluster_custom_object(
                SNAPSHOT_GROUP,
                "v1",
                "volumesnapshotclasses",
                {
                    "apiVersion": f"{SNAPSHOT_GROUP}/v1",
                    "kind": "VolumeSnapshotClass",
                    "metadata": {"name": SNAPSHOT_CLASS},
                    "driver": TEST_DRIVER,
                    "deletionPolicy": "Delete",
                },
            )
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return False  # the new CRD is not served yet
            if error.status != 409:
                raise
        return True

    wait_for(create_class)


def install_datamover_rbac(api: Any, namespace: str) -> None:
    """The data mover's ServiceAccount and roles in `namespace` (deploy/rbac.yaml's objects)."""
    client = kubernetes.utils
    for doc in rbac_manifests(namespace):
        try:
            client.create_from_dict(api, doc)  # type: ignore[no-untyped-call]
        except kubernetes.utils.FailToCreateError as error:
            if not all(e.status == 409 for e in error.api_exceptions):
                raise


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SnapshotStandIn:
    """Stands in for the snapshot controller and the CSI driver in one namespace (see module)."""

    def __init__(self, kubeconfig: Path | str, namespace: str, folder: Path) -> None:
        self.kubeconfig = str(kubeconfig)
        self.namespace = namespace
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="snapshot-stand-in")
        self.errors: list[str] = []
        self.snapshots_taken = 0

    def __enter__(self) -> SnapshotStandIn:
        self._api = new_api_client(self.kubeconfig)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._api.close()

    def _loop(self) -> None:
        # polls rather than watches: two list calls a round, a few rounds a second
        while not self._stop.wait(0.2):
            try:
                self._snapshots()
                self._claims()
            except Exception as error:  # the stand-in must outlive an API hiccup
                self.errors.append(repr(error)[:300])

    def _snapshots(self) -> None:
        custom: Any = kubernetes.client.CustomObjectsApi(self._api)
        core: Any = kubernetes.client.CoreV1Api(self._api)
        listed = custom.list_namespaced_custom_object(
            SNAPSHOT_GROUP, "v1", self.namespace, "volumesnapshots"
        )
        for snapshot in listed["items"]:
            if (snapshot.get("status") or {}).get("readyToUse"):
                continue
            name = snapshot["metadata"]["name"]
            pvc_name = snapshot["spec"]["source"]["persistentVolumeClaimName"]
            pvc = core.read_namespaced_persistent_volume_claim(pvc_name, self.namespace)
            if pvc.status.phase != "Bound":
                continue
            pv = core.read_persistent_volume(pvc.spec.volume_name)
            copy = self.folder / f"{name}.img"
            shutil.copyfile(pv.spec.host_path.path, copy)
            content = f"snapcontent-{uuid.uuid4().hex[:12]}"
            size = copy.stat().st_size
            body = {
                "apiVersion": f"{SNAPSHOT_GROUP}/v1",
                "kind": "VolumeSnapshotContent",
                "metadata": {"name": content},
                "spec": {
                    "driver": TEST_DRIVER,
                    "deletionPolicy": "Delete",
                    "volumeSnapshotClassName": snapshot["spec"].get("volumeSnapshotClassName"),
                    "source": {"volumeHandle": str(pv.spec.host_path.path)},
                    "volumeSnapshotRef": {"name": name, "namespace": self.namespace},
                },
            }
            created = custom.create_cluster_custom_object(
                SNAPSHOT_GROUP, "v1", "volumesnapshotcontents", body
            )
            created["status"] = {
                "snapshotHandle": str(copy),
                "restoreSize": size,
                "readyToUse": True,
                "creationTime": 0,
            }
            custom.replace_cluster_custom_object_status(
                SNAPSHOT_GROUP, "v1", "volumesnapshotcontents", content, created
            )
            snapshot["status"] = {
                "boundVolumeSnapshotContentName": content,
                "readyToUse": True,
                "restoreSize": str(size),
                "creationTime": _now(),
            }
            custom.replace_namespaced_custom_object_status(
                SNAPSHOT_GROUP, "v1", self.namespace, "volumesnapshots", name, snapshot
            )
            self.snapshots_taken += 1

    def _claims(self) -> None:
        core: Any = kubernetes.client.CoreV1Api(self._api)
        for pvc in core.list_namespaced_persistent_volume_claim(self.namespace).items:
            source = pvc.spec.data_source
            if pvc.status.phase != "Pending" or source is None or source.kind != "VolumeSnapshot":
                continue
            image = self.folder / f"{source.name}.img"
            if not image.exists():
                continue
            pv_name = f"{self.namespace}-{pvc.metadata.name}"[:253]
            _ignore_conflict(
                core.create_persistent_volume,
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": pv_name},
                    "spec": {
                        "capacity": {"storage": pvc.spec.resources.requests["storage"]},
                        "accessModes": ["ReadWriteOnce"],
                        "volumeMode": "Block",
                        "persistentVolumeReclaimPolicy": "Delete",
                        "storageClassName": pvc.spec.storage_class_name,
                        "hostPath": {"path": str(image)},
                        "claimRef": {"namespace": self.namespace, "name": pvc.metadata.name},
                    },
                },
            )
            # the PV binder looks at a claim again on its next event (or its 15 s resync):
            # an annotation is that event
            core.patch_namespaced_persistent_volume_claim(
                pvc.metadata.name,
                self.namespace,
                {"metadata": {"annotations": {"lamina.test/provisioned": pv_name}}},
            )


def lamina_objects(api: Any, namespace: str, plural: str) -> list[Obj]:
    custom: Any = kubernetes.client.CustomObjectsApi(api)
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
    return cast(list[Obj], listed["items"])


def create_lamina(api: Any, namespace: str, plural: str, kind: str, name: str, spec: Obj) -> Obj:
    custom: Any = kubernetes.client.CustomObjectsApi(api)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}}
    return cast(
        Obj,
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, {**body, "spec": spec}
        ),
    )


def events_of(api: Any, namespace: str, name: str) -> list[Any]:
    core: Any = kubernetes.client.CoreV1Api(api)
    listed = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
    return list(listed.items)


class ControllerProcess:
    """A running `lamina controller --kubeconfig` process and its log."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(10)


@contextmanager
def controller_process(
    kubeconfig: Path | str,
    namespace: str,
    folder: Path,
    env: dict[str, str],
    *args: str,
    name: str = "controller",
) -> Iterator[ControllerProcess]:
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{name}.log"
    command = [
        str(VENV_BIN / "lamina"), "controller", "--kubeconfig", str(kubeconfig),
        "--namespace", namespace, "--cluster-name", "test", "--resync", "5", *args,
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    running = ControllerProcess(process, log)
    try:
        yield running
    finally:
        running.stop()


def lease_holder(api: Any, namespace: str, name: str = "lamina-controller") -> str | None:
    coordination: Any = kubernetes.client.CoordinationV1Api(api)
    try:
        lease = coordination.read_namespaced_lease(name, namespace)
    except kubernetes.client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return lease.spec.holder_identity if lease.spec else None


def check_invariants(api: Any, namespace: str, service: Any, catalog_url: str) -> list[str]:
    """What must hold once the controllers have recovered, over the CRs, the repository and
    the catalog; the list of what does not (empty: all hold).

    - no Backup stays non-terminal;
    - each (schedule, PVC, slot) has one Backup, and each Succeeded Backup one point, never two;
    - no two Backups of one volume overlap in time;
    - the history agrees with the repository: every Succeeded Backup's point is in the
      repository and recorded as a succeeded controller job, and no point of a backed-up
      volume came from outside a Backup.
    """
    from lamina.backend.catalog import Catalog

    problems: list[str] = []
    backups = lamina_objects(api, namespace, "backups")
    for b in backups:
        phase = (b.get("status") or {}).get("phase")
        if phase not in ("Succeeded", "Failed"):
            problems.append(f"Backup {b['metadata']['name']} is {phase or 'new'}")
    slots: dict[tuple[str, str, str], list[str]] = {}
    for b in backups:
        spec = b["spec"]
        if spec.get("schedule"):
            key = (spec["schedule"], spec["source"]["pvc"], spec.get("slot", ""))
            slots.setdefault(key, []).append(b["metadata"]["name"])
    problems += [
        f"slot {key} has Backups {names}" for key, names in slots.items() if len(names) > 1
    ]
    by_volume: dict[str, list[tuple[str, str, str]]] = {}
    for b in backups:
        status = b.get("status") or {}
        if status.get("startTime") and status.get("completionTime"):
            span = (status["startTime"], status["completionTime"], b["metadata"]["name"])
            by_volume.setdefault(b["spec"]["source"]["pvc"], []).append(span)
    for pvc, spans in by_volume.items():
        spans.sort()
        for (_, end, first), (start, _, second) in itertools.pairwise(spans):
            if end > start:
                problems.append(f"Backups {first} and {second} of {pvc} overlap")
    succeeded = [b for b in backups if (b.get("status") or {}).get("phase") == "Succeeded"]
    volumes = {b["status"]["volume"] for b in succeeded}
    points = [p for v in volumes for p in service.list_points(v)]
    labels = [(p.manifest.get("labels") or {}).get("kube.snapshot") for p in points]
    if len(labels) != len(set(labels)):
        problems.append(f"one snapshot yielded several points: {sorted(map(str, labels))}")
    point_ids = {p.id for p in points}
    wanted = {b["status"]["pointId"] for b in succeeded}
    if wanted - point_ids:
        problems.append(
            f"points of Succeeded Backups missing from the repository: {wanted - point_ids}"
        )
    if point_ids - wanted:
        problems.append(f"points that no Succeeded Backup names: {point_ids - wanted}")
    catalog = Catalog.open(catalog_url)
    try:
        recorded = {
            r.point
            for r in catalog.history()
            if r.origin == "controller" and r.state == "succeeded"
        }
    finally:
        catalog.close()
    if recorded != wanted:
        problems.append(f"history {sorted(map(str, recorded))} != Backups {sorted(wanted)}")
    return problems
