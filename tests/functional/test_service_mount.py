"""Mounts started through the service layer (what the TUI's `m` and the API call)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from lamina.backend.errors import LaminaError
from lamina.backend.service import JobState, Service, init_repository
from lamina.tui.client import mount_point, mounted_points, unmount_point
from tests.support.volumes import make_volume

MiB = 1024 * 1024


def test_service_mounts_a_point_of_an_encrypted_repository(tmp_path: Path) -> None:
    init_repository(str(tmp_path / "repo"), password=b"pw")
    service = Service(str(tmp_path / "repo"), password=b"pw")
    vol = make_volume(tmp_path / "vol.img", 8 * MiB, seed=4)
    job = service.start_backup(str(vol), "v")
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    info = service.mount(job.result.id, str(mnt))
    try:
        assert info.point == job.result.id and info.pid > 0
        assert [m.mountpoint for m in service.list_mounts()] == [str(mnt)]
        image = (mnt / "disk.img").read_bytes()
        assert hashlib.sha256(image).digest() == hashlib.sha256(vol.read_bytes()).digest()
        assert not list(tmp_path.glob("lamina-mount-*"))  # no password file left behind
    finally:
        service.unmount(str(mnt))
    assert not os.path.ismount(mnt)
    assert service.list_mounts() == []


def test_the_tui_client_offers_mounts_and_reports_errors(tmp_path: Path) -> None:
    init_repository(str(tmp_path / "repo"))
    service = Service(str(tmp_path / "repo"))
    job = service.start_backup(str(make_volume(tmp_path / "vol.img", 4 * MiB)), "v")
    job.wait()
    client = service
    assert client.capabilities().mount
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "busy").write_text("x")
    with pytest.raises(LaminaError, match="not empty") as refused:
        mount_point(client, job.result.id, str(mnt))
    assert "\n" not in str(refused.value)
    (mnt / "busy").unlink()
    where = mount_point(client, job.result.id, str(mnt))
    try:
        assert mounted_points(client) == {job.result.id: where}
        assert sorted(os.listdir(mnt)) == ["disk.img", "files.unavailable", "manifest.json"]
    finally:
        unmount_point(client, job.result.id)
    assert mounted_points(client) == {}
    # a folder that does not exist yet (what the TUI suggests) is made, then removed
    fresh = tmp_path / "new-mountpoint"
    mount_point(client, job.result.id, str(fresh))
    try:
        assert (fresh / "disk.img").exists()
    finally:
        unmount_point(client, job.result.id)
    assert not fresh.exists()
