"""The data mover: a Job that runs `lamina backup` in the cluster, next to the data, and the
restore Job that runs `lamina restore` into a new PVC (`lamina restore --to-pvc`).

A snapshot's blocks can only be read from a pod, through a PVC made from the snapshot. The
manifests here are plain dicts (dumpable as YAML):

- RBAC for the data mover's service account: read VolumeSnapshots of its namespace, ask the
  TokenRequest API for its own audience-scoped token, read VolumeSnapshotContents and
  SnapshotMetadataServices (cluster-scoped) to find the changed-block-tracking service;
- the VolumeSnapshot (when lamina is to take it), a block-mode PVC restored from it, and a Job
  whose container sees that PVC as the raw device /dev/lamina-source and backs it up.

`deploy/` holds examples produced by `python -m lamina.backend.kube.datamover deploy`.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from ..errors import UsageError
from .cbt import find_metadata_service
from .cluster import KubeCluster
from .errors import (
    DataMoverFailed,
    DataMoverTimeout,
    DriverWithoutCbt,
    KubeConflict,
    KubeError,
    KubeInvalid,
    KubeNotFound,
)
from .objects import (
    CBT_GROUP,
    CBT_PLURAL,
    SNAPSHOT_GROUP,
    SNAPSHOT_VERSION,
    dns_label,
    parse_quantity,
    section,
)
from .snapshots import (
    DEFAULT_SNAPSHOT_TIMEOUT,
    SnapshotInfo,
    choose_snapshot_class,
    create_snapshot,
    default_snapshot_name,
    get_snapshot,
    volume_snapshot_manifest,
    wait_for_snapshot,
)
from .volumes import get_volume, require_block_volume

Manifest = dict[str, Any]

DEFAULT_IMAGE = "lamina:latest"
DEFAULT_SERVICE_ACCOUNT = "lamina-datamover"
DEVICE_PATH = "/dev/lamina-source"
SCRATCH_PATH = "/tmp"
CBT_TOKEN_PATH = f"{SCRATCH_PATH}/lamina-cbt/token"
CBT_CA_PATH = f"{SCRATCH_PATH}/lamina-cbt/ca.pem"
MANAGED = {"app.kubernetes.io/name": "lamina", "app.kubernetes.io/managed-by": "lamina"}


@dataclass(frozen=True)
class DataMoverSpec:
    """What one data-mover run backs up, from where, to where."""

    namespace: str
    pvc: str  # the PVC whose snapshot is backed up
    snapshot: str  # the VolumeSnapshot to read
    repo: str
    size: str  # request of the PVC made from the snapshot (>= the restore size)
    volume: str  # lamina's name of the volume: CLUSTER/NAMESPACE/PVC
    storage_class: str | None = None
    snapshot_class: str | None = None  # set: the manifests include the VolumeSnapshot itself
    snapshot_handle: str | None = None  # known once the snapshot is ready
    image: str = DEFAULT_IMAGE
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    env_secret: str | None = None  # Secret with environment variables (S3 keys and the like)
    password_secret: str | None = None  # Secret with key "password" for an encrypted repository
    backup_args: tuple[str, ...] = ()
    cbt_address: str | None = None  # set: the driver's SnapshotMetadataService, used for CBT

    @property
    def job_name(self) -> str:
        return _bounded_name("lamina-backup-", self.snapshot)

    @property
    def source_pvc_name(self) -> str:
        return _bounded_name("lamina-source-", self.snapshot)


def _bounded_name(prefix: str, base: str, limit: int = 63) -> str:
    """prefix + base as a DNS label of at most `limit` characters (Job names end up in labels)."""
    return (prefix + dns_label(base, limit - len(prefix)))[:limit].rstrip("-")


def _labels(component: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**MANAGED, "app.kubernetes.io/component": component, **(extra or {})}


def cluster_volume_name(context: str) -> str:
    """The cluster part of lamina's volume name: the context name without characters that
    volume names reserve ('/' separates cluster, namespace and name)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", context).strip("-") or "cluster"


# ----- RBAC ----------------------------------------------------------------------------------


