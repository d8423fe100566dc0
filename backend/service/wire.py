"""Between the service layer's models (models.py) and the lamina.v1 messages, both ways.

The one place of the conversion: the server turns models into messages, ``RemoteService``
turns messages back into the very same models, so code written against the service layer
(the CLI's printing, the TUI's screens) works unchanged on what a server sent. Fields that
have one name and one meaning on both sides are copied by ``_to``/``_from`` from the
message's descriptor; only what differs is written out.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, TypeVar, cast

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from lamina.protos import lamina_v1_pb2 as pb

from ..engine.lifecycle import Policy
from ..errors import UsageError
from ..fsread import Entry
from ..limits import parse_keep_within
from ..progress import Progress
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
    JobRecord,
    JobView,
    LastGoodBackup,
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
from .schedules import ScheduleInfo

M = TypeVar("M", bound=Message)
T = TypeVar("T")


def _plain_fields(message_type: type[Message]) -> list[Any]:
    """The message's scalar and repeated-scalar fields (not messages, not enums)."""
    return [
        f for f in message_type.DESCRIPTOR.fields if f.message_type is None and f.enum_type is None
    ]


def _to(obj: object, message_type: type[M], **extra: Any) -> M:
    """A message from ``obj``: every plain field ``obj`` has under the same name (None
    leaves an optional field unset), then ``extra``."""
    values: dict[str, Any] = {}
    for f in _plain_fields(message_type):
        if f.name in extra or not hasattr(obj, f.name):
            continue
        value = getattr(obj, f.name)
        if value is not None:
            values[f.name] = list(value) if f.is_repeated else value
    values.update({k: v for k, v in extra.items() if v is not None})
    return message_type(**values)


def _from(message: Message, cls: type[T], **extra: Any) -> T:
    """A model from ``message``: every plain field of the message that ``cls`` has under
    the same name (an unset optional field reads None), then ``extra``."""
    names = {f.name for f in dataclasses.fields(cast(Any, cls))}
    values: dict[str, Any] = {}
    for f in _plain_fields(type(message)):
        if f.name not in names or f.name in extra:
            continue
        if f.has_presence and not message.HasField(f.name):
            values[f.name] = None
        else:
            value = getattr(message, f.name)
            values[f.name] = list(value) if f.is_repeated else value
    values.update(extra)
    return cast(T, cast(Any, cls)(**values))


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
    return _to(info, pb.RepositoryInfo)


def repository_info(message: pb.RepositoryInfo, server: str | None = None) -> RepositoryInfo:
    return _from(message, RepositoryInfo, server=server)


def capabilities_message(capabilities: Capabilities) -> pb.Capabilities:
    return _to(capabilities, pb.Capabilities)


def capabilities(message: pb.Capabilities) -> Capabilities:
    return _from(message, Capabilities)


_STAT_FIELDS = (
    "bytes_read",
    "bytes_new",
    "bytes_stored",
    "bytes_deduplicated",
    "bytes_zero",
    "bytes_uploaded",
    "requests",
)


def point_message(point: PointInfo, *, manifest: bool = False) -> pb.Point:
    s = point.stats
    message = _to(
        point,
        pb.Point,
        volume=volume_message(point.volume),
        stats=pb.PointStats(
            duration_seconds=float(s.get("duration_seconds", 0.0)),
            **{name: int(s.get(name, 0)) for name in _STAT_FIELDS},
        ),
        stats_json=json.dumps(point.stats, sort_keys=True),
    )
    if manifest:
        message.manifest_json = json.dumps(point.manifest, sort_keys=True)
    return message


def point_info(message: pb.Point) -> PointInfo:
    """The PointInfo a server described; ``manifest`` is {} unless the message carried it."""
    stats: dict[str, Any] = json.loads(message.stats_json) if message.stats_json else {}
    manifest: dict[str, Any] = json.loads(message.manifest_json) if message.manifest_json else {}
    return _from(
        message, PointInfo, volume=volume_ref(message.volume), stats=stats, manifest=manifest
    )


def volume_summary_message(volume: VolumeInfo) -> pb.VolumeSummary:
    return _to(
        volume,
        pb.VolumeSummary,
        volume=volume_message(volume.volume),
        last_point=point_message(volume.last_point),
    )


