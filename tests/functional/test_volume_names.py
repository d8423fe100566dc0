"""Every part of a volume name (and a snapshot name) is one safe path component.

The parts become folders of the FUSE view and of the local cluster: `..`, empty parts, `/`,
NUL and control characters are refused with one line, through the CLI and the service.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lamina.backend.errors import UsageError
from lamina.backend.service import Service, VolumeRef, init_repository
from tests.support.volumes import make_volume

MiB = 1024 * 1024
LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]

BAD_VOLUMES = [
    "../../evil",
    "..",
    ".",
    "ns/..",
    "./ns/db",
    "a//b",
    "/db",
    "db/",
    "",
    "ns/db\x1b[2J",
    "ns/\x07bell",
    "ns/a\x9bb",  # a C1 control (CSI)
    "c/n/v/extra",
]


@pytest.mark.parametrize("volume", BAD_VOLUMES)
def test_the_cli_refuses_a_bad_volume_name_in_one_line(tmp_path: Path, volume: str) -> None:
    repo = str(tmp_path / "repo")
    init_repository(repo)
    vol = make_volume(tmp_path / "vol.img", 4 * MiB)
    result = subprocess.run(
        [*LAMINA, "backup", "--repo", repo, "--volume", volume, str(vol), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lamina: error: not a "), result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "\x9b" not in result.stderr
    assert Service(repo).list_points() == []


def test_the_cli_still_takes_good_names(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    init_repository(repo)
    vol = make_volume(tmp_path / "vol.img", 4 * MiB)
    for volume in ("db", "ns/db", "prod/ns/db-0.data", "k8s.example/ns/pvc_1"):
        result = subprocess.run(
            [*LAMINA, "backup", "--repo", repo, "--volume", volume, str(vol), "-q"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
    assert sorted(str(p.volume) for p in Service(repo).list_points()) == [
        "k8s.example/ns/pvc_1",
        "local/default/db",
        "local/ns/db",
        "prod/ns/db-0.data",
    ]


@pytest.mark.parametrize(
    ("cluster", "namespace", "name"),
    [
        ("..", "..", "evil"),
        ("local", "", "db"),
        ("local", "ns", "a/b"),
        ("local", "ns", "nul\x00"),
        ("local", "ns\x1b]0;title\x07", "db"),
        ("local", "ns", "x" * 256),
        ("local", " ns", "db"),
    ],
)
def test_the_service_refuses_bad_parts_before_any_work(
    tmp_path: Path, cluster: str, namespace: str, name: str
) -> None:
    repo = str(tmp_path / "repo")
    init_repository(repo)
    vol = make_volume(tmp_path / "vol.img", 4 * MiB)
    service = Service(repo, local_root=str(tmp_path / "cluster"))
    with pytest.raises(UsageError) as refused:
        service.start_backup(str(vol), VolumeRef(cluster, namespace, name))
    message = str(refused.value)
    assert "\n" not in message and "\x1b" not in message and "\x00" not in message
    with pytest.raises(UsageError):
        service.start_volume_backup(cluster if cluster != "local" else "local", namespace, name)
    assert service.jobs() == []
    assert service.list_points() == []


def test_local_snapshot_names_are_checked_the_same_way(tmp_path: Path) -> None:
    vol = make_volume(tmp_path / "vol.img", 4 * MiB)
    root = tmp_path / "cluster"
    root.mkdir()
    for name in ("..", "a/b", "snap\x1b[2J", ""):
        result = subprocess.run(
            [*LAMINA, "local", "snapshot", "--root", str(root), str(vol), name],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "not a" in lines[0] and "\x1b" not in lines[0]
    assert not (root / "snapshots").exists() or not any((root / "snapshots").rglob("image"))