def rbac_manifests(
    namespace: str, service_account: str = DEFAULT_SERVICE_ACCOUNT
) -> list[Manifest]:
    """ServiceAccount, Role + RoleBinding (namespace) and ClusterRole + ClusterRoleBinding."""
    labels = _labels("datamover")
    subject = [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]
    cluster_binding = _bounded_name(f"{service_account}-", namespace, 253)
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": service_account, "namespace": namespace, "labels": labels},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": service_account, "namespace": namespace, "labels": labels},
            "rules": [
                {
                    "apiGroups": [SNAPSHOT_GROUP],
                    "resources": ["volumesnapshots"],
                    "verbs": ["get"],
                },
                {
                    # its own token, scoped to the audience of the CBT service
                    "apiGroups": [""],
                    "resources": ["serviceaccounts/token"],
                    "resourceNames": [service_account],
                    "verbs": ["create"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": service_account, "namespace": namespace, "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": service_account,
            },
            "subjects": subject,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": service_account, "labels": labels},
            "rules": [
                {
                    "apiGroups": [SNAPSHOT_GROUP],
                    "resources": ["volumesnapshotcontents"],
                    "verbs": ["get"],
                },
                {
                    "apiGroups": [CBT_GROUP],
                    "resources": [CBT_PLURAL],
                    "verbs": ["get"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": cluster_binding, "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": service_account,
            },
            "subjects": subject,
        },
    ]


# ----- snapshot PVC and Job ------------------------------------------------------------------


def source_pvc_manifest(spec: DataMoverSpec) -> Manifest:
    """A block-mode PVC restored from the snapshot."""
    pvc_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "volumeMode": "Block",
        "resources": {"requests": {"storage": spec.size}},
        "dataSource": {"apiGroup": SNAPSHOT_GROUP, "kind": "VolumeSnapshot", "name": spec.snapshot},
    }
    if spec.storage_class:
        pvc_spec["storageClassName"] = spec.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": spec.source_pvc_name,
            "namespace": spec.namespace,
            "labels": _labels("datamover-source", {"lamina.io/snapshot": dns_label(spec.snapshot)}),
        },
        "spec": pvc_spec,
    }


def backup_command(spec: DataMoverSpec) -> list[str]:
    """The `lamina backup` command line the Job runs."""
    args = ["lamina", "backup", "--repo", spec.repo, "--volume", spec.volume]
    if spec.password_secret:
        args += ["--password-file", "/etc/lamina/password/password"]
    if spec.snapshot_handle:
        args += ["--snapshot-handle", spec.snapshot_handle]
    args += ["--label", f"kube.snapshot={spec.namespace}/{spec.snapshot}"]
    if spec.cbt_address:
        args += [
            "--cbt", spec.cbt_address,
            "--namespace", spec.namespace,
            "--snapshot", spec.snapshot,
            "--token-file", CBT_TOKEN_PATH,
            "--ca-file", CBT_CA_PATH,
        ]  # fmt: skip
    args += list(spec.backup_args)
    args.append(DEVICE_PATH)
    return args


def cbt_token_command(spec: DataMoverSpec) -> list[str]:
    """The init step that asks, with the pod's service account, for the CBT service's CA and an
    audience-scoped token, and leaves both in the scratch volume for `lamina backup`."""
    return [
        "lamina", "kube", "cbt-endpoint", "--in-cluster",
        "--namespace", spec.namespace,
        "--snapshot", spec.snapshot,
        "--service-account", spec.service_account,
        "--token-file", CBT_TOKEN_PATH,
        "--ca-file", CBT_CA_PATH,
    ]  # fmt: skip


