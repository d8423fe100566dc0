"""Compare the restore points of two repositories, volume by volume.

A point is the same on both sides when it has the same id and the same identity (the
image digest of the repository that made it, volume, capacity, created time, labels,
snapshot handle); the same id with another identity is corruption or tampering. "Bytes to
move" is what a copy of the missing points would upload, before compression: where both
repositories name pieces alike, the pieces the other side's index lacks; otherwise the
pieces of the missing points that no common point references (the other side cannot be
asked by id without reading the data).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .copy import same_identities, same_point
from .format import EXTENT_DATA
from .repository import Point, Repository


@dataclass
class VolumeComparison:
    volume: str
    both: list[str] = field(default_factory=list)
    only_left: list[str] = field(default_factory=list)
    only_right: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)
    newest_common: str | None = None
    # How far each side is behind the other: points it lacks, and bytes a copy would move.
    left_behind_points: int = 0
    left_behind_bytes: int = 0
    right_behind_points: int = 0
    right_behind_bytes: int = 0

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CompareReport:
    left: str
    right: str
    volumes: list[VolumeComparison] = field(default_factory=list)

    @property
    def in_sync(self) -> bool:
        return all(not (v.only_left or v.only_right or v.differing) for v in self.volumes)

    def as_json(self) -> dict[str, Any]:
        return {
            "left": self.left,
            "right": self.right,
            "in_sync": self.in_sync,
            "volumes": [v.as_json() for v in self.volumes],
        }


def _bytes_to_move(
    src: Repository, dst: Repository, missing: Sequence[Point], common: Sequence[Point]
) -> int:
    if not missing:
        return 0
    src.load_index()
    wanted: set[bytes] = set()
    for m in src.load_maps(missing):
        wanted.update(e.piece_id for e in m if e.kind == EXTENT_DATA)
    if same_identities(src, dst):
        dst.load_index()
        wanted = {p for p in wanted if dst.index.get(p) is None}
    else:
        for m in src.load_maps(common):
            wanted.difference_update(e.piece_id for e in m if e.kind == EXTENT_DATA)
    total = 0
    for piece_id in wanted:
        entry = src.index.get(piece_id)
        total += entry.raw_size if entry is not None else 0
    return total


def compare_repositories(
    left: Repository, right: Repository, keep: Callable[[Point], bool] = lambda p: True
) -> CompareReport:
    """Compare every volume either side holds (``keep`` selects the points to look at)."""
    report = CompareReport(left.url, right.url)
    lpoints = [p for p in left.list_points() if keep(p)]
    rpoints = [p for p in right.list_points() if keep(p)]
    volumes = sorted({p.volume_key for p in lpoints} | {p.volume_key for p in rpoints})
    for volume in volumes:
        mine = {p.id: p for p in lpoints if p.volume_key == volume}
        theirs = {p.id: p for p in rpoints if p.volume_key == volume}
        v = VolumeComparison(volume)
        common_left: list[Point] = []
        common_right: list[Point] = []
        for pid in sorted(
            mine.keys() | theirs.keys(), key=lambda i: (mine.get(i) or theirs[i]).created
        ):
            a, b = mine.get(pid), theirs.get(pid)
            if a is None:
                v.only_right.append(pid)
            elif b is None:
                v.only_left.append(pid)
            elif same_point(a, b):
                v.both.append(pid)
                v.newest_common = pid
                common_left.append(a)
                common_right.append(b)
            else:
                v.differing.append(pid)
        v.left_behind_points = len(v.only_right)
        v.right_behind_points = len(v.only_left)
        v.left_behind_bytes = _bytes_to_move(
            right, left, [theirs[i] for i in v.only_right], common_right
        )
        v.right_behind_bytes = _bytes_to_move(
            left, right, [mine[i] for i in v.only_left], common_left
        )
        report.volumes.append(v)
    return report
