"""Copies between repositories and comparisons of two: the policy every front end shares.

A copy reads the source under a shared lock (or none, with read-only credentials) and writes
the destination under the lock a backup takes, checked before each manifest, so a prune of
either side waits for it or it for the prune (docs/format.md, "Concurrency").
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..engine import locks
from ..engine.compare import CompareReport, VolumeComparison, compare_repositories
from ..engine.copy import CopyReport, check_distinct, copy_points, select_points
from ..engine.delta import delta_restore, open_target
from ..engine.repository import Point
from ..errors import UsageError
from ..limits import checked_point_ref, shown
from .jobs import Job
from .service import Service, parse_volume

__all__ = [
    "CompareReport",
    "CopyReport",
    "VolumeComparison",
    "compare",
    "start_copy",
    "start_delta_restore",
]


def _volume_filter(volume: str | None) -> tuple[str | None, dict[str, str] | None]:
    if not volume:
        return None, None
    ref = parse_volume(volume)
    return str(ref), ref.as_dict()


def start_copy(
    source: Service,
    destination: Service,
    points: Sequence[str] = (),
    *,
    volume: str | None = None,
    verify: bool = False,
    owner: Service | None = None,
) -> Job:
    """Copy points (all, those of ``volume``, or those named) with their chains.

    Both repositories are opened now: a wrong password, an unsupported format or the same
    repository twice fails here, before any job exists and before anything is written.
    The job is ``owner``'s (default: the source's): its history, caps and request meter.
    """
    refs = [checked_point_ref(p) for p in points]
    shown_volume, wanted = _volume_filter(volume)
    src, dst = source.repo, destination.repo
    check_distinct(src, dst)

    def run(job: Job) -> CopyReport:
        with (
            source._lock(job, locks.SHARED, f"copy to {dst.url}", optional=True),
            destination._lock(job, locks.SHARED, f"copy from {src.url}") as held,
        ):
            listed = src.list_points()
            chosen = select_points(
                src, listed, refs, (lambda p: p.volume == wanted) if wanted else None
            )
            if not chosen:
                what = f" of volume {shown(shown_volume)}" if shown_volume else ""
                raise UsageError(f"the source has no restore points{what} to copy")
            return copy_points(
                src,
                dst,
                chosen,
                verify=verify,
                progress=job._on_progress,
                cancelled=lambda: job.cancel_requested,
                before_commit=held.check,
            )

    what = (
        ", ".join(refs) if refs else (f"volume {shown_volume}" if shown_volume else "every point")
    )
    return (owner or source)._start("copy", f"copy {what} from {src.url} to {dst.url}", run)


def compare(a: Service, b: Service, *, volume: str | None = None) -> CompareReport:
    """Which points each of two repositories holds, per volume, and what a copy would move."""
    left, right = a.repo, b.repo
    check_distinct(left, right)
    _, wanted = _volume_filter(volume)

    def keep(p: Point) -> bool:
        return wanted is None or p.volume == wanted

    with (
        a._lock(None, locks.SHARED, f"compare with {right.url}", optional=True),
        b._lock(None, locks.SHARED, f"compare with {left.url}", optional=True),
    ):
        return compare_repositories(left, right, keep)


def start_delta_restore(
    service: Service, point_ref: str, target: str, *, assume_from: str | None = None
) -> Job:
    """Restore a point onto a target that holds some version of the volume, writing only
    the blocks that differ. The target is checked now (exists, not mounted, large enough)."""
    checked_point_ref(point_ref)
    if assume_from:
        checked_point_ref(assume_from)
    fd, _ = open_target(target, service.find_point(point_ref).capacity)
    os.close(fd)

    def run(job: Job) -> dict[str, object]:
        with service._lock(job, locks.SHARED, f"restore of {point_ref}", optional=True):
            point = service.find_point(point_ref)
            base = service.find_point(assume_from) if assume_from else None
            return delta_restore(
                service.repo,
                point,
                target,
                assume_from=base,
                progress=job._on_progress,
                cancelled=lambda: job.cancel_requested,
            )

    return service._start(
        "restore", f"restore {point_ref} onto {target} (delta)", run, point=point_ref
    )