def job_manifest(spec: DataMoverSpec) -> Manifest:
    labels = _labels("datamover", {"lamina.io/snapshot": dns_label(spec.snapshot)})
    command = backup_command(spec)
    container: dict[str, Any] = {
        "name": "lamina",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command[:1],
        "args": command[1:],
        "env": [
            {"name": "LAMINA_KUBE_NAMESPACE", "value": spec.namespace},
            {"name": "LAMINA_KUBE_SNAPSHOT", "value": spec.snapshot},
            {"name": "LAMINA_KUBE_SERVICE_ACCOUNT", "value": spec.service_account},
            {"name": "HOME", "value": SCRATCH_PATH},
            {"name": "TMPDIR", "value": SCRATCH_PATH},
        ],
        "volumeDevices": [{"name": "source", "devicePath": DEVICE_PATH}],
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH_PATH}],
        # root to open the device node; nothing else
        "securityContext": {
            "runAsUser": 0,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    volumes: list[dict[str, Any]] = [
        {
            "name": "source",
            "persistentVolumeClaim": {"claimName": spec.source_pvc_name, "readOnly": True},
        },
        {"name": "scratch", "emptyDir": {}},
    ]
    if spec.env_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.env_secret}}]
    if spec.password_secret:
        container["volumeMounts"].append(
            {"name": "password", "mountPath": "/etc/lamina/password", "readOnly": True}
        )
        volumes.append(
            {
                "name": "password",
                "secret": {"secretName": spec.password_secret, "defaultMode": 0o400},
            }
        )
    pod_spec: dict[str, Any] = {
        "serviceAccountName": spec.service_account,
        "restartPolicy": "Never",
    }
    if spec.cbt_address:
        token_command = cbt_token_command(spec)
        pod_spec["initContainers"] = [
            {
                "name": "cbt-token",
                "image": spec.image,
                "imagePullPolicy": "IfNotPresent",
                "command": token_command[:1],
                "args": token_command[1:],
                "env": [{"name": "HOME", "value": SCRATCH_PATH}],
                "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH_PATH}],
                "securityContext": {
                    "runAsUser": 0,
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ]
    pod_spec["containers"] = [container]
    pod_spec["volumes"] = volumes
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": spec.job_name, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "backoffLimit": 1,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": pod_spec,
            },
        },
    }


def datamover_manifests(spec: DataMoverSpec) -> list[Manifest]:
    """[VolumeSnapshot,] source PVC and Job, in the order they must be created."""
    docs: list[Manifest] = []
    if spec.snapshot_class:
        docs.append(
            volume_snapshot_manifest(spec.namespace, spec.snapshot, spec.pvc, spec.snapshot_class)
        )
    docs += [source_pvc_manifest(spec), job_manifest(spec)]
    return docs


