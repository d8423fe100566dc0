"""Kubernetes clusters for lamina: contexts, block PVCs, CSI snapshots, the changed-block-tracking
endpoint of a driver, and the data-mover Job that backs up a snapshot inside the cluster."""

from .cbt import CbtEndpoint, cbt_endpoint, cbt_endpoint_for_snapshot, find_metadata_service
from .cluster import KubeCluster
from .config import LOCAL_CLUSTER, ClusterInfo, Reachability, check_reachability, list_clusters
from .snapshots import SnapshotInfo, create_snapshot, delete_snapshot, wait_for_snapshot
from .volumes import KubeVolume, VolumeListing, list_namespaces, list_volumes

__all__ = [
    "LOCAL_CLUSTER",
    "CbtEndpoint",
    "ClusterInfo",
    "KubeCluster",
    "KubeVolume",
    "Reachability",
    "SnapshotInfo",
    "VolumeListing",
    "cbt_endpoint",
    "cbt_endpoint_for_snapshot",
    "check_reachability",
    "create_snapshot",
    "delete_snapshot",
    "find_metadata_service",
    "list_clusters",
    "list_namespaces",
    "list_volumes",
    "wait_for_snapshot",
]
