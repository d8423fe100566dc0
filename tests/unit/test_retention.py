"""Which points a retention policy keeps: restic's buckets, on manifests alone."""

from __future__ import annotations

from datetime import timedelta

import pytest

from lamina.backend.engine.lifecycle import Policy, plan_forget
from lamina.backend.engine.repository import Point
from lamina.backend.errors import LaminaError


def test_retention_buckets_follow_restic() -> None:
    def point(i: int, created: str) -> Point:
        volume = {"cluster": "local", "namespace": "default", "name": "v"}
        return Point({"id": f"{i:016x}", "created": created, "volume": volume, "capacity": 1})

    points = [
        point(1, "2026-11-01T10:00:00.000000Z"),
        point(2, "2026-11-01T22:00:00.000000Z"),  # newest of Nov 1
        point(3, "2026-11-02T09:00:00.000000Z"),
        point(4, "2026-11-02T09:30:00.000000Z"),  # newest of Nov 2, hour 09
        point(5, "2026-11-20T08:00:00.000000Z"),
    ]
    daily = {d.point.id: d.reasons for d in plan_forget(points, Policy(daily=3), set()) if d.keep}
    assert sorted(daily) == [points[1].id, points[3].id, points[4].id]
    assert all(reasons[0].startswith("daily") for reasons in daily.values())
    keep = {
        d.point.id for d in plan_forget(points, Policy(within=timedelta(days=18)), set()) if d.keep
    }
    assert keep == {points[2].id, points[3].id, points[4].id}
    keep = {d.point.id for d in plan_forget(points, Policy(monthly=1, last=1), set()) if d.keep}
    assert keep == {points[4].id}
    with pytest.raises(LaminaError):
        plan_forget(points, Policy(), set())
