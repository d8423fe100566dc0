"""A backup into a repository given as a relative folder is recorded under its absolute path,
so the volumes screen's last good backup finds it from anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lamina.backend.service import Service
from tests.support.volumes import make_volume

LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


def test_a_backup_into_a_relative_folder_is_found_by_its_absolute_path(tmp_path: Path) -> None:
    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    env = {**os.environ, "LAMINA_CATALOG": catalog}
    make_volume(tmp_path / "vol.img", 4 * 1024 * 1024, seed=5)
    for argv in (
        ["repo", "init", "repo"],
        ["backup", "--repo", "repo", "--volume", "v", "vol.img"],
    ):
        done = subprocess.run(
            [*LAMINA, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
    service = Service(str(tmp_path / "repo"), catalog=catalog)
    try:
        (found,) = service.last_good_backups(["local/default/v"])
    finally:
        service.close()
    assert found.ended_at is not None
