"""The life of restore points after a backup: protection, deletion, consolidation, retention.

Deleting a point in the middle of a chain folds its extent map into each child, so every
remaining point resolves exactly as before (the image digest is checked before anything is
written). Consolidation folds a run of ancestors into a point the same way. Only maps are
rewritten; no piece data is copied.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import CorruptObject, LaminaError, UsageError
from .extents import image_digest, resolve_chain
from .fingerprints import resolve_fingerprints
from .repository import Point, Repository

PROTECTED_PREFIX = "protected/"


class PointProtected(LaminaError):
    """The point is protected and cannot be deleted."""


# ------------------------------------------------------------------------ protection


def protected_ids(repo: Repository) -> set[str]:
    return {info.key[len(PROTECTED_PREFIX) :] for info in repo.storage.list(PROTECTED_PREFIX)}


def protect(repo: Repository, point: Point, note: str = "") -> None:
    marker = {"point": point.id, "since": datetime.now(UTC).isoformat(), "note": note}
    repo.storage.put(f"{PROTECTED_PREFIX}{point.id}", json.dumps(marker).encode())


def unprotect(repo: Repository, point: Point) -> bool:
    existed = repo.storage.head(f"{PROTECTED_PREFIX}{point.id}") is not None
    repo.storage.delete(f"{PROTECTED_PREFIX}{point.id}")
    return existed


# ------------------------------------------------------------------------ folding


def _fold(repo: Repository, point: Point, ancestors: Sequence[Point]) -> Point:
    """Fold ``ancestors`` (point's parent, its parent, ... in that order) into ``point``.

    The result has the same id and resolves to the same image; its parent becomes the
    parent of the last ancestor folded.
    """
    if not ancestors:
        return point
    last = ancestors[-1]
    maps = [repo.load_map(p) for p in (point, *ancestors)]
    folded = resolve_chain(maps)
    below = repo.chain(last)[1:] if last.parent else []
    resolved = resolve_chain([folded, *[repo.load_map(p) for p in below]])
    if image_digest(point.capacity, resolved) != point.manifest.get("image_digest"):
        raise CorruptObject(
            f"folding into point {point.id} would change its image; nothing was changed"
        )
    manifest: dict[str, Any] = dict(point.manifest)
    manifest["parent"] = last.parent
    if not last.parent:
        manifest["kind"] = "full"
    manifest["consolidated"] = [
        *point.manifest.get("consolidated", []),
        *[p.id for p in ancestors],
    ]
    # The folded point lists what each folded point listed, newest first, as its map does.
    fingerprints = None
    if repo.fingerprinter is not None and any(p.fingerprints_key for p in (point, *ancestors)):
        layers = repo.fingerprint_layers([point, *ancestors])
        fingerprints = resolve_fingerprints(repo.fingerprint_block, layers)
    return repo.replace_point(manifest, folded, fingerprints)


def delete_point(
    repo: Repository, point: Point, *, points: Sequence[Point] | None = None
) -> list[str]:
    """Delete a point; its children absorb its extents first. Returns the children rewritten."""
    if point.id in protected_ids(repo):
        raise PointProtected(f"point {point.id} is protected; unprotect it first")
    everyone = list(points) if points is not None else repo.list_points()
    children = [p for p in everyone if p.parent == point.id]
    for child in children:
        _fold(repo, child, [point])
    repo.remove_point(point)
    return [c.id for c in children]


def consolidate(repo: Repository, point: Point, *, until: Point | None = None) -> Point:
    """Fold the point's ancestors into it, down to ``until`` (default: the full point).

    The ancestors stay as points of their own; only this point's map and parent change.
    """
    chain = repo.chain(point)
    if len(chain) == 1:
        raise UsageError(f"point {point.id} is a full point already; nothing to consolidate")
    ancestors = chain[1:]
    if until is not None:
        ids = [p.id for p in ancestors]
        if until.id not in ids:
            raise UsageError(f"point {until.id} is not an ancestor of {point.id}")
        ancestors = ancestors[: ids.index(until.id) + 1]
    return _fold(repo, point, ancestors)


# ------------------------------------------------------------------------ retention


@dataclass
class Policy:
    """restic's meaning: keep the newest N points, the newest point of each of the last N
    hours/days/weeks/months/years that have points, and every point within a duration of the
    volume's newest point. Protected points are always kept."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: timedelta | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.last
            or self.hourly
            or self.daily
            or self.weekly
            or self.monthly
            or self.yearly
            or self.within
        )


@dataclass
class Decision:
    point: Point
    keep: bool
    reasons: list[str] = field(default_factory=list)


_BUCKETS: list[tuple[str, str, Callable[[datetime], str]]] = [
    ("hourly", "hour", lambda t: t.strftime("%Y-%m-%d %H")),
    ("daily", "day", lambda t: t.strftime("%Y-%m-%d")),
    ("weekly", "week", lambda t: t.strftime("%G-W%V")),
    ("monthly", "month", lambda t: t.strftime("%Y-%m")),
    ("yearly", "year", lambda t: t.strftime("%Y")),
]


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '2w', '1y6m' (y years, m months, w weeks, d days, h hours, as restic)."""
    match = re.fullmatch(r"(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?", text.strip())
    if not text.strip() or not match:
        raise UsageError(f"not a duration: {text!r} (examples: 30d, 12h, 2w, 1y6m)")
    years, months, weeks, days, hours = (int(g) if g else 0 for g in match.groups())
    return timedelta(days=years * 365 + months * 30 + weeks * 7 + days, hours=hours)


def _created(point: Point) -> datetime:
    return datetime.strptime(point.created, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def plan_forget(points: Sequence[Point], policy: Policy, protected: set[str]) -> list[Decision]:
    """Which points of each volume to keep and why; newest first within each volume."""
    if policy.empty:
        raise UsageError("give at least one --keep-* option; forget never removes everything")
    by_volume: dict[str, list[Point]] = {}
    for p in points:
        by_volume.setdefault(p.volume_key, []).append(p)
    decisions: list[Decision] = []
    for volume in sorted(by_volume):
        group = sorted(by_volume[volume], key=lambda p: (p.created, p.id), reverse=True)
        newest = _created(group[0])
        kept: dict[str, list[str]] = {p.id: [] for p in group}
        for i, p in enumerate(group):
            if i < policy.last:
                kept[p.id].append(f"last {policy.last}")
            if p.id in protected:
                kept[p.id].append("protected")
            if policy.within is not None and _created(p) >= newest - policy.within:
                kept[p.id].append(
                    f"within {policy.within.days}d {policy.within.seconds // 3600}h of the newest"
                )
        for name, unit, bucket in _BUCKETS:
            count = getattr(policy, name)
            seen: list[str] = []
            for p in group:
                if len(seen) >= count:
                    break
                key = bucket(_created(p))
                if key not in seen:
                    seen.append(key)
                    kept[p.id].append(f"{name} ({unit} {key})")
        decisions.extend(Decision(p, bool(kept[p.id]), kept[p.id]) for p in group)
    return decisions


def forget(
    repo: Repository,
    decisions: Sequence[Decision],
    *,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Delete the points a plan does not keep, oldest first. Returns their ids."""
    removed: list[str] = []
    doomed = sorted((d.point for d in decisions if not d.keep), key=lambda p: (p.created, p.id))
    for point in doomed:
        fresh = repo.load_point(point.id)  # a child fold may have changed it
        delete_point(repo, fresh)
        removed.append(point.id)
        if progress is not None:
            progress(f"removed point {point.id}")
    return removed


def age(point: Point) -> float:
    return time.time() - _created(point).timestamp()
