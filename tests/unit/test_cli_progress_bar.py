"""The CLI's progress line."""

from __future__ import annotations

from lamina.backend.cli.common import _bar
from lamina.backend.progress import Progress


def test_the_cli_bar_counts_points_without_a_byte_rate() -> None:
    line = _bar(Progress("checking maps", done=3, total=4, rate=7.0, unit="points"))
    assert "3/4 points" in line and "B/s" not in line and "75.0%" in line