class _PlainDumper(yaml.SafeDumper):
    """Writes shared values out in full: no &anchors and *aliases in manifests."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(docs: list[Manifest], header: str = "") -> str:
    body = yaml.dump_all(
        docs, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False, explicit_start=True
    )
    return header + body


def all_manifests(spec: DataMoverSpec) -> str:
    """RBAC, [VolumeSnapshot,] source PVC and Job as one YAML stream for `kubectl apply -f`."""
    return dump_yaml(
        rbac_manifests(spec.namespace, spec.service_account) + datamover_manifests(spec)
    )


# ----- static examples under deploy/ ---------------------------------------------------------

EXAMPLE_SPEC = DataMoverSpec(
    namespace="apps",
    pvc="data",
    snapshot="data-lamina-example",
    repo="s3://lamina-backups/prod",
    size="10Gi",
    volume="prod/apps/data",
    storage_class="csi-hostpath-sc",
    snapshot_class="csi-hostpath-snapclass",
    env_secret="lamina-s3",
    cbt_address="csi-snapshot-metadata.csi-driver:6443",
)
EXAMPLE_HEADER = (
    "# Example generated by `python -m lamina.backend.kube.datamover deploy`.\n"
    "# `lamina kube datamover` writes the same documents for a real PVC.\n"
)


def example_manifests() -> dict[str, str]:
    """File name -> YAML text of the examples kept under deploy/."""
    return {
        "rbac.yaml": dump_yaml(rbac_manifests(EXAMPLE_SPEC.namespace), EXAMPLE_HEADER),
        "datamover-job.yaml": dump_yaml(datamover_manifests(EXAMPLE_SPEC), EXAMPLE_HEADER),
    }


def write_examples(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in example_manifests().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


# ----- against a cluster -----------------------------------------------------------------------


def prepare_spec(
    cluster: KubeCluster,
    namespace: str,
    pvc: str,
    repo: str,
    *,
    snapshot: str | None = None,
    snapshot_class: str | None = None,
    image: str = DEFAULT_IMAGE,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    cluster_name: str | None = None,
    env_secret: str | None = None,
    password_secret: str | None = None,
    backup_args: tuple[str, ...] = (),
    use_cbt: bool = True,
) -> DataMoverSpec:
    """Read the PVC (and an existing snapshot) from the cluster and fill in a DataMoverSpec.

    Without `snapshot`, lamina is to take a new snapshot: the spec then carries the
    VolumeSnapshotClass and the manifests include the VolumeSnapshot. With `use_cbt` and a
    driver that has a SnapshotMetadataService, the Job asks it which blocks to read.
    """
    volume = get_volume(cluster, namespace, pvc)
    require_block_volume(volume)
    assert volume.driver is not None
    cbt_address = None
    if use_cbt:
        try:
            cbt_address = find_metadata_service(cluster, volume.driver).address
        except DriverWithoutCbt:
            cbt_address = None  # the backup reads the whole volume
    handle = None
    if snapshot:
        if snapshot_class:
            raise UsageError(
                "--class applies to a new snapshot, not to an existing one (--snapshot)"
            )
        found = cluster.get_custom(
            SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshots", snapshot, namespace
        )
        source = section(section(found, "spec"), "source").get("persistentVolumeClaimName")
        if source != pvc:
            raise UsageError(
                f"VolumeSnapshot {namespace}/{snapshot} is a snapshot of {source!r}, not of {pvc!r}"
            )
        existing = get_snapshot(cluster, namespace, snapshot)
        handle = existing.handle if existing else None
        chosen_class = None
    else:
        chosen_class = choose_snapshot_class(cluster, volume.driver, snapshot_class)
        snapshot = default_snapshot_name(pvc)
    size = volume.capacity or "1Gi"
    return DataMoverSpec(
        namespace=namespace,
        pvc=pvc,
        snapshot=snapshot,
        repo=repo,
        size=size,
        volume=f"{cluster_name or cluster_volume_name(cluster.context)}/{namespace}/{pvc}",
        storage_class=volume.storage_class,
        snapshot_class=chosen_class,
        snapshot_handle=handle,
        image=image,
        service_account=service_account,
        env_secret=env_secret,
        password_secret=password_secret,
        backup_args=backup_args,
        cbt_address=cbt_address,
    )


@dataclass(frozen=True)
class DataMoverResult:
    job: str
    source_pvc: str
    snapshot: SnapshotInfo
    seconds: float


# kind -> (client model, resource): manifests go through the client's own models, which check
# them on the way.
_MODELS: dict[str, tuple[Any, str]] = {
    "ServiceAccount": (k8s.V1ServiceAccount, "serviceaccounts"),
    "Role": (k8s.V1Role, "roles"),
    "RoleBinding": (k8s.V1RoleBinding, "rolebindings"),
    "ClusterRole": (k8s.V1ClusterRole, "clusterroles"),
    "ClusterRoleBinding": (k8s.V1ClusterRoleBinding, "clusterrolebindings"),
    "PersistentVolumeClaim": (k8s.V1PersistentVolumeClaim, "persistentvolumeclaims"),
    "Job": (k8s.V1Job, "jobs"),
}


def _create(cluster: KubeCluster, doc: Manifest) -> None:
    """Create one manifest of the kinds the data mover uses."""
    kind = str(doc["kind"])
    ns = str(doc["metadata"].get("namespace") or "")
    name = str(doc["metadata"]["name"])
    t = cluster.request_timeout
    creators: dict[str, Callable[[Any], object]] = {
        "ServiceAccount": lambda b: cluster.core.create_namespaced_service_account(
            ns, b, _request_timeout=t
        ),
        "Role": lambda b: cluster.rbac.create_namespaced_role(ns, b, _request_timeout=t),
        "RoleBinding": lambda b: cluster.rbac.create_namespaced_role_binding(
            ns, b, _request_timeout=t
        ),
        "ClusterRole": lambda b: cluster.rbac.create_cluster_role(b, _request_timeout=t),
        "ClusterRoleBinding": lambda b: cluster.rbac.create_cluster_role_binding(
            b, _request_timeout=t
        ),
        "PersistentVolumeClaim": lambda b: cluster.core.create_namespaced_persistent_volume_claim(
            ns, b, _request_timeout=t
        ),
        "Job": lambda b: cluster.batch.create_namespaced_job(ns, b, _request_timeout=t),
    }
    if kind not in _MODELS:
        raise KubeInvalid(f"the data mover does not create {kind} objects")
    model, resource = _MODELS[kind]
    try:
        body = model.from_dict(doc)
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise KubeInvalid(f"{kind} {name}: not a valid manifest: {first}") from None
    create = creators[kind]
    cluster.request("create", resource, lambda: create(body), namespace=ns or None, name=name)


def ensure_rbac(
    cluster: KubeCluster, namespace: str, service_account: str = DEFAULT_SERVICE_ACCOUNT
) -> list[str]:
    """Create the data mover's RBAC objects; those that exist are left as they are.
    Returns 'Kind/name' of the objects created."""
    created = []
    for doc in rbac_manifests(namespace, service_account):
        try:
            _create(cluster, doc)
            created.append(f"{doc['kind']}/{doc['metadata']['name']}")
        except KubeConflict:
            pass
    return created


def wait_for_job(
    cluster: KubeCluster, namespace: str, name: str, *, timeout: float, poll: float = 2.0
) -> float:
    """Wait until the Job completes; DataMoverFailed if it fails or runs out of time."""
    start = time.monotonic()
    while True:
        job: k8s.V1Job = cluster.request(
            "get",
            "jobs",
            lambda: cluster.batch.read_namespaced_job(
                name, namespace, _request_timeout=cluster.request_timeout
            ),
            namespace=namespace,
            name=name,
        )
        status = job.status or k8s.V1JobStatus()
        for condition in status.conditions or []:
            if condition.status != "True":
                continue
            if condition.type == "Complete":
                return time.monotonic() - start
            if condition.type == "Failed":
                why = condition.message or condition.reason or "no reason given"
                raise DataMoverFailed(
                    f"data-mover Job {namespace}/{name} failed: {why} "
                    f"(see: kubectl logs -n {namespace} job/{name})"
                )
        elapsed = time.monotonic() - start
        if elapsed >= timeout:
            raise DataMoverTimeout(
                f"data-mover Job {namespace}/{name} did not finish within {timeout:g} s; it keeps running "
                f"(see: kubectl get -n {namespace} job/{name})"
            )
        time.sleep(min(poll, timeout - elapsed))


def submit_datamover(
    cluster: KubeCluster,
    spec: DataMoverSpec,
    *,
    create_rbac: bool = True,
    snapshot_timeout: float = DEFAULT_SNAPSHOT_TIMEOUT,
    job_timeout: float = 3600.0,
    poll: float = 2.0,
    keep_source_pvc: bool = False,
) -> DataMoverResult:
    """Run one backup in the cluster: RBAC, snapshot (new or existing, waited for), the PVC
    from the snapshot, the Job; wait for the Job, then remove the PVC from the snapshot.

    The snapshot is kept: its handle is the base of the next incremental backup.
    """
    start = time.monotonic()
    if create_rbac:
        ensure_rbac(cluster, spec.namespace, spec.service_account)
    if spec.snapshot_class:
        info = create_snapshot(
            cluster,
            spec.namespace,
            spec.pvc,
            name=spec.snapshot,
            snapshot_class=spec.snapshot_class,
            timeout=snapshot_timeout,
            poll=poll,
        )
    else:
        info = wait_for_snapshot(
            cluster, spec.namespace, spec.snapshot, timeout=snapshot_timeout, poll=poll
        )
    # The handle is known now: the Job records it with the backup.
    ready = replace(spec, snapshot_class=None, snapshot_handle=info.handle)
    source, job = source_pvc_manifest(ready), job_manifest(ready)
    _create(cluster, source)

    def remove_source() -> None:
        if keep_source_pvc:
            return
        name = ready.source_pvc_name
        cluster.request(
            "delete",
            "persistentvolumeclaims",
            lambda: cluster.core.delete_namespaced_persistent_volume_claim(
                name, ready.namespace, _request_timeout=cluster.request_timeout
            ),
            namespace=ready.namespace,
            name=name,
        )

    try:
        _create(cluster, job)
        wait_for_job(cluster, ready.namespace, ready.job_name, timeout=job_timeout, poll=poll)
    except DataMoverTimeout:
        raise  # the Job still runs and needs its PVC
    except BaseException:
        try:
            remove_source()
        except KubeError:
            pass  # the first error is the one to report
        raise
    remove_source()
    return DataMoverResult(ready.job_name, ready.source_pvc_name, info, time.monotonic() - start)


# ----- restore into a new PVC ------------------------------------------------------------------

RESTORE_DEVICE_PATH = "/dev/lamina-target"
RESTORE_MOUNT_PATH = "/mnt/lamina-target"
RESTORED_FILE_NAME = "volume.img"  # the image file a Filesystem-mode restore writes
RESTORE_MODES = ("block", "filesystem")


@dataclass(frozen=True)
class RestoreSpec:
    """One restore of a point into a NEW PVC by a data-mover Job."""

    namespace: str
    pvc: str  # the PVC to create; it must not exist
    point: str  # the full point id
    repo: str  # the repository as seen from inside the cluster
    size: str  # request of the new PVC (>= the point's capacity)
    mode: str = "block"  # "block": the PVC is the volume; "filesystem": an image file in it
    storage_class: str | None = None
    image: str = DEFAULT_IMAGE
    env_secret: str | None = None
    password_secret: str | None = None

    @property
    def job_name(self) -> str:
        return _bounded_name("lamina-restore-", self.pvc)

    @property
    def target_path(self) -> str:
        """Where the Job's `lamina restore` writes, inside its container."""
        if self.mode == "block":
            return RESTORE_DEVICE_PATH
        return f"{RESTORE_MOUNT_PATH}/{RESTORED_FILE_NAME}"


