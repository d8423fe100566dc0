"""How the terminal UI writes numbers and times, and how it lays out a chain as a tree."""

from __future__ import annotations

from lamina.backend.service import PointInfo, VolumeRef
from lamina.tui import formatting as fmt
from lamina.tui.screens.chain import chain_rows

NOW = fmt.parse_time("2026-03-14T12:00:00Z")


def test_sizes_rates_and_durations() -> None:
    assert fmt.size(0) == "0 B"
    assert fmt.size(1023) == "1023 B"
    assert fmt.size(1536) == "1.5 KiB"
    assert fmt.size(3 * 1024**3) == "3.0 GiB"
    assert fmt.rate(85 * 1024**2) == "85.0 MiB/s"
    assert fmt.duration(None) == "-"
    assert fmt.duration(65.4) == "1:05"
    assert fmt.duration(3725) == "1:02:05"
    assert fmt.percent(None) == "-"
    assert fmt.percent(0.00001) == "<0.1%"
    assert fmt.percent(0.1234) == "12.3%"


def test_ages_against_a_given_clock() -> None:
    assert fmt.age(None, NOW) == "never"
    assert fmt.age("2026-03-14T11:59:30Z", NOW) == "just now"
    assert fmt.age("2026-03-14T11:55:00Z", NOW) == "5m ago"
    assert fmt.age("2026-03-14T09:00:00.5Z", NOW) == "2h ago"
    assert fmt.age("2026-03-11T12:00:00+00:00", NOW) == "3d ago"
    assert fmt.age("2026-03-15T12:00:00Z", NOW) == "in the future"
    assert fmt.age("not a time", NOW) == "not a time"
    assert fmt.short_time("2026-03-14T09:05:59.9Z") == "2026-03-14 09:05"


def test_bars_fill_by_eighths() -> None:
    assert fmt.bar(None, 4) == "····"
    assert fmt.bar(0.0, 4) == "    "
    assert fmt.bar(1.0, 4) == "████"
    assert fmt.bar(0.5, 4) == "██  "
    assert fmt.bar(0.625, 4) == "██▌ "  # two and a half cells
    assert fmt.bar(0.5625, 4) == "██▎ "  # two and a quarter
    assert fmt.bar(7.0, 2) == "██"


def _point(id: str, parent: str | None, created: str) -> PointInfo:
    return PointInfo(id, parent, "incremental" if parent else "full", VolumeRef("local", "ns", "v"),
                     created, 100, None, "", {}, [], {})  # fmt: skip


def test_chain_rows_draw_each_point_under_its_own_parent() -> None:
    points = [
        _point("a", None, "2026-03-01T00:00:00Z"),
        _point("b", "a", "2026-03-02T00:00:00Z"),
        _point("c", "b", "2026-03-03T00:00:00Z"),
        _point("d", None, "2026-03-04T00:00:00Z"),  # a new full point starts a new chain
        _point("e", "d", "2026-03-05T00:00:00Z"),
        _point("f", "gone", "2026-03-06T00:00:00Z"),  # its parent was deleted elsewhere
    ]
    rows = [(p.id, glyph) for p, glyph in chain_rows(points)]
    assert rows == [
        ("f", "◌"),
        ("d", "●"),
        ("e", "└─○"),
        ("a", "●"),
        ("b", "└─○"),  # each the parent of the next: a staircase, not siblings
        ("c", "  └─○"),
    ]
    # Two incrementals built on the same parent are siblings.
    forked = [*points[:3], _point("b2", "a", "2026-03-02T12:00:00Z")]
    assert [(p.id, glyph) for p, glyph in chain_rows(forked)] == [
        ("a", "●"),
        ("b", "├─○"),
        ("c", "│ └─○"),
        ("b2", "└─○"),
    ]
