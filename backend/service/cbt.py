"""Changed-block tracking and the local cluster, for the front ends: `lamina cbt ...`,
`lamina local snapshot` and `lamina backup --cbt`.

gRPC costs a tenth of a second to import: it loads when a client or server is made, not
when this module does, so commands that never speak it stay quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..cbt.client import SnapshotMetadataClient
    from ..cbt.server import RunningServer
    from ..local.cluster import LocalSnapshot


def metadata_client(
    address: str, *, token: str, ca_pem: bytes | None, tls_server_name: str | None
) -> SnapshotMetadataClient:
    """A client of a CSI SnapshotMetadata service (a cluster's, or lamina's own)."""
    from ..cbt.client import SnapshotMetadataClient

    return SnapshotMetadataClient(
        address, token=token, ca_pem=ca_pem, tls_server_name=tls_server_name
    )


def serve_snapshot_metadata(
    root: str | Path,
    listen: str,
    *,
    token: str | None,
    tls_cert_pem: bytes | None,
    tls_key_pem: bytes | None,
    block_type: str,
    cut_after_messages: int | None,
) -> RunningServer:
    """Serve the snapshots of the local cluster at ``root`` over the SnapshotMetadata API."""
    from ..cbt.server import start_server

    return start_server(
        root,
        listen,
        token=token,
        tls_cert_pem=tls_cert_pem,
        tls_key_pem=tls_key_pem,
        block_type=block_type,
        cut_after_messages=cut_after_messages,
    )


def take_local_snapshot(root: str | Path, source: str, namespace: str, name: str) -> LocalSnapshot:
    """A snapshot of an image file or block device, kept in the local cluster at ``root``."""
    from ..local.cluster import LocalCluster

    return LocalCluster(root).create_snapshot(source, namespace, name)


def backup_options_from_cbt(
    address: str,
    namespace: str,
    snapshot: str,
    base_handle: str | None,
    token: str,
    ca_pem: bytes | None,
    capacity_hint: int | None,
) -> dict[str, Any]:
    """Keyword arguments for ``Service.start_backup``: ranges from a SnapshotMetadata
    service (allocated blocks, or the delta from ``base_handle``)."""
    from ..cbt.sources import cbt_backup_options

    return cbt_backup_options(
        address, namespace, snapshot, base_handle, token, ca_pem, capacity_hint
    )
