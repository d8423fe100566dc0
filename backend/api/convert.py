"""Between the service layer's dataclasses and the lamina.v1 messages, both ways.

The server turns PointInfo, Progress, Entry and job results into messages; the client turns
messages back into the very same dataclasses, so code written against the service layer
(the CLI's printing, for one) works unchanged on what a server sent.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from lamina.protos import lamina_v1_pb2 as pb

from ..errors import UsageError
from ..progress import Progress
from ..service import (
    ClusterSummary,
    ClusterVolume,
    Entry,
    ExtractReport,
    ForgetDecision,
    ForgetReport,
    LockInfo,
    MountInfo,
    PointInfo,
    PruneReport,
    Reachability,
    RepositoryInfo,
    Skipped,
    VerifyReport,
    VolumeInfo,
    VolumeRef,
)

# ---------------------------------------------------------------------------- small types


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def seconds_of(ts: Timestamp) -> float:
    return ts.ToNanoseconds() / 1e9


def volume_message(ref: VolumeRef) -> pb.VolumeRef:
    return pb.VolumeRef(cluster=ref.cluster, namespace=ref.namespace, name=ref.name)


def volume_ref(message: pb.VolumeRef) -> VolumeRef:
    return VolumeRef(message.cluster, message.namespace, message.name)


def file_path_message(path: str) -> pb.FilePath:
    """A path for a request: as text when it is valid UTF-8, else as its raw bytes."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return pb.FilePath(raw=path.encode("utf-8", "surrogateescape"))
    return pb.FilePath(text=path)


def file_path_text(message: pb.FilePath, default: str = "/") -> str:
    """The path a request names, undecodable bytes kept as surrogates (as the readers do)."""
    if message.raw:
        if b"\0" in message.raw:
            raise UsageError("a path must not contain a NUL byte")
        return message.raw.decode("utf-8", "surrogateescape")
    if "\0" in message.text:
        raise UsageError("a path must not contain a NUL byte")
    return message.text or default


