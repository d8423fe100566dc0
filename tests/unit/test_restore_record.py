"""Restore records match only the file exactly as it was recorded (engine/restore_record.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lamina.backend.engine import restore_record

REPO = "0123456789abcdef0123456789abcdef"
POINT = "00112233aabbccdd"


def matching(path: Path, repo: str = REPO) -> restore_record.RestoreRecord | None:
    with open(path, "rb") as f:
        return restore_record.matching(repo, str(path), f.fileno())


def test_a_record_matches_until_the_file_changes_in_any_way(tmp_path: Path) -> None:
    image = tmp_path / "image.img"
    image.write_bytes(b"x" * 8192)
    restore_record.record(REPO, POINT, str(image), os.stat(image))
    found = matching(image)
    assert found is not None and found.point == POINT
    assert matching(image, repo="f" * 32) is None  # another repository's point

    before = os.stat(image)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))  # same times, ctime moves
    assert os.stat(image).st_mtime_ns == before.st_mtime_ns
    assert matching(image) is None

    restore_record.record(REPO, POINT, str(image), os.stat(image))
    assert matching(image) is not None
    restore_record.forget(str(image))
    assert matching(image) is None


def test_no_record_for_a_ctime_the_clock_does_not_pass_or_a_point_that_is_no_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "image.img"
    image.write_bytes(b"x" * 8192)
    st = os.stat(image)
    monkeypatch.setattr(restore_record, "TICK_WAIT", 0.01)
    future = os.stat_result(tuple(st)[:10], {"st_ctime_ns": st.st_ctime_ns + 10**12})
    restore_record.record(REPO, POINT, str(image), future)  # a clock an hour ahead of ours
    assert matching(image) is None
    restore_record.record(REPO, "../config", str(image), os.stat(image))
    assert matching(image) is None  # a point id names an object key: hex only
