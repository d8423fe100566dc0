"""The cluster controller: `lamina controller --kubeconfig PATH | --in-cluster`.

It reconciles lamina's custom resources (backend/kube/crds.py) with the kubernetes client's
watches: BackupSchedules make one Backup per due slot, Backups move through snapshot and
data-mover Job to a point, recorded in the job-history catalog. Only the holder of a
``coordination.k8s.io/v1`` Lease acts (docs/controller.md).
"""

from collections.abc import Callable

from .controller import ClusterController, ControllerOptions
from .lease import LeaderElector
from .slots import backup_name, due_slot, next_slot_after

__all__ = [
    "ClusterController",
    "ControllerOptions",
    "LeaderElector",
    "backup_name",
    "due_slot",
    "next_slot_after",
    "open_cluster_controller",
]


def open_cluster_controller(
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    in_cluster: bool = False,
    options: ControllerOptions | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> ClusterController:
    """A controller over the cluster of a kubeconfig context, or in-cluster."""
    from ...kube.cluster import KubeCluster

    cluster = KubeCluster.in_cluster() if in_cluster else KubeCluster.open(context, kubeconfig)
    options = options or ControllerOptions()
    if options.cluster_name == "cluster":
        from ...kube.datamover import cluster_volume_name

        options.cluster_name = cluster_volume_name(cluster.context)
    cluster.server_version()  # unreachable or refused credentials: one line, now
    return ClusterController(cluster, options, say=say)
