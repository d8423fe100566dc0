"""ext4 images whose journal needs recovery: replayed in memory, checked against e2fsck and
the kernel (a snapshot of a mounted filesystem is exactly such an image)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from lamina.backend.fsread import ImageFile, open_filesystem
from tests.support.fsread_images import (
    SBIN_PATH,
    compare,
    debugfs,
    expected_from,
    have,
    is_root,
    loop_mounted,
    make_ext_image,
    snapshot,
)

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not have("mkfs.ext4") or not have("e2fsck"), reason="needs e2fsprogs"),
]

BLOCK = 4096
JOURNAL_MAGIC = struct.pack(">I", 0xC03B3998)


def recovered_copy(image: Path, target: Path) -> Path:
    """A copy with its journal replayed by e2fsck, and nothing else changed."""
    shutil.copyfile(image, target)
    done = subprocess.run(
        ["e2fsck", "-E", "journal_only", "-y", os.fspath(target)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PATH=SBIN_PATH),
    )
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return target


def first_block(image: Path, path: str) -> int:
    out = debugfs(image, f'blocks "{path}"')
    return int(next(line for line in out.splitlines() if line[:1].isdigit()).split()[0])


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """Transactions written with debugfs: a committed write, a write revoked later, a block
    that starts with the journal magic (escaped in the log), and an uncommitted write."""
    base = tmp_path_factory.mktemp("journal")
    tree = base / "tree"
    tree.mkdir()
    originals = {}
    for name in ("written", "revoked", "escaped", "uncommitted", "untouched"):
        originals[name] = os.urandom(BLOCK)
        (tree / name).write_bytes(originals[name])
    image = make_ext_image(base / "crafted.img", tree, size_mib=32, block_size=BLOCK)
    blocks = {name: first_block(image, f"/{name}") for name in originals}
    (base / "two").write_bytes(b"W" * BLOCK + b"R" * BLOCK)
    (base / "magic").write_bytes(JOURNAL_MAGIC + b"M" * (BLOCK - 4))
    (base / "other").write_bytes(b"U" * BLOCK)
    debugfs(
        image,
        "jo",
        f"jw -b {blocks['written']},{blocks['revoked']} {base / 'two'}",
        f"jw -r {blocks['revoked']} {base / 'other'}",
        f"jw -b {blocks['escaped']} {base / 'magic'}",
        f"jw -c -b {blocks['uncommitted']} {base / 'other'}",
        "jc",
        write=True,
    )
    expected = {
        "written": b"W" * BLOCK,
        "revoked": originals["revoked"],
        "escaped": JOURNAL_MAGIC + b"M" * (BLOCK - 4),
        "uncommitted": originals["uncommitted"],
        "untouched": originals["untouched"],
    }
    return image, expected


def test_crafted_transactions_replay(crafted: tuple[Path, dict[str, bytes]]) -> None:
    image, expected = crafted
    fs = open_filesystem(ImageFile(image))
    assert fs.needs_recovery
    assert fs.journal_transactions == 3  # type: ignore[attr-defined]
    for name, data in expected.items():
        assert fs.read(fs.lookup(f"/{name}"), 0, BLOCK) == data, name


def test_replay_can_be_turned_off(crafted: tuple[Path, dict[str, bytes]]) -> None:
    image, expected = crafted
    fs = open_filesystem(ImageFile(image), replay_journal=False)
    assert fs.read(fs.lookup("/written"), 0, BLOCK) != expected["written"]


def test_crafted_replay_matches_e2fsck(
    crafted: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    image, _ = crafted
    reference = open_filesystem(ImageFile(recovered_copy(image, tmp_path / "recovered.img")))
    assert not reference.needs_recovery
    assert compare(open_filesystem(ImageFile(image)), expected_from(reference)) == []


@pytest.mark.skipif(not is_root(), reason="loop-mounting needs root")
def test_snapshot_of_a_mounted_filesystem(tmp_path: Path) -> None:
    """Copy the image of a mounted ext4 after fsync: the new files live only in the journal."""
    live = make_ext_image(tmp_path / "live.img", None, size_mib=32, block_size=BLOCK)
    copy = tmp_path / "copy.img"
    with loop_mounted(live, "", "ext4") as mnt:
        (mnt / "newdir").mkdir()
        for i in range(30):
            with open(mnt / "newdir" / f"file-{i}", "wb") as f:
                f.write(os.urandom(5000 + i))
                os.fsync(f.fileno())
        for directory in (mnt / "newdir", mnt):
            fd = os.open(directory, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        shutil.copyfile(live, copy)  # what a block-level snapshot of the volume holds
    on_disk_only = open_filesystem(ImageFile(copy), replay_journal=False)
    assert "newdir" not in {e.name for e in on_disk_only.listdir("/")}
    fs = open_filesystem(ImageFile(copy))
    assert fs.journal_transactions > 0  # type: ignore[attr-defined]
    # The kernel replays the journal of a copy when mounting it: that is the reference
    # (a writable mount: recovery writes to the device; noatime keeps the snapshot exact).
    kernel_copy = tmp_path / "kernel.img"
    shutil.copyfile(copy, kernel_copy)
    with loop_mounted(kernel_copy, "noatime", "ext4") as mnt:
        expected = snapshot(mnt)
    assert len(expected) == 33  # root, lost+found, newdir and its 30 files
    assert compare(fs, expected) == []
    reference = open_filesystem(ImageFile(recovered_copy(copy, tmp_path / "fsck.img")))
    assert compare(fs, expected_from(reference)) == []