def volume_info(message: pb.VolumeSummary) -> VolumeInfo:
    return _from(
        message,
        VolumeInfo,
        volume=volume_ref(message.volume),
        last_point=point_info(message.last_point),
    )


# ---------------------------------------------------------------------------- clusters


def cluster_message(cluster: ClusterSummary) -> pb.Cluster:
    return _to(cluster, pb.Cluster)


def cluster_summary(message: pb.Cluster) -> ClusterSummary:
    return _from(message, ClusterSummary)


def check_message(name: str, result: Reachability) -> pb.ClusterCheck:
    return _to(result, pb.ClusterCheck, name=name)


def reachability(message: pb.ClusterCheck) -> Reachability:
    return _from(message, Reachability)


def cluster_volume_message(volume: ClusterVolume) -> pb.ClusterVolume:
    return _to(volume, pb.ClusterVolume)


def cluster_volume(message: pb.ClusterVolume) -> ClusterVolume:
    return _from(message, ClusterVolume)


# ---------------------------------------------------------------------------- progress


def progress_message(p: Progress) -> pb.Progress:
    return _to(p, pb.Progress, eta_seconds=p.eta, elapsed_seconds=p.elapsed)


def progress(message: pb.Progress) -> Progress:
    return _from(
        message,
        Progress,
        eta=message.eta_seconds if message.HasField("eta_seconds") else None,
        elapsed=message.elapsed_seconds,
        unit=message.unit or "bytes",
    )


# ---------------------------------------------------------------------------- results


def restore_message(report: RestoreReport) -> pb.RestoreResult:
    return _to(report, pb.RestoreResult)


def restore_report(message: pb.RestoreResult) -> RestoreReport:
    return _from(message, RestoreReport)


def verify_message(report: VerifyReport) -> pb.VerifyResult:
    return _to(report, pb.VerifyResult)


def verify_report(message: pb.VerifyResult) -> VerifyReport:
    return _from(message, VerifyReport)


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


def prune_message(report: PruneReport) -> pb.PruneResult:
    return _to(report, pb.PruneResult)


def prune_report(message: pb.PruneResult) -> PruneReport:
    return _from(message, PruneReport)


def lock_message(lock: LockInfo) -> pb.Lock:
    return _to(lock, pb.Lock, created=timestamp(lock.created), expires=timestamp(lock.expires))


def lock_info(message: pb.Lock) -> LockInfo:
    return _from(
        message,
        LockInfo,
        created=seconds_of(message.created),
        expires=seconds_of(message.expires),
    )


def mount_message(mount: MountInfo) -> pb.MountInfo:
    return _to(mount, pb.MountInfo, repository=mount.repo)


def mount_info(message: pb.MountInfo) -> MountInfo:
    return _from(message, MountInfo, repo=message.repository)


def extract_message(report: ExtractReport) -> pb.ExtractResult:
    skipped = [pb.SkippedPath(path=s.path, reason=s.reason) for s in report.skipped]
    return _to(report, pb.ExtractResult, skipped=skipped)


def extract_report(message: pb.ExtractResult) -> ExtractReport:
    skipped = [Skipped(s.path, s.reason) for s in message.skipped]
    return _from(message, ExtractReport, skipped=skipped)


def copy_message(report: CopyReport) -> pb.CopyResult:
    return _to(report, pb.CopyResult)


def copy_report(message: pb.CopyResult) -> CopyReport:
    return _from(message, CopyReport)


def compare_message(report: CompareReport) -> pb.CompareResult:
    return _to(
        report,
        pb.CompareResult,
        volumes=[_to(v, pb.VolumeComparison) for v in report.volumes],
    )


def compare_report(message: pb.CompareResult) -> CompareReport:
    return _from(
        message,
        CompareReport,
        volumes=[_from(v, VolumeComparison) for v in message.volumes],
    )


def delta_restore_message(report: dict[str, Any]) -> pb.DeltaRestoreResult:
    """A delta restore's report (engine/delta.py: a dict of plain values) as a message."""
    names = {f.name for f in pb.DeltaRestoreResult.DESCRIPTOR.fields}
    return pb.DeltaRestoreResult(
        **{k: v for k, v in report.items() if k in names and v is not None}
    )


