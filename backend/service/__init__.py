"""The service layer: the one contract every front end (CLI, TUI, FUSE, gRPC API) talks to.

Front ends import this package and nothing deeper of the backend (ARCHITECTURE.md).
"""

from ..engine.image import ImageReader, ImageReadError
from ..engine.safewrite import PATH_MAX, PathNotAllowed, TargetError, TargetExists
from ..errors import LaminaError
from ..limits import parse_keep_within, shown
from ..progress import Progress
from .contract import LaminaService
from .jobs import BackupCaps, Job, JobState, summary, view_of
from .models import (
    Capabilities,
    ClusterSummary,
    ClusterVolume,
    ExtractReport,
    FileEntry,
    ForgetDecision,
    ForgetReport,
    JobView,
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
    VolumeInfo,
    VolumeRef,
)
from .mounts import FS_TYPE, MountEntry, mount_path, mount_table
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

__all__ = [
    "FS_TYPE",
    "PATH_MAX",
    "BackupCaps",
    "Capabilities",
    "ClusterSummary",
    "ClusterVolume",
    "ExtractReport",
    "FileEntry",
    "ForgetDecision",
    "ForgetReport",
    "ImageReadError",
    "ImageReader",
    "Job",
    "JobState",
    "JobView",
    "LaminaError",
    "LaminaService",
    "LocalSnapshotInfo",
    "LockInfo",
    "MountEntry",
    "MountInfo",
    "PathNotAllowed",
    "PointInfo",
    "Progress",
    "PruneReport",
    "Reachability",
    "RepositoryInfo",
    "RestoreReport",
    "Service",
    "Skipped",
    "TargetError",
    "TargetExists",
    "VerifyReport",
    "VolumeInfo",
    "VolumeRef",
    "check_backup_options",
    "check_cluster_volume",
    "init_repository",
    "list_local_snapshots",
    "mount_path",
    "mount_table",
    "parse_keep_within",
    "parse_volume",
    "ranges_from_json_file",
    "read_password_file",
    "shown",
    "summary",
    "view_of",
]
