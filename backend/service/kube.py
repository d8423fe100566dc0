"""Kubernetes operations for the front ends: PVCs, namespaces, snapshots, CBT endpoints,
data-mover Jobs and restores into new PVCs (`lamina volumes`, `lamina kube ...`,
`lamina restore --to-pvc`).

A ``KubeSession`` is one connection to a cluster's API server; the front end opens one per
command and asks it what it needs. The kubernetes client is imported when a session opens,
not when this module loads, so commands that never talk to a cluster stay quick.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..limits import checked_point_ref

if TYPE_CHECKING:
    from ..kube.cbt import CbtEndpoint
    from ..kube.cluster import KubeCluster
    from ..kube.datamover import DataMoverResult, DataMoverSpec, RestoreSpec, RestoreToPvcResult
    from ..kube.snapshots import SnapshotInfo
    from ..kube.volumes import VolumeListing
    from .jobs import Job
    from .service import Service

DEFAULT_IMAGE = "lamina:latest"  # the same default as the data mover's (kube.datamover)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class KubeSession:
    """One open connection to a Kubernetes cluster (a kubeconfig context, or in-cluster)."""

    def __init__(self, cluster: KubeCluster) -> None:
        self._cluster = cluster

    @classmethod
    def open(
        cls, context: str | None = None, kubeconfig: str | None = None, *, in_cluster: bool = False
    ) -> KubeSession:
        """Connect to ``context`` (default: the current one), or as the pod's service account."""
        from ..kube.cluster import KubeCluster

        if in_cluster:
            return cls(KubeCluster.in_cluster())
        return cls(KubeCluster.open(context, kubeconfig))

    def close(self) -> None:
        self._cluster.close()

    def __enter__(self) -> KubeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def namespace(self, namespace: str | None) -> str:
        """The namespace asked for, else the context's, else ``default``."""
        return str(namespace or self._cluster.default_namespace)

    def volumes(self, namespace: str | None = None) -> VolumeListing:
        from ..kube.volumes import list_volumes

        return list_volumes(self._cluster, namespace)

    def namespaces(self) -> list[str]:
        from ..kube.volumes import list_namespaces

        return list_namespaces(self._cluster)

    def take_snapshot(
        self,
        namespace: str,
        pvc: str,
        *,
        name: str | None,
        snapshot_class: str | None,
        timeout: float,
        poll: float,
    ) -> SnapshotInfo:
        """A CSI VolumeSnapshot of a block PVC, once it is ready."""
        from ..kube.snapshots import create_snapshot

        return create_snapshot(
            self._cluster,
            namespace,
            pvc,
            name=name,
            snapshot_class=snapshot_class,
            timeout=timeout,
            poll=poll,
        )

    def delete_snapshot(self, namespace: str, name: str) -> None:
        from ..kube.snapshots import delete_snapshot

        delete_snapshot(self._cluster, namespace, name)

    def cbt_endpoint(
        self,
        namespace: str,
        *,
        driver: str | None,
        snapshot: str | None,
        service_account: str,
        expiry_seconds: int,
    ) -> CbtEndpoint:
        """Address, CA and a token for the SnapshotMetadataService of a driver, or of the
        driver of a VolumeSnapshot."""
        from ..kube.cbt import cbt_endpoint, cbt_endpoint_for_snapshot

        if snapshot:
            return cbt_endpoint_for_snapshot(
                self._cluster,
                namespace,
                snapshot,
                service_account=service_account,
                expiry_seconds=expiry_seconds,
            )
        if not driver:
            raise ValueError("a CBT endpoint needs a driver or a snapshot")
        return cbt_endpoint(
            self._cluster,
            driver,
            namespace=namespace,
            service_account=service_account,
            expiry_seconds=expiry_seconds,
        )

    def datamover_spec(
        self,
        namespace: str,
        pvc: str,
        repo: str,
        *,
        snapshot: str | None,
        snapshot_class: str | None,
        image: str,
        service_account: str,
        cluster_name: str | None,
        env_secret: str | None,
        password_secret: str | None,
        backup_args: tuple[str, ...],
        use_cbt: bool,
    ) -> DataMoverSpec:
        """What a data-mover Job that backs up a PVC's snapshot inside the cluster needs."""
        from ..kube.datamover import prepare_spec

        return prepare_spec(
            self._cluster,
            namespace,
            pvc,
            repo,
            snapshot=snapshot,
            snapshot_class=snapshot_class,
            image=image,
            service_account=service_account,
            cluster_name=cluster_name,
            env_secret=env_secret,
            password_secret=password_secret,
            backup_args=backup_args,
            use_cbt=use_cbt,
        )

    def submit_datamover(
        self,
        spec: DataMoverSpec,
        *,
        create_rbac: bool,
        snapshot_timeout: float,
        job_timeout: float,
        poll: float,
        keep_source_pvc: bool,
    ) -> DataMoverResult:
        """Create the data mover's objects and wait for its Job."""
        from ..kube.datamover import submit_datamover

        return submit_datamover(
            self._cluster,
            spec,
            create_rbac=create_rbac,
            snapshot_timeout=snapshot_timeout,
            job_timeout=job_timeout,
            poll=poll,
            keep_source_pvc=keep_source_pvc,
        )

    def check_restore_target(self, spec: RestoreSpec) -> None:
        """Refuse a PVC (or restore Job) that exists, before anything is created."""
        from ..kube.datamover import check_restore_target

        check_restore_target(self._cluster, spec)

    def restore_to_pvc(
        self, spec: RestoreSpec, *, job_timeout: float = 3600.0, poll: float = 2.0
    ) -> RestoreToPvcResult:
        """Create the new PVC and the restore Job, wait for it, delete the Job."""
        from ..kube.datamover import submit_restore

        return submit_restore(self._cluster, spec, job_timeout=job_timeout, poll=poll)