def delta_restore_report(message: pb.DeltaRestoreResult) -> dict[str, Any]:
    """The same dict the in-process delta restore returns."""
    report: dict[str, Any] = {"delta": True}
    for f in _plain_fields(pb.DeltaRestoreResult):
        present = not f.has_presence or message.HasField(f.name)
        report[f.name] = getattr(message, f.name) if present else None
    return report


# ---------------------------------------------------------------------------- requests

_KEEP = ("last", "hourly", "daily", "weekly", "monthly", "yearly")  # Policy field: keep_FIELD


def forget_request(policy: Policy, *, volume: str | None, dry_run: bool) -> pb.StartForgetRequest:
    within = ""
    if policy.within is not None:
        within = f"{int(policy.within.total_seconds() // 3600)}h"
    counts = {f"keep_{name}": getattr(policy, name) for name in _KEEP}
    return pb.StartForgetRequest(**counts, keep_within=within, volume=volume or "", dry_run=dry_run)


def policy(request: pb.StartForgetRequest) -> Policy:
    """The retention policy a request names; a negative count is refused in one line."""
    counts = {name: getattr(request, f"keep_{name}") for name in _KEEP}
    for name, value in counts.items():
        if value < 0:
            raise UsageError(f"keep_{name} must not be negative")
    within = parse_keep_within(request.keep_within) if request.keep_within else None
    return Policy(**counts, within=within)


# ---------------------------------------------------------------------------- jobs

# A job's result by the type it has on this side and its field in the Task's oneof.
_RESULTS: list[tuple[type[Any], str, Callable[[Any], Message], Callable[[Any], Any]]] = [
    (RestoreReport, "restore", restore_message, restore_report),
    (VerifyReport, "verify", verify_message, verify_report),
    (ExtractReport, "extract", extract_message, extract_report),
    (ForgetReport, "forget", forget_message, forget_report),
    (PruneReport, "prune", prune_message, prune_report),
    (CopyReport, "copy", copy_message, copy_report),
    (dict, "delta_restore", delta_restore_message, delta_restore_report),  # restore --delta
    (PointInfo, "backup", point_message, point_info),  # "consolidate" for a consolidation
]
_READERS = {name: read for _, name, _, read in _RESULTS} | {"consolidate": point_info}


def _state_message(state: str) -> int:
    return pb.TaskState.Value(f"TASK_STATE_{state.upper()}")


def _state(value: int) -> str:
    name = pb.TaskState.Name(cast(Any, value)) if value in pb.TaskState.values() else ""
    return name.removeprefix("TASK_STATE_").lower() if value else "unknown"


def job_message(view: JobView, *, include_log: bool = False) -> pb.Task:
    message = _to(
        view,
        pb.Task,
        state=_state_message(view.state),
        error=view.error or "",
        point=view.point or "",
        log=list(view.log) if include_log else [],
        created=timestamp(view.created),
        started=timestamp(view.started) if view.started is not None else None,
        finished=timestamp(view.ended) if view.ended is not None else None,
        volume=volume_message(view.volume) if view.volume is not None else None,
        progress=progress_message(view.progress) if view.progress is not None else None,
    )
    result = view.result
    if view.kind == "delete" and isinstance(result, list):
        message.delete.children.extend(str(c) for c in result)
        return message
    for kind, name, to_message, _ in _RESULTS:
        if isinstance(result, kind):
            field = "consolidate" if view.kind == "consolidate" else name
            getattr(message, field).CopyFrom(to_message(result))
            break
    return message


def job_view(message: pb.Task) -> JobView:
    which = message.WhichOneof("result")
    result: Any = None
    if which == "delete":
        result = list(message.delete.children)
    elif which is not None:
        result = _READERS[which](getattr(message, which))
    return _from(
        message,
        JobView,
        state=_state(message.state),
        error=message.error or None,
        point=message.point or None,
        log=tuple(message.log),
        progress=progress(message.progress) if message.HasField("progress") else None,
        created=seconds_of(message.created),
        started=seconds_of(message.started) if message.HasField("started") else None,
        ended=seconds_of(message.finished) if message.HasField("finished") else None,
        volume=volume_ref(message.volume) if message.HasField("volume") else None,
        result=result,
    )


