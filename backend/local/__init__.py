"""A local equivalent of a CSI hostpath driver: block volumes and snapshots as files."""

from .cluster import LocalCluster, LocalSnapshot, SnapshotExists, SnapshotNotFound

__all__ = ["LocalCluster", "LocalSnapshot", "SnapshotExists", "SnapshotNotFound"]
