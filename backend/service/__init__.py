"""The service layer: the one contract every front end (CLI, TUI, FUSE, gRPC API) talks to.

Front ends import this package and nothing deeper of the backend (ARCHITECTURE.md). What
they show or pass that the engine or an integration defines is re-exported here; a few
heavier names (the filesystem view's, the CBT client's) load on first use. The models
(models.py) hold the file entry and the extract report, so the parsers load with them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..defaults import default_local_root, default_repo
from ..engine.extents import Range, checked_ranges
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
from ..errors import LaminaError
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

if TYPE_CHECKING:
    from ..cbt.client import MetadataMessage as MetadataMessage
    from ..cbt.client import MetadataStream as MetadataStream
    from ..cbt.client import SnapshotMetadataClient as SnapshotMetadataClient
    from ..engine.fsview import Node as Node
    from ..engine.fsview import OpenFile as OpenFile
    from ..engine.fsview import PointFiles as PointFiles
    from ..engine.fsview import PointSource as PointSource
    from ..engine.fsview import RepositoryView as RepositoryView
    from ..engine.fsview import ViewPoint as ViewPoint
    from ..fsread import Entry as Entry

# Loaded on first use: the filesystem view (and extraction over it) pulls in the ext4 and xfs
# parsers, cbt pulls in gRPC.
_LAZY = {
    "MetadataMessage": "lamina.backend.cbt.client",
    "MetadataStream": "lamina.backend.cbt.client",
    "SnapshotMetadataClient": "lamina.backend.cbt.client",
    "Node": "lamina.backend.engine.fsview",
    "OpenFile": "lamina.backend.engine.fsview",
    "PointFiles": "lamina.backend.engine.fsview",
    "PointSource": "lamina.backend.engine.fsview",
    "RepositoryView": "lamina.backend.engine.fsview",
    "ViewPoint": "lamina.backend.engine.fsview",
    "Entry": "lamina.backend.fsread",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


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