def display_name(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# ---------------------------------------------------------------------------- repository


def repository_message(info: RepositoryInfo) -> pb.RepositoryInfo:
    return pb.RepositoryInfo(
        url=info.url,
        id=info.id,
        version=info.version,
        grid_size=info.grid_size,
        encrypted=info.encrypted,
        compression=info.compression,
        created=info.created,
        object_lock_days=int(getattr(info, "object_lock_days", 0)),
    )


def repository_info(message: pb.RepositoryInfo) -> RepositoryInfo:
    return RepositoryInfo(
        url=message.url,
        id=message.id,
        version=message.version,
        grid_size=message.grid_size,
        encrypted=message.encrypted,
        compression=message.compression,
        created=message.created,
        object_lock_days=message.object_lock_days,
    )


_STAT_FIELDS = (
    "bytes_read",
    "bytes_new",
    "bytes_stored",
    "bytes_deduplicated",
    "bytes_zero",
    "bytes_uploaded",
    "requests",
)


def point_message(point: PointInfo, *, manifest: bool = False, verify_state: str = "") -> pb.Point:
    s = point.stats
    message = pb.Point(
        id=point.id,
        kind=point.kind,
        volume=volume_message(point.volume),
        created=point.created,
        capacity=point.capacity,
        image_digest=point.image_digest,
        stats=pb.PointStats(
            duration_seconds=float(s.get("duration_seconds", 0.0)),
            **{name: int(s.get(name, 0)) for name in _STAT_FIELDS},
        ),
        notes=point.notes,
        protected=point.protected,
        stats_json=json.dumps(point.stats, sort_keys=True),
        verify_state=verify_state,
    )
    if point.parent is not None:
        message.parent = point.parent
    if point.snapshot_handle is not None:
        message.snapshot_handle = point.snapshot_handle
    if manifest:
        message.manifest_json = json.dumps(point.manifest, sort_keys=True)
    return message


def point_info(message: pb.Point) -> PointInfo:
    """The PointInfo a server described; ``manifest`` is {} unless the message carried it."""
    stats: dict[str, Any] = json.loads(message.stats_json) if message.stats_json else {}
    manifest: dict[str, Any] = json.loads(message.manifest_json) if message.manifest_json else {}
    return PointInfo(
        id=message.id,
        parent=message.parent if message.HasField("parent") else None,
        kind=message.kind,
        volume=volume_ref(message.volume),
        created=message.created,
        capacity=message.capacity,
        snapshot_handle=message.snapshot_handle if message.HasField("snapshot_handle") else None,
        image_digest=message.image_digest,
        stats=stats,
        notes=list(message.notes),
        manifest=manifest,
        protected=message.protected,
    )


def volume_summary_message(volume: VolumeInfo) -> pb.VolumeSummary:
    return pb.VolumeSummary(
        volume=volume_message(volume.volume),
        points=volume.points,
        last_point=point_message(volume.last_point),
        capacity=volume.capacity,
        stored_bytes=volume.stored_bytes,
    )


def volume_info(message: pb.VolumeSummary) -> VolumeInfo:
    return VolumeInfo(
        volume=volume_ref(message.volume),
        points=message.points,
        last_point=point_info(message.last_point),
        capacity=message.capacity,
        stored_bytes=message.stored_bytes,
    )


# ---------------------------------------------------------------------------- clusters


def cluster_message(cluster: ClusterSummary) -> pb.Cluster:
    message = pb.Cluster(name=cluster.name, kind=cluster.kind, current=cluster.current)
    if cluster.server is not None:
        message.server = cluster.server
    if cluster.namespace is not None:
        message.namespace = cluster.namespace
    return message


def cluster_summary(message: pb.Cluster) -> ClusterSummary:
    return ClusterSummary(
        name=message.name,
        kind=message.kind,
        current=message.current,
        server=message.server if message.HasField("server") else None,
        namespace=message.namespace if message.HasField("namespace") else None,
    )


def check_message(name: str, result: Reachability) -> pb.ClusterCheck:
    return pb.ClusterCheck(name=name, ok=result.ok, detail=result.detail, seconds=result.seconds)


def reachability(message: pb.ClusterCheck) -> Reachability:
    return Reachability(message.ok, message.detail, message.seconds)


def cluster_volume_message(volume: ClusterVolume) -> pb.ClusterVolume:
    return pb.ClusterVolume(
        cluster=volume.cluster,
        namespace=volume.namespace,
        name=volume.name,
        mode=volume.mode,
        capacity=volume.capacity,
        storage_class=volume.storage_class,
        driver=volume.driver,
        cbt=volume.cbt,
        phase=volume.phase,
    )


def cluster_volume(message: pb.ClusterVolume) -> ClusterVolume:
    return ClusterVolume(
        cluster=message.cluster,
        namespace=message.namespace,
        name=message.name,
        mode=message.mode,
        capacity=message.capacity,
        storage_class=message.storage_class,
        driver=message.driver,
        cbt=message.cbt,
        phase=message.phase,
    )


# ---------------------------------------------------------------------------- progress


def progress_message(p: Progress) -> pb.Progress:
    message = pb.Progress(
        phase=p.phase,
        done=p.done,
        rate=p.rate,
        read=p.read,
        stored=p.stored,
        deduplicated=p.deduplicated,
        elapsed_seconds=p.elapsed,
        message=p.message,
        unit=p.unit,
    )
    if p.total is not None:
        message.total = p.total
    if p.eta is not None:
        message.eta_seconds = p.eta
    return message


def progress(message: pb.Progress) -> Progress:
    return Progress(
        phase=message.phase,
        done=message.done,
        total=message.total if message.HasField("total") else None,
        rate=message.rate,
        eta=message.eta_seconds if message.HasField("eta_seconds") else None,
        stored=message.stored,
        deduplicated=message.deduplicated,
        read=message.read,
        message=message.message,
        elapsed=message.elapsed_seconds,
        unit=message.unit or "bytes",
    )


# ---------------------------------------------------------------------------- results


def restore_message(result: dict[str, Any]) -> pb.RestoreResult:
    return pb.RestoreResult(
        point=str(result.get("point", "")),
        target=str(result.get("target", "")),
        capacity=int(result.get("capacity", 0)),
        bytes_written=int(result.get("bytes_written", 0)),
        duration_seconds=float(result.get("duration_seconds", 0.0)),
        image_digest=str(result.get("image_digest", "")),
        requests=int(result.get("requests", 0)),
    )


def restore_result(message: pb.RestoreResult) -> dict[str, Any]:
    """The same dict the service's restore job returns."""
    return {
        "point": message.point,
        "target": message.target,
        "capacity": message.capacity,
        "bytes_written": message.bytes_written,
        "duration_seconds": message.duration_seconds,
        "image_digest": message.image_digest,
        "requests": message.requests,
    }


def verify_message(report: VerifyReport) -> pb.VerifyResult:
    return pb.VerifyResult(
        ok=report.ok,
        points=report.points,
        pieces=report.pieces,
        deep=report.deep,
        bytes_checked=report.bytes_checked,
        problems=report.problems,
    )


def verify_report(message: pb.VerifyResult) -> VerifyReport:
    return VerifyReport(
        points=message.points,
        pieces=message.pieces,
        bytes_checked=message.bytes_checked,
        deep=message.deep,
        problems=list(message.problems),
    )


def forget_message(report: ForgetReport) -> pb.ForgetResult:
    return pb.ForgetResult(
        dry_run=report.dry_run,
        decisions=[
            pb.ForgetDecision(point=point_message(d.point), keep=d.keep, reasons=d.reasons)
            for d in report.decisions
        ],
        removed=report.removed,
    )


def forget_report(message: pb.ForgetResult) -> ForgetReport:
    return ForgetReport(
        dry_run=message.dry_run,
        decisions=[
            ForgetDecision(point_info(d.point), d.keep, list(d.reasons)) for d in message.decisions
        ],
        removed=list(message.removed),
    )


_PRUNE_FIELDS = [f.name for f in dataclasses.fields(PruneReport) if f.name != "problems"]


def prune_message(report: PruneReport) -> pb.PruneResult:
    message = pb.PruneResult(problems=report.problems)
    for name in _PRUNE_FIELDS:
        setattr(message, name, getattr(report, name))
    return message


def prune_report(message: pb.PruneResult) -> PruneReport:
    counters = {name: getattr(message, name) for name in _PRUNE_FIELDS}
    return PruneReport(**counters, problems=list(message.problems))


def lock_message(lock: LockInfo) -> pb.Lock:
    return pb.Lock(
        key=lock.key,
        kind=lock.kind,
        purpose=lock.purpose,
        host=lock.host,
        pid=lock.pid,
        created=timestamp(lock.created),
        expires=timestamp(lock.expires),
        stale=lock.stale,
    )


def lock_info(message: pb.Lock) -> LockInfo:
    return LockInfo(
        key=message.key,
        kind=message.kind,
        purpose=message.purpose,
        host=message.host,
        pid=message.pid,
        created=seconds_of(message.created),
        expires=seconds_of(message.expires),
    )


def mount_message(mount: MountInfo) -> pb.MountInfo:
    message = pb.MountInfo(mountpoint=mount.mountpoint, pid=mount.pid, repository=mount.repo)
    if mount.point is not None:
        message.point = mount.point
    return message


def mount_info(message: pb.MountInfo) -> MountInfo:
    return MountInfo(
        mountpoint=message.mountpoint,
        point=message.point if message.HasField("point") else None,
        pid=message.pid,
        repo=message.repository,
    )


def extract_message(report: ExtractReport) -> pb.ExtractResult:
    return pb.ExtractResult(
        target=report.target,
        files=report.files,
        directories=report.directories,
        symlinks=report.symlinks,
        others=report.others,
        bytes=report.bytes,
        skipped=[pb.SkippedPath(path=s.path, reason=s.reason) for s in report.skipped],
    )


def extract_report(message: pb.ExtractResult) -> ExtractReport:
    return ExtractReport(
        target=message.target,
        files=message.files,
        directories=message.directories,
        symlinks=message.symlinks,
        others=message.others,
        bytes=message.bytes,
        skipped=[Skipped(s.path, s.reason) for s in message.skipped],
    )


# ---------------------------------------------------------------------------- files


def entry_message(entry: Entry, link_target: str | None = None) -> pb.FileEntry:
    message = pb.FileEntry(
        name=display_name(entry.name),
        raw_name=entry.name.encode("utf-8", "surrogateescape"),
        kind=entry.kind,
        size=entry.size,
        mode=entry.mode,
        uid=entry.uid,
        gid=entry.gid,
        nlink=entry.nlink,
        inode=entry.inode,
        mtime_ns=entry.mtime_ns,
        atime_ns=entry.atime_ns,
    )
    target = link_target if link_target is not None else entry.link_target
    if target is not None:
        message.link_target = target.encode("utf-8", "surrogateescape")
    return message


def entry(message: pb.FileEntry) -> Entry:
    """The filesystem entry a server described (ctime is not sent: it reads as mtime)."""
    return Entry(
        name=message.raw_name.decode("utf-8", "surrogateescape"),
        kind=message.kind,
        inode=message.inode,
        size=message.size,
        mode=message.mode,
        uid=message.uid,
        gid=message.gid,
        nlink=message.nlink,
        mtime_ns=message.mtime_ns,
        atime_ns=message.atime_ns,
        ctime_ns=message.mtime_ns,
        link_target=(
            message.link_target.decode("utf-8", "surrogateescape")
            if message.HasField("link_target")
            else None
        ),
    )
