"""A small backup cuts smaller packs (its uploads overlap its encoding); a large one keeps
the repository's pack size. Every piece restores either way."""

from __future__ import annotations

import random
from pathlib import Path

from lamina.backend.engine.pipelines import BackupRequest, VolumeRef, backup, restore
from lamina.backend.engine.repository import Repository
from lamina.backend.engine.storage.memory import MemoryStorage

KiB = 1024
MiB = 1024 * KiB
GRID = 256 * KiB


def _packs(storage: MemoryStorage) -> list[int]:
    return sorted(info.size for info in storage.list("packs/"))


def _backup_and_restore(
    tmp_path: Path, size: int, pack_size: int
) -> tuple[dict[str, int], list[int]]:
    storage = MemoryStorage()
    repo = Repository.init(storage, grid_size=GRID, pack_size=pack_size)
    source = tmp_path / "vol.img"
    data = random.Random(size).randbytes(size)  # random: stored bytes = data bytes
    source.write_bytes(data)
    point = backup(repo, BackupRequest(str(source), VolumeRef.parse("vol"), parent="none"))
    target = tmp_path / "restored.img"
    restore(repo, point, str(target))
    assert target.read_bytes() == data
    return point.manifest["stats"], _packs(storage)


def test_a_small_backup_cuts_packs_at_a_quarter_of_its_data(tmp_path: Path) -> None:
    stats, packs = _backup_and_restore(tmp_path, 8 * MiB, 16 * MiB)
    # 8 MiB in packs closed at 2 MiB: four of them, none near the repository's 16 MiB.
    assert stats["packs_written"] == len(packs) == 4
    assert all(2 * MiB <= size < 3 * MiB for size in packs)


def test_a_large_backup_keeps_the_repositorys_pack_size(tmp_path: Path) -> None:
    stats, packs = _backup_and_restore(tmp_path, 8 * MiB, MiB)
    # A quarter of 8 MiB is more than the repository's 1 MiB: packs of about 1 MiB each.
    assert stats["packs_written"] == len(packs) == 8
    assert all(MiB <= size < MiB + 64 * KiB for size in packs)