# ---------------------------------------------------------------------------- history


def history_job_message(record: JobRecord) -> pb.JobRecord:
    return _to(
        record,
        pb.JobRecord,
        created=timestamp(record.created_at),
        started=timestamp(record.started_at) if record.started_at is not None else None,
        ended=timestamp(record.ended_at) if record.ended_at is not None else None,
        requests=dict(record.requests),
        events=[
            pb.JobStateChange(at=timestamp(e.at), state=e.state, message=e.message)
            for e in record.events
        ],
    )


def history_job(message: pb.JobRecord) -> JobRecord:
    return _from(
        message,
        JobRecord,
        created_at=seconds_of(message.created),
        started_at=seconds_of(message.started) if message.HasField("started") else None,
        ended_at=seconds_of(message.ended) if message.HasField("ended") else None,
        requests=dict(message.requests),
        events=[JobEvent(seconds_of(e.at), e.state, e.message) for e in message.events],
    )


def history_page_message(page: HistoryPage) -> pb.ListHistoryResponse:
    return pb.ListHistoryResponse(
        jobs=[history_job_message(r) for r in page.jobs], next_page_token=page.next_page_token
    )


def history_page(message: pb.ListHistoryResponse) -> HistoryPage:
    return HistoryPage(
        jobs=[history_job(m) for m in message.jobs], next_page_token=message.next_page_token
    )


# ---------------------------------------------------------------------------- schedules


def schedule_message(info: ScheduleInfo) -> pb.Schedule:
    return _to(
        info,
        pb.Schedule,
        retention_json=json.dumps(info.retention, sort_keys=True),
        next_run=timestamp(info.next_run),
        last_run=timestamp(info.last_run) if info.last_run is not None else None,
        created=timestamp(info.created_at),
    )


def schedule_info(message: pb.Schedule) -> ScheduleInfo:
    try:
        retention = json.loads(message.retention_json or "{}")
    except ValueError:
        retention = {}
    return _from(
        message,
        ScheduleInfo,
        retention=retention if isinstance(retention, dict) else {},
        next_run=seconds_of(message.next_run),
        last_run=seconds_of(message.last_run) if message.HasField("last_run") else None,
        created_at=seconds_of(message.created),
    )


def last_good_message(backup: LastGoodBackup) -> pb.LastGoodBackup:
    return _to(
        backup,
        pb.LastGoodBackup,
        ended=timestamp(backup.ended_at) if backup.ended_at is not None else None,
        allowed_age_seconds=backup.allowed_age,
        scheduled_since=(
            timestamp(backup.scheduled_since) if backup.scheduled_since is not None else None
        ),
    )


def last_good(message: pb.LastGoodBackup) -> LastGoodBackup:
    return _from(
        message,
        LastGoodBackup,
        ended_at=seconds_of(message.ended) if message.HasField("ended") else None,
        allowed_age=message.allowed_age_seconds,
        scheduled_since=(
            seconds_of(message.scheduled_since) if message.HasField("scheduled_since") else None
        ),
    )


# ---------------------------------------------------------------------------- files


def entry_message(entry: Entry, link_target: str | None = None) -> pb.FileEntry:
    target = link_target if link_target is not None else entry.link_target
    return _to(
        entry,
        pb.FileEntry,
        name=display_name(entry.name),
        raw_name=entry.name.encode("utf-8", "surrogateescape"),
        link_target=target.encode("utf-8", "surrogateescape") if target is not None else None,
    )


def file_entry(message: pb.FileEntry, folder: str) -> FileEntry:
    """A file of ``folder`` as a server described it (ctime is not sent: it reads as mtime)."""
    name = message.raw_name.decode("utf-8", "surrogateescape")
    return _from(
        message,
        FileEntry,
        name=name,
        ctime_ns=message.mtime_ns,
        link_target=(
            message.link_target.decode("utf-8", "surrogateescape")
            if message.HasField("link_target")
            else None
        ),
        path=folder.rstrip("/") + "/" + name,
    )
