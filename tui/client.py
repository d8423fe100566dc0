"""The terminal UI's backend: a ``LaminaService`` (backend/service/contract.py) and nothing else.

The UI takes either implementation directly: ``Service`` in this process, or
``RemoteService`` over a lamina server, where the paths the UI asks for (restore targets,
extract folders, mountpoints) are the server's. It sees only the service's models and
ids; every call may block, so the UI calls them from worker threads only. What lives here
is what only the UI does: refusing empty answers to its own prompts, and mounts by point.
"""

from __future__ import annotations

from collections.abc import Sequence

from lamina.backend.errors import LaminaError, UsageError
from lamina.backend.service import LaminaService

__all__ = [
    "LaminaError",
    "LaminaService",
    "mount_point",
    "mounted_points",
    "start_extract",
    "start_restore",
    "unmount_point",
]


def _where(service: LaminaService) -> str:
    """Whose paths the UI's prompts name: this machine's, or the server's."""
    return " (on the server)" if service.info().server else ""


def start_restore(service: LaminaService, point_ref: str, target: str, overwrite: bool) -> str:
    if not target.strip():
        raise UsageError(f"give a file or device{_where(service)} to restore to")
    return service.start_restore(point_ref, target, overwrite=overwrite).id


def start_extract(service: LaminaService, point_ref: str, paths: Sequence[str], to_dir: str) -> str:
    if not paths:
        raise UsageError("mark files or folders to extract first")
    if not to_dir.strip():
        raise UsageError(f"give a folder{_where(service)} to extract to")
    return service.start_extract(point_ref, list(paths), to_dir).id


def mount_point(service: LaminaService, point_ref: str, mountpoint: str) -> str:
    if not mountpoint.strip():
        raise UsageError(f"give a folder{_where(service)} to mount on")
    return service.mount(point_ref, mountpoint).mountpoint


def mounted_points(service: LaminaService) -> dict[str, str]:
    """Mounted points: point id -> mountpoint, also those mounted before this UI started
    (and, through a server, those other clients of it mounted)."""
    return {m.point: m.mountpoint for m in service.list_mounts() if m.point is not None}


def unmount_point(service: LaminaService, point_ref: str) -> None:
    where = mounted_points(service).get(point_ref)
    if where is None:
        raise UsageError(f"point {point_ref} is not mounted")
    service.unmount(where)