def parse_pvc_ref(text: str) -> tuple[str, str]:
    """NAMESPACE/NAME of a PVC, both DNS labels."""
    namespace, slash, name = text.partition("/")
    if (
        not slash
        or not _DNS_LABEL.match(namespace)
        or not re.match(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", name)
    ):
        from ..display import printable

        raise UsageError(
            f"--to-pvc wants NAMESPACE/NAME (lower-case DNS names), not {printable(text)!r}"
        )
    return namespace, name


def start_restore_to_pvc(
    service: Service,
    session: KubeSession,
    point_ref: str,
    namespace: str,
    pvc: str,
    *,
    repo: str,
    storage_class: str | None = None,
    size: str | None = None,
    mode: str = "block",
    image: str = DEFAULT_IMAGE,
    env_secret: str | None = None,
    password_secret: str | None = None,
    job_timeout: float = 3600.0,
    poll: float = 2.0,
) -> Job:
    """Restore a point of ``service``'s repository into a NEW PVC ``namespace/pvc`` of the
    cluster of ``session``, by a restore data-mover Job that runs ``lamina restore`` with
    ``image`` against ``repo`` (the repository's URL as seen from inside the cluster).

    Checked before the job starts (each a one-line error, nothing created): the point, the
    mode and size, and that neither the PVC nor the restore Job exists. The job (kind
    ``restore``, recorded in the catalog) creates the PVC (``storage_class``, ``size``:
    default the point's capacity, or more for ``mode="filesystem"``, where the Job writes the
    image file ``volume.img`` into the mounted PVC), runs the Job, waits, deletes the Job,
    and returns a ``RestoreToPvcResult``. If the Job fails, the Job and the half-written PVC
    are deleted.
    """
    from ..kube.datamover import RestoreSpec, restore_size

    checked_point_ref(point_ref)
    point = service.find_point(point_ref)
    spec = RestoreSpec(
        namespace=namespace,
        pvc=pvc,
        point=point.id,
        repo=repo,
        size=restore_size(point.capacity, mode, size),
        mode=mode,
        storage_class=storage_class,
        image=image,
        env_secret=env_secret,
        password_secret=password_secret,
    )
    session.check_restore_target(spec)

    def run(job: Job) -> RestoreToPvcResult:
        return session.restore_to_pvc(spec, job_timeout=job_timeout, poll=poll)

    return service._start(
        "restore", f"restore {point.id} to PVC {namespace}/{pvc}", run, point=point.id
    )


def datamover_manifests(spec: DataMoverSpec) -> str:
    """The YAML of a data mover's RBAC objects and Job, to apply by hand."""
    from ..kube.datamover import all_manifests

    return all_manifests(spec)
