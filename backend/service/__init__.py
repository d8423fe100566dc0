"""The service layer: the one contract every front end (CLI, TUI, FUSE, gRPC API) talks to.

Front ends import this package and nothing deeper of the backend (ARCHITECTURE.md). What
they show or pass that the engine or an integration defines is re-exported here. Every
name loads on first use, with the module that defines it: a command pays only for what it
touches (a backup never loads the filesystem parsers, gRPC or the catalog's SQLAlchemy
before it records its job; tests/unit/test_cli_imports.py keeps it so).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..cbt.client import MetadataMessage as MetadataMessage
    from ..cbt.client import MetadataStream as MetadataStream
    from ..cbt.client import SnapshotMetadataClient as SnapshotMetadataClient
    from ..defaults import default_local_root, default_repo
    from ..engine.extents import Range, checked_ranges
    from ..engine.fsview import Node as Node
    from ..engine.fsview import OpenFile as OpenFile
    from ..engine.fsview import PointFiles as PointFiles
    from ..engine.fsview import PointSource as PointSource
    from ..engine.fsview import RepositoryView as RepositoryView
    from ..engine.fsview import ViewPoint as ViewPoint
    from ..engine.image import ImageReader, ImageReadError
    from ..engine.lifecycle import Policy
    from ..engine.safewrite import (
        PATH_MAX,
        EntryWriter,
        NotAFolder,
        PathNotAllowed,
        TargetError,
        TargetExists,
        open_folder,
        unsafe_name_reason,
        write_sparse,
    )
    from ..errors import LaminaError, PasswordRequired, WrongPassword
    from ..fsread import Entry as Entry
    from ..limits import parse_keep_within, shown
    from ..progress import Progress
    from .cbt import (
        backup_options_from_cbt,
        metadata_client,
        serve_snapshot_metadata,
        take_local_snapshot,
    )
    from .clusters import check_clusters, list_clusters
    from .contract import LaminaService
    from .controller import Controller
    from .demo import run_demo
    from .history import (
        JOB_KINDS,
        CatalogError,
        HistoryQuery,
        JobNotFound,
        JobRecord,
        RequestCounts,
        Savings,
        forget_savings,
        format_cost,
        prune_savings,
        read_history,
    )
    from .jobs import BackupCaps, Job, JobState, summary, view_of
    from .kube import KubeSession, datamover_manifests, parse_pvc_ref, start_restore_to_pvc
    from .models import (
        Capabilities,
        ClusterSummary,
        ClusterVolume,
        CompareReport,
        CopyReport,
        ExtractReport,
        FileEntry,
        ForgetDecision,
        ForgetReport,
        HistoryPage,
        JobEvent,
        JobView,
        LastGoodBackup,
        LocalSnapshotInfo,
        LockInfo,
        MountInfo,
        PointInfo,
        PruneReport,
        Reachability,
        RepositoryInfo,
        RestoreReport,
        Skipped,
        VerifyReport,
        VolumeComparison,
        VolumeInfo,
        VolumeRef,
    )
    from .mounts import (
        FS_TYPE,
        MOUNT_PROCESS,
        MountEntry,
        MountError,
        find_mount,
        fusermount,
        mount_command,
        mount_path,
        mount_table,
        start_mount_process,
        unmount,
    )
    from .pointlist import point_list_status
    from .schedules import ScheduleInfo, Schedules, format_every, policy_from_options
    from .service import (
        Service,
        check_backup_options,
        check_cluster_volume,
        init_repository,
        list_local_snapshots,
        parse_volume,
        ranges_from_json_file,
        read_password_file,
    )

# Where each name is defined, relative to lamina.backend.
_MODULES: dict[str, tuple[str, ...]] = {
    "cbt.client": (
        "MetadataMessage",
        "MetadataStream",
        "SnapshotMetadataClient",
    ),
    "defaults": (
        "default_local_root",
        "default_repo",
    ),
    "engine.extents": (
        "Range",
        "checked_ranges",
    ),
    "engine.fsview": (
        "Node",
        "OpenFile",
        "PointFiles",
        "PointSource",
        "RepositoryView",
        "ViewPoint",
    ),
    "engine.image": (
        "ImageReadError",
        "ImageReader",
    ),
    "engine.lifecycle": ("Policy",),
    "engine.safewrite": (
        "EntryWriter",
        "NotAFolder",
        "PATH_MAX",
        "PathNotAllowed",
        "TargetError",
        "TargetExists",
        "open_folder",
        "unsafe_name_reason",
        "write_sparse",
    ),
    "errors": ("LaminaError", "PasswordRequired", "WrongPassword"),
    "fsread": ("Entry",),
    "limits": (
        "parse_keep_within",
        "shown",
    ),
    "progress": ("Progress",),
    "service.cbt": (
        "backup_options_from_cbt",
        "metadata_client",
        "serve_snapshot_metadata",
        "take_local_snapshot",
    ),
    "service.clusters": (
        "check_clusters",
        "list_clusters",
    ),
    "service.contract": ("LaminaService",),
    "service.controller": ("Controller",),
    "service.demo": ("run_demo",),
    "service.history": (
        "CatalogError",
        "HistoryQuery",
        "JOB_KINDS",
        "JobNotFound",
        "JobRecord",
        "RequestCounts",
        "Savings",
        "forget_savings",
        "format_cost",
        "prune_savings",
        "read_history",
    ),
    "service.jobs": (
        "BackupCaps",
        "Job",
        "JobState",
        "summary",
        "view_of",
    ),
    "service.kube": (
        "KubeSession",
        "datamover_manifests",
        "parse_pvc_ref",
        "start_restore_to_pvc",
    ),
    "service.models": (
        "Capabilities",
        "ClusterSummary",
        "ClusterVolume",
        "CompareReport",
        "CopyReport",
        "ExtractReport",
        "FileEntry",
        "ForgetDecision",
        "ForgetReport",
        "HistoryPage",
        "JobEvent",
        "JobView",
        "LastGoodBackup",
        "LocalSnapshotInfo",
        "LockInfo",
        "MountInfo",
        "PointInfo",
        "PruneReport",
        "Reachability",
        "RepositoryInfo",
        "RestoreReport",
        "Skipped",
        "VerifyReport",
        "VolumeComparison",
        "VolumeInfo",
        "VolumeRef",
    ),
    "service.mounts": (
        "FS_TYPE",
        "MOUNT_PROCESS",
        "MountEntry",
        "MountError",
        "find_mount",
        "fusermount",
        "mount_command",
        "mount_path",
        "mount_table",
        "start_mount_process",
        "unmount",
    ),
    "service.pointlist": ("point_list_status",),
    "service.schedules": (
        "ScheduleInfo",
        "Schedules",
        "format_every",
        "policy_from_options",
    ),
    "service.service": (
        "Service",
        "check_backup_options",
        "check_cluster_volume",
        "init_repository",
        "list_local_snapshots",
        "parse_volume",
        "ranges_from_json_file",
        "read_password_file",
    ),
}
_LAZY = {name: f"lamina.backend.{module}" for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain global
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "FS_TYPE",
    "JOB_KINDS",
    "MOUNT_PROCESS",
    "PATH_MAX",
    "BackupCaps",
    "Capabilities",
    "CatalogError",
    "ClusterSummary",
    "ClusterVolume",
    "CompareReport",
    "Controller",
    "CopyReport",
    "EntryWriter",
    "ExtractReport",
    "FileEntry",
    "ForgetDecision",
    "ForgetReport",
    "HistoryPage",
    "HistoryQuery",
    "ImageReadError",
    "ImageReader",
    "Job",
    "JobEvent",
    "JobNotFound",
    "JobRecord",
    "JobState",
    "JobView",
    "KubeSession",
    "LaminaError",
    "LaminaService",
    "LastGoodBackup",
    "LocalSnapshotInfo",
    "LockInfo",
    "MountEntry",
    "MountError",
    "MountInfo",
    "NotAFolder",
    "PasswordRequired",
    "PathNotAllowed",
    "PointInfo",
    "Policy",
    "Progress",
    "PruneReport",
    "Range",
    "Reachability",
    "RepositoryInfo",
    "RequestCounts",
    "RestoreReport",
    "Savings",
    "ScheduleInfo",
    "Schedules",
    "Service",
    "Skipped",
    "TargetError",
    "TargetExists",
    "VerifyReport",
    "VolumeComparison",
    "VolumeInfo",
    "VolumeRef",
    "WrongPassword",
    "backup_options_from_cbt",
    "check_backup_options",
    "check_cluster_volume",
    "check_clusters",
    "checked_ranges",
    "datamover_manifests",
    "default_local_root",
    "default_repo",
    "find_mount",
    "forget_savings",
    "format_cost",
    "format_every",
    "fusermount",
    "init_repository",
    "list_clusters",
    "list_local_snapshots",
    "metadata_client",
    "mount_command",
    "mount_path",
    "mount_table",
    "open_folder",
    "parse_keep_within",
    "parse_pvc_ref",
    "parse_volume",
    "point_list_status",
    "policy_from_options",
    "prune_savings",
    "ranges_from_json_file",
    "read_history",
    "read_password_file",
    "run_demo",
    "serve_snapshot_metadata",
    "shown",
    "start_mount_process",
    "start_restore_to_pvc",
    "summary",
    "take_local_snapshot",
    "unmount",
    "unsafe_name_reason",
    "view_of",
    "write_sparse",
]
