"""Changed and allocated ranges from a SnapshotMetadata service, ready for a backup.

``Service.start_backup(changed_ranges=..., allocated_ranges=...)`` takes zero-argument
callables; each call here opens a new gRPC stream, so the engine can ask again (a retry, a
second pass) and never holds a whole list of extents.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..engine.extents import Range
from .client import SnapshotMetadataClient

RangeFactory = Callable[[], Iterator[Range]]


def cbt_range_sources(
    address: str,
    namespace: str,
    snapshot: str,
    base_handle: str | None,
    token: str = "",
    ca_pem: bytes | None = None,
    capacity_hint: int | None = None,
    *,
    tls_server_name: str | None = None,
) -> tuple[RangeFactory | None, RangeFactory]:
    """(changed ranges since ``base_handle`` or None without a base, allocated ranges)."""
    client = SnapshotMetadataClient(
        address, token=token, ca_pem=ca_pem, tls_server_name=tls_server_name
    )

    def allocated() -> Iterator[Range]:
        return iter(client.allocated(namespace, snapshot, capacity_hint=capacity_hint))

    if base_handle is None:
        return None, allocated

    def changed() -> Iterator[Range]:
        return iter(client.delta(namespace, base_handle, snapshot, capacity_hint=capacity_hint))

    return changed, allocated


def cbt_backup_options(
    address: str,
    namespace: str,
    snapshot: str,
    base_handle: str | None,
    token: str = "",
    ca_pem: bytes | None = None,
    capacity_hint: int | None = None,
    *,
    tls_server_name: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``Service.start_backup``: the range sources and their origins."""
    changed, allocated = cbt_range_sources(
        address,
        namespace,
        snapshot,
        base_handle,
        token,
        ca_pem,
        capacity_hint,
        tls_server_name=tls_server_name,
    )
    options: dict[str, Any] = {
        "allocated_ranges": allocated,
        "allocated_ranges_origin": f"CBT GetMetadataAllocated {namespace}/{snapshot} at {address}",
    }
    if changed is not None:
        options["changed_ranges"] = changed
        options["changed_ranges_origin"] = (
            f"CBT GetMetadataDelta {namespace}/{snapshot} from base {base_handle} at {address}"
        )
    return options
