"""Changed-block tracking over the CSI SnapshotMetadata gRPC API: client, local server, sources."""

from .client import MetadataMessage, MetadataStream, SnapshotMetadataClient, SnapshotMetadataError
from .sources import cbt_backup_options, cbt_range_sources

__all__ = [
    "MetadataMessage",
    "MetadataStream",
    "SnapshotMetadataClient",
    "SnapshotMetadataError",
    "cbt_backup_options",
    "cbt_range_sources",
]
