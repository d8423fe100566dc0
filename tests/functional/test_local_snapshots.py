"""Local-cluster backups keep only the snapshot the next incremental needs.

A volume's newest point keeps its snapshot as the base of the next CBT delta; every other
snapshot a backup took (the previous base, the one of a cancelled backup, the one of a
deleted point) goes. `lamina local snapshots` says which point needs each snapshot, and
`--prune` deletes the rest, also those taken by hand, but never one a backup is reading.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lamina.backend.local import LocalCluster
from lamina.backend.service import JobState, PointInfo, Service, init_repository
from tests.support.api_server import slow_image, slow_repository
from tests.support.volumes import make_volume, scribble

MiB = 1024 * 1024
LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


def lamina(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*LAMINA, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def back_up(service: Service, name: str = "db") -> PointInfo:
    job = service.start_volume_backup("local", "prod", name)
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    point: PointInfo = job.result
    return point


def handles(root: Path) -> list[str]:
    return [s.handle for s in LocalCluster(root).list_snapshots()]


def test_each_backup_keeps_only_the_base_of_the_next(tmp_path: Path) -> None:
    repo, root = str(tmp_path / "repo"), tmp_path / "cluster"
    init_repository(repo, grid_size=256 * 1024)
    service = Service(repo, local_root=str(root))
    volume = make_volume(tmp_path / "db.img", 8 * MiB)
    service.add_local_volume("prod", "db", str(volume))
    other = make_volume(tmp_path / "web.img", 4 * MiB, seed=5)
    service.add_local_volume("prod", "web", str(other))

    web = back_up(service, "web")
    points = []
    for round_ in range(3):
        if round_:
            scribble(volume, 2, 4096, seed=round_)
        points.append(back_up(service))
        assert len(handles(root)) == 2
        assert set(handles(root)) == {web.snapshot_handle, points[-1].snapshot_handle}
    first, second, third = points
    assert second.parent == first.id and third.parent == second.id
    # The base was there: the incrementals read only the changed blocks, over CBT's delta.
    assert third.stats["bytes_read"] < volume.stat().st_size // 8
    assert any("GetMetadataDelta" in line for line in service.job(service.jobs()[-1].id).log)
    # Nothing half-deleted is left beside the snapshots.
    assert sorted(p.name for p in (root / "snapshots" / "prod").iterdir()) == sorted(
        s.name for s in LocalCluster(root).list_snapshots()
    )
    service.close()


def test_a_cancelled_backup_leaves_no_snapshot(tmp_path: Path) -> None:
    repo, root = slow_repository(tmp_path / "repo"), tmp_path / "cluster"
    service = Service(repo, local_root=str(root))
    service.add_local_volume("prod", "db", str(slow_image(tmp_path / "db.img", 24 * MiB, seed=3)))
    job = service.start_volume_backup("local", "prod", "db")
    deadline = time.monotonic() + 60
    while not (job.progress is not None and job.progress.done > 0):
        assert not job.done, job.error
        assert time.monotonic() < deadline, "the backup never started reading"
        time.sleep(0.02)
    assert len(handles(root)) == 1  # its snapshot, being read
    job.cancel()
    job.wait()
    assert job.state == JobState.CANCELLED
    assert handles(root) == [] and service.list_points() == []
    service.close()


def test_deleting_the_newest_point_drops_its_snapshot(tmp_path: Path) -> None:
    repo, root = str(tmp_path / "repo"), tmp_path / "cluster"
    init_repository(repo, grid_size=256 * 1024)
    service = Service(repo, local_root=str(root))
    volume = make_volume(tmp_path / "db.img", 8 * MiB)
    service.add_local_volume("prod", "db", str(volume))
    first = back_up(service)
    second = back_up(service)
    assert handles(root) == [second.snapshot_handle]
    job = service.start_delete(second.id)
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    assert handles(root) == []  # the first point's snapshot had gone already
    third = back_up(service)  # no base snapshot: a full read, still a child of the first
    assert third.parent == first.id and handles(root) == [third.snapshot_handle]
    service.close()


def test_local_snapshots_lists_who_needs_what_and_prunes_the_rest(tmp_path: Path) -> None:
    repo, root = str(tmp_path / "repo"), tmp_path / "cluster"
    init_repository(repo, grid_size=256 * 1024)
    service = Service(repo, local_root=str(root))
    volume = make_volume(tmp_path / "db.img", 8 * MiB)
    service.add_local_volume("prod", "db", str(volume))
    point = back_up(service)
    service.close()
    lamina("local", "snapshot", "--root", str(root), "--namespace", "prod", str(volume), "manual")
    held = lamina(
        "local", "snapshot", "--root", str(root), "--namespace", "prod", str(volume), "held"
    )

    listing = lamina("local", "snapshots", "--root", str(root), "--repo", repo).stdout
    rows = {line.split()[1]: line for line in listing.splitlines()[1:]}
    assert "NEEDED BY" in listing.splitlines()[0]
    (needed_name,) = [name for name, row in rows.items() if point.id in row]
    assert set(rows) == {needed_name, "manual", "held"}
    shown = json.loads(
        lamina("local", "snapshots", "--root", str(root), "--repo", repo, "--json").stdout
    )
    assert {s["name"]: s["needed_by"] for s in shown} == {
        needed_name: point.id,
        "manual": None,
        "held": None,
    }
    assert {s["name"]: s["made_by"] for s in shown}[needed_name] == "backup"

    cluster = LocalCluster(root)
    with cluster.hold(cluster.snapshot("prod", "held")):  # as a running backup holds it
        pruned = lamina("local", "snapshots", "--root", str(root), "--repo", repo, "--prune")
    assert "deleted snapshot prod/manual" in pruned.stdout
    assert "1 snapshot deleted, 2 kept" in pruned.stdout
    assert sorted(s.name for s in cluster.list_snapshots()) == sorted([needed_name, "held"])
    assert held.stdout.strip() in handles(root)

    again = json.loads(
        lamina(
            "local", "snapshots", "--root", str(root), "--repo", repo, "--prune", "--json"
        ).stdout
    )
    assert [s["name"] for s in again["removed"]] == ["held"]
    assert [s["handle"] for s in again["kept"]] == [point.snapshot_handle]
    assert not (root / "handles" / f"{held.stdout.strip()}.json").exists()
    # Without a repository nothing says what is needed, so nothing is pruned.
    refused = subprocess.run(
        [*LAMINA, "local", "snapshots", "--root", str(root), "--prune"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "LAMINA_REPO"},
    )
    assert refused.returncode == 2 and "give --repo" in refused.stderr
