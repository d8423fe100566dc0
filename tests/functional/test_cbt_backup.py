"""End to end: local snapshots, changed blocks over gRPC, backups that restore byte-identical."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from lamina.backend.cbt import cbt_range_sources
from lamina.backend.cbt.server import start_server
from lamina.backend.local import LocalCluster
from lamina.backend.service import JobState, PointInfo, Service, init_repository
from tests.support.volumes import make_volume, sha256_file

MiB = 1024 * 1024
BLOCK = 4096
CAPACITY = 16 * MiB
LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


def change_blocks(volume: Path, count: int, seed: int) -> list[int]:
    """Rewrite ``count`` scattered 4 KiB blocks with new random data; return their indexes."""
    rng = random.Random(seed)
    indexes = sorted(rng.sample(range(CAPACITY // BLOCK), count))
    with open(volume, "r+b") as f:
        for index in indexes:
            f.seek(index * BLOCK)
            f.write(rng.randbytes(BLOCK))
    return indexes


def wait_point(service: Service, job: object) -> PointInfo:
    assert job.wait(120)  # type: ignore[attr-defined]
    assert job.state == JobState.SUCCEEDED, job.error  # type: ignore[attr-defined]
    point: PointInfo = job.result  # type: ignore[attr-defined]
    return point


def restore(service: Service, point: str, target: Path) -> None:
    job = service.start_restore(point, str(target))
    assert job.wait(120)
    assert job.state == JobState.SUCCEEDED, job.error


def test_delta_over_grpc_drives_an_incremental_backup(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "vol.img", CAPACITY, seed=21, extents=10)
    cluster = LocalCluster(tmp_path / "cluster")
    first = cluster.create_snapshot(str(volume), "prod", "db-snap-1")
    changed = change_blocks(volume, 12, seed=22)
    second = cluster.create_snapshot(str(volume), "prod", "db-snap-2")

    init_repository(str(tmp_path / "repo"), grid_size=256 * 1024)
    service = Service(str(tmp_path / "repo"))
    with start_server(cluster.root, token="backup-token", block_type="fixed") as server:
        # The delta is exactly the changed blocks.
        changed_source, allocated_source = cbt_range_sources(
            server.address, "prod", "db-snap-2", first.handle, "backup-token", None, CAPACITY
        )
        assert changed_source is not None
        delta = list(changed_source())
        assert delta == [(i * BLOCK, BLOCK) for i in changed]

        # Full backup of the first snapshot from its allocated blocks.
        _, allocated_first = cbt_range_sources(
            server.address, "prod", "db-snap-1", None, "backup-token", None, CAPACITY
        )
        full = wait_point(
            service,
            service.start_backup(
                str(first.image),
                "prod/db",
                allocated_ranges=allocated_first,
                allocated_ranges_origin="cbt allocated",
                snapshot_handle=first.handle,
            ),
        )
        assert full.kind == "full" and full.snapshot_handle == first.handle

        # Incremental backup of the second snapshot reading only the delta.
        incremental = wait_point(
            service,
            service.start_backup(
                str(second.image),
                "prod/db",
                changed_ranges=changed_source,
                changed_ranges_origin="cbt delta",
                allocated_ranges=allocated_source,
                snapshot_handle=second.handle,
            ),
        )
    assert incremental.kind == "incremental" and incremental.parent == full.id
    assert incremental.stats["bytes_read"] == len(changed) * BLOCK
    assert incremental.manifest["source"]["mode"] == "changed-ranges"

    restore(service, full.id, tmp_path / "restored-1.img")
    restore(service, incremental.id, tmp_path / "restored-2.img")
    assert sha256_file(tmp_path / "restored-1.img") == sha256_file(first.image)
    assert sha256_file(tmp_path / "restored-2.img") == sha256_file(second.image)
    assert sha256_file(second.image) != sha256_file(first.image)
    service.close()


def lamina(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAMINA, *args], capture_output=True, text=True, timeout=180)


def test_backup_command_with_cbt_uses_the_parent_snapshot_handle(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "vol.img", CAPACITY, seed=31, extents=8)
    cluster = LocalCluster(tmp_path / "cluster")
    first = cluster.create_snapshot(str(volume), "prod", "s1")
    changed = change_blocks(volume, 7, seed=32)
    second = cluster.create_snapshot(str(volume), "prod", "s2")
    repo = str(tmp_path / "repo")
    assert lamina("repo", "init", repo, "--grid-size", "256KiB").returncode == 0
    token = tmp_path / "token"
    token.write_text("cli-token\n")

    with start_server(cluster.root, token="cli-token", block_type="variable") as server:
        cbt = ["--cbt", server.address, "--namespace", "prod", "--token-file", str(token)]
        result = lamina(
            "backup", "--repo", repo, "--volume", "prod/db", str(first.image), *cbt,
            "--snapshot", "s1", "--snapshot-handle", first.handle, "--json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        full = json.loads(result.stdout)
        # No --base-snapshot-id: the delta base is the handle the parent point recorded.
        result = lamina(
            "backup", "--repo", repo, "--volume", "prod/db", str(second.image), *cbt,
            "--snapshot", "s2", "--snapshot-handle", second.handle, "--json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        incremental = json.loads(result.stdout)
        # A base that is not the parent's snapshot is refused before anything is read.
        wrong = lamina(
            "backup", "--repo", repo, "--volume", "prod/db", str(second.image), *cbt,
            "--snapshot", "s2", "--base-snapshot-id", first.handle,
        )  # fmt: skip
        stray = lamina(
            "backup", "--repo", repo, "--volume", "prod/db", str(second.image), "--snapshot", "s2"
        )
    assert full["kind"] == "full" and full["snapshot_handle"] == first.handle
    assert incremental["parent"] == full["id"] and incremental["kind"] == "incremental"
    assert incremental["stats"]["bytes_read"] == len(changed) * BLOCK
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == (
        f"lamina: error: --base-snapshot-id {first.handle} is not the snapshot of parent point "
        f"{incremental['id']} ({second.handle})"
    )
    assert stray.returncode == 2 and "only apply with --cbt" in stray.stderr
    restored = tmp_path / "restored.img"
    result = lamina("restore", "--repo", repo, incremental["id"], str(restored))
    assert result.returncode == 0, result.stderr
    assert sha256_file(restored) == sha256_file(second.image)
    assert os.path.getsize(restored) == CAPACITY
