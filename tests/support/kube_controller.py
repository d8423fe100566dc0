"""What the cluster-controller tests share: a real `lamina controller --kubeconfig` process,
the cluster objects a backup needs (the snapshot CRDs and classes, the data mover's RBAC),
and the checker of the controller's invariants over CRs, repository and catalog.

The snapshots and the PVs made from them come from the CSI stand-in (kube_csi.py), the Pods
run on the test node (kube_node.py); the API server, the PV binder and the Job controller are
real.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import kubernetes

from lamina.backend.kube.crds import GROUP, VERSION
from lamina.backend.kube.datamover import rbac_manifests
from tests.support.kube_csi import ensure_classes, install_snapshot_crds

Obj = dict[str, Any]
SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
SNAPSHOT_CLASS = "lamina-test-snapclass"
VENV_BIN = Path(sys.executable).parent
APPROVED = "https://github.com/kubernetes-csi/external-snapshotter/pull/419"


def install_cluster_basics(api: Any) -> None:
    """The VolumeSnapshot CRDs and the test driver's StorageClass and VolumeSnapshotClass, as
    a cluster with a CSI driver and the external-snapshotter has them; once per cluster."""
    install_snapshot_crds(api)
    ensure_classes(api)


def install_datamover_rbac(api: Any, namespace: str) -> None:
    """The data mover's ServiceAccount and roles in `namespace` (deploy/rbac.yaml's objects)."""
    client = kubernetes.utils
    for doc in rbac_manifests(namespace):
        try:
            client.create_from_dict(api, doc)  # type: ignore[no-untyped-call]
        except kubernetes.utils.FailToCreateError as error:
            if not all(e.status == 409 for e in error.api_exceptions):
                raise


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