def restore_pvc_manifest(spec: RestoreSpec) -> Manifest:
    pvc_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "volumeMode": "Block" if spec.mode == "block" else "Filesystem",
        "resources": {"requests": {"storage": spec.size}},
    }
    if spec.storage_class:
        pvc_spec["storageClassName"] = spec.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": spec.pvc,
            "namespace": spec.namespace,
            "labels": _labels("restore-target", {"lamina.io/point": dns_label(spec.point)}),
        },
        "spec": pvc_spec,
    }


def restore_command(spec: RestoreSpec) -> list[str]:
    """The `lamina restore` command line the restore Job runs."""
    args = ["lamina", "restore", "--repo", spec.repo, "-q"]
    if spec.password_secret:
        args += ["--password-file", "/etc/lamina/password/password"]
    if spec.mode == "block":
        # the PVC is new: whatever the runtime presents (a device, or a file) is ours to write
        args.append("--overwrite")
    args += [spec.point, spec.target_path]
    return args


def restore_job_manifest(spec: RestoreSpec) -> Manifest:
    labels = _labels("restore", {"lamina.io/pvc": dns_label(spec.pvc)})
    command = restore_command(spec)
    container: dict[str, Any] = {
        "name": "lamina",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command[:1],
        "args": command[1:],
        "env": [
            {"name": "HOME", "value": SCRATCH_PATH},
            {"name": "TMPDIR", "value": SCRATCH_PATH},
        ],
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH_PATH}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # root to open the device node; nothing else
        "securityContext": {
            "runAsUser": 0,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.mode == "block":
        container["volumeDevices"] = [{"name": "target", "devicePath": RESTORE_DEVICE_PATH}]
    else:
        container["volumeMounts"].append({"name": "target", "mountPath": RESTORE_MOUNT_PATH})
    volumes: list[dict[str, Any]] = [
        {"name": "target", "persistentVolumeClaim": {"claimName": spec.pvc}},
        {"name": "scratch", "emptyDir": {}},
    ]
    if spec.env_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.env_secret}}]
    if spec.password_secret:
        container["volumeMounts"].append(
            {"name": "password", "mountPath": "/etc/lamina/password", "readOnly": True}
        )
        volumes.append(
            {
                "name": "password",
                "secret": {"secretName": spec.password_secret, "defaultMode": 0o400},
            }
        )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": spec.job_name, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    # the restore reads the repository and writes the PVC: no API rights at all
                    "automountServiceAccountToken": False,
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def restore_size(capacity: int, mode: str, requested: str | None) -> str:
    """The new PVC's request: `requested` (checked against the point's capacity), else the
    capacity (block) or the capacity and room for the file system (filesystem)."""
    if mode not in RESTORE_MODES:
        raise UsageError(f"--mode must be block or filesystem, not {mode!r}")
    if requested:
        try:
            size = parse_quantity(requested)
        except KubeInvalid:
            raise UsageError(
                f"--size {requested!r} is not a Kubernetes quantity (like 10Gi)"
            ) from None
        if size < capacity:
            raise UsageError(
                f"--size {requested} is smaller than the point's volume ({capacity} bytes)"
            )
        return requested
    need = capacity if mode == "block" else capacity + max(capacity // 16, 16 << 20)
    return f"{-(-need // (1 << 20))}Mi"


def check_restore_target(cluster: KubeCluster, spec: RestoreSpec) -> None:
    """Refuse, before anything is created, a PVC that exists, or a restore Job of its name."""
    for resource, read in (
        (
            "persistentvolumeclaims",
            lambda: cluster.core.read_namespaced_persistent_volume_claim(
                spec.pvc, spec.namespace, _request_timeout=cluster.request_timeout
            ),
        ),
        (
            "jobs",
            lambda: cluster.batch.read_namespaced_job(
                spec.job_name, spec.namespace, _request_timeout=cluster.request_timeout
            ),
        ),
    ):
        try:
            cluster.request("get", resource, read, namespace=spec.namespace)
        except KubeNotFound:
            continue
        what = (
            f"PVC {spec.namespace}/{spec.pvc}"
            if resource != "jobs"
            else (f"restore Job {spec.namespace}/{spec.job_name}")
        )
        raise KubeConflict(
            f"{what} already exists; restore --to-pvc creates a new PVC and writes nothing "
            "into an existing one (choose another name)"
        )


@dataclass(frozen=True)
class RestoreToPvcResult:
    namespace: str
    pvc: str
    point: str
    mode: str
    size: str
    job: str
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "pvc": self.pvc,
            "point": self.point,
            "mode": self.mode,
            "size": self.size,
            "job": self.job,
            "duration_seconds": self.seconds,
        }


