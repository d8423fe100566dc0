"""Mounts started through the service layer (what the TUI's `m` and the API call)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from lamina.backend.errors import LaminaError
from lamina.backend.service import (
    JobState,
    Service,
    init_repository,
    mount_command,
    start_mount_process,
)
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


def test_the_mount_process_is_the_fs_entry_point_not_the_cli(tmp_path: Path) -> None:
    """The service starts `python -m lamina.fs.mount`, the FUSE front end's own command; the
    password reaches it through a pipe, never its argv or a file."""
    init_repository(str(tmp_path / "repo"), password=b"secret-pw")
    service = Service(str(tmp_path / "repo"), password=b"secret-pw")
    job = service.start_backup(str(make_volume(tmp_path / "vol.img", 4 * MiB, seed=2)), "v")
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    mnt = tmp_path / "mnt"
    info = service.mount(None, str(mnt))
    try:
        argv = Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0")
        assert argv[1:3] == [b"-m", b"lamina.fs.mount"]
        assert b"lamina.backend.cli.main" not in argv
        assert not any(b"secret-pw" in arg for arg in argv)
        assert os.listdir(mnt) == ["local"]
    finally:
        service.unmount(str(mnt))
    assert not mnt.exists()  # made for the mount, removed with it


def test_the_mount_process_reports_its_error_in_one_line(tmp_path: Path) -> None:
    """Started directly, `python -m lamina.fs.mount` refuses a busy folder in one line and
    exits non-zero; through the supervision, the same line is the caller's error."""
    init_repository(str(tmp_path / "repo"))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "kept").write_text("x")
    command = mount_command(str(tmp_path / "repo"), str(busy), cache_bytes=16 * MiB)
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"lamina: error: mount point {busy} is not empty"]
    with pytest.raises(LaminaError, match=r"is not empty$") as refused:
        start_mount_process(str(tmp_path / "repo"), str(busy), cache_bytes=16 * MiB, timeout=60)
    assert "\n" not in str(refused.value)
    assert [p.name for p in busy.iterdir()] == ["kept"]  # nothing written into the folder
