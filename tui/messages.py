"""Messages: how worker threads and the job feed hand results to the UI thread."""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.message import Message

from lamina.backend.service import (
    ClusterSummary,
    ClusterVolume,
    FileEntry,
    JobView,
    LastGoodBackup,
    PointInfo,
    Reachability,
)


@dataclass
class ActionFailed(Message):
    """Something the user asked for did not work; ``reason`` is one plain line."""

    what: str
    reason: str


@dataclass
class JobsPending(Message):
    """Backend threads changed jobs; the app collects the changes when it next draws."""


@dataclass
class JobsUpdated(Message):
    """The newest view of every job that changed since the last update."""

    views: list[JobView] = field(default_factory=list)


@dataclass
class JobStarted(Message):
    job_id: str
    description: str


@dataclass
class ClustersLoaded(Message):
    clusters: list[ClusterSummary]


@dataclass
class ClustersChecked(Message):
    results: dict[str, Reachability]


@dataclass
class VolumesLoaded(Message):
    cluster: str
    volumes: list[ClusterVolume]
    error: str | None = None
    # Each volume's newest successful backup in the job history, by volume key; None: the
    # history could not be read.
    last_good: dict[str, LastGoodBackup] | None = None


@dataclass
class PointsLoaded(Message):
    volume: str
    points: list[PointInfo]
    error: str | None = None


@dataclass
class FilesLoaded(Message):
    point_id: str
    path: str
    entries: list[FileEntry]
    error: str | None = None


@dataclass
class PreviewLoaded(Message):
    point_id: str
    path: str
    data: bytes | None
    error: str | None = None


@dataclass
class MountsChanged(Message):
    mounts: dict[str, str]