def _delete(cluster: KubeCluster, resource: str, namespace: str, name: str) -> None:
    t = cluster.request_timeout
    calls: dict[str, Callable[[], object]] = {
        "jobs": lambda: cluster.batch.delete_namespaced_job(
            name, namespace, propagation_policy="Background", _request_timeout=t
        ),
        "persistentvolumeclaims": lambda: cluster.core.delete_namespaced_persistent_volume_claim(
            name, namespace, _request_timeout=t
        ),
    }
    try:
        cluster.request("delete", resource, calls[resource], namespace=namespace, name=name)
    except KubeNotFound:
        pass


def submit_restore(
    cluster: KubeCluster, spec: RestoreSpec, *, job_timeout: float = 3600.0, poll: float = 2.0
) -> RestoreToPvcResult:
    """Restore a point into a new PVC: create the PVC and a restore Job, wait for the Job,
    then delete the Job (the PVC is the result). If anything fails, the Job and the new,
    half-written PVC are deleted and the error is raised."""
    start = time.monotonic()
    check_restore_target(cluster, spec)
    _create(cluster, restore_pvc_manifest(spec))
    job_created = False
    try:
        _create(cluster, restore_job_manifest(spec))
        job_created = True
        wait_for_job(cluster, spec.namespace, spec.job_name, timeout=job_timeout, poll=poll)
    except BaseException:
        try:
            if job_created:
                _delete(cluster, "jobs", spec.namespace, spec.job_name)
            _delete(cluster, "persistentvolumeclaims", spec.namespace, spec.pvc)
        except KubeError:
            pass  # the first error is the one to report
        raise
    _delete(cluster, "jobs", spec.namespace, spec.job_name)
    return RestoreToPvcResult(
        spec.namespace,
        spec.pvc,
        spec.point,
        spec.mode,
        spec.size,
        spec.job_name,
        time.monotonic() - start,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the example manifests of the data mover.")
    parser.add_argument(
        "directory", type=Path, help="where to write rbac.yaml and datamover-job.yaml"
    )
    args = parser.parse_args(argv)
    for path in write_examples(args.directory):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
