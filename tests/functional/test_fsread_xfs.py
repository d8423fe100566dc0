"""The xfs reader against real images: filled through a loop mount (root) or a protofile."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.backend.fsread import FileSystem, ImageFile, open_filesystem
from tests.support.fsread_images import (
    Expected,
    MiB,
    TreeSpec,
    build_tree,
    compare,
    have,
    is_root,
    loop_mounted,
    make_xfs_image,
    mkfs_xfs,
    snapshot,
    write_interleaved,
    write_preallocated,
    write_with_holes,
    xfs_bmap,
    xfs_bmbt_levels,
    xfs_db,
    xfs_inode_format,
    xfs_protofile,
)

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not have("mkfs.xfs") or not have("xfs_db"), reason="needs xfsprogs"),
]

DIRS = {"d5": 5, "d50": 50, "d500": 500, "d5000": 5000}
LEAF_OFFSET = 32 << 30  # directory leaf blocks start here, free-space index blocks at 64 GiB

MOUNTED_VARIANTS: dict[str, tuple[str, ...]] = {
    "v5": (),
    "v5-classic-times-nrext64": ("-m", "bigtime=0", "-i", "nrext64=1"),
    "v5-16k-dir-blocks": ("-n", "size=16k"),
    "v5-1k-blocks": ("-b", "size=1024"),
}


def open_image(image: Path) -> FileSystem:
    return open_filesystem(ImageFile(image))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = TreeSpec(big_dirs=DIRS, fragments=0)  # fragmented files are written in the mount
    return build_tree(tmp_path_factory.mktemp("xfs-src") / "tree", spec)


def fill_inside(mnt: Path) -> None:
    write_interleaved(mnt / "interleaved.bin", mnt / "filler.bin", 300, 4096)
    write_with_holes(mnt / "holes.bin", 1500, 4096)
    write_preallocated(mnt / "prealloc.bin")


@pytest.fixture(scope="module", params=sorted(MOUNTED_VARIANTS))
def mounted_variant(
    request: pytest.FixtureRequest, source: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, dict[str, Expected]]]:
    if not is_root():
        pytest.skip("filling xfs through a loop mount needs root")
    name: str = request.param
    image = tmp_path_factory.mktemp("xfs-img") / f"{name}.img"
    expected = make_xfs_image(
        image,
        source,
        "-L",
        name[:12],
        *MOUNTED_VARIANTS[name],
        # noatime: reading files for the snapshot must not change what it recorded.
        mount_options="noatime,allocsize=4k",
        inside=fill_inside,
    )
    yield name, image, expected
    image.unlink()


def test_matches_the_kernel(mounted_variant: tuple[str, Path, dict[str, Expected]]) -> None:
    name, image, expected = mounted_variant
    fs = open_image(image)
    assert (fs.kind, fs.label) == ("xfs", name[:12])
    assert compare(fs, expected) == []


def test_variant_covers_every_format(
    mounted_variant: tuple[str, Path, dict[str, Expected]],
) -> None:
    """The image really holds each directory and data fork format the reader must handle."""
    name, image, expected = mounted_variant
    fs = open_image(image)
    block = fs.block_size
    dir_block = int(xfs_db(image, "sb 0", "print dirblklog").split("=")[1])
    dir_block_size = block << dir_block
    leaf, free = LEAF_OFFSET // block, 2 * LEAF_OFFSET // block

    def inode(path: str) -> int:
        return expected[path].inode

    assert xfs_inode_format(image, inode("/d5")) == "local"  # shortform
    single = xfs_bmap(image, inode("/d50"))  # block form: one directory block
    assert expected["/d50"].size == dir_block_size and sum(n for _, n in single) == 1 << dir_block
    leaf_form = xfs_bmap(image, inode("/d500"))
    assert [o for o, _ in leaf_form if o >= leaf] == [leaf]  # one leaf block, no free index
    node_form = xfs_bmap(image, inode("/d5000"))
    assert sum(n for o, n in node_form if leaf <= o < free) > 1 << dir_block  # several leaves
    assert any(o >= free for o, _ in node_form)  # and a free index: node form
    for path in ("/interleaved.bin", "/holes.bin"):
        assert xfs_inode_format(image, inode(path)) == "btree"
    assert len(xfs_bmap(image, inode("/interleaved.bin"))) == 300
    if name == "v5-1k-blocks":
        assert xfs_bmbt_levels(image, inode("/holes.bin")) == 2
    assert "flag 1" in xfs_db(image, f"inode {inode('/prealloc.bin')}", "bmap")  # unwritten
    assert xfs_inode_format(image, inode("/links/longest")) == "extents"  # remote symlink
    assert xfs_inode_format(image, inode("/links/long")) == "local"


def test_fragmented_file_is_read_in_few_requests(
    mounted_variant: tuple[str, Path, dict[str, Expected]],
) -> None:
    _, image, _ = mounted_variant
    reads: list[tuple[int, int]] = []
    raw = ImageFile(image)

    class Counting:
        size = raw.size

        def pread(self, length: int, offset: int) -> bytes:
            reads.append((offset, length))
            return raw.pread(length, offset)

    fs = open_filesystem(Counting())
    entry = fs.lookup("/interleaved.bin")
    before = len(reads)
    fs.read(entry, 0, entry.size)
    # 300 extents, each a block apart on disk: read through the small gaps.
    assert len(reads) - before <= 10, reads[before:]


def test_cleanly_unmounted_log(mounted_variant: tuple[str, Path, dict[str, Expected]]) -> None:
    _, image, _ = mounted_variant
    fs = open_image(image)
    assert (fs.needs_recovery, fs.journal_note) == (False, "")


def test_snapshot_of_a_mounted_filesystem_is_flagged(tmp_path: Path) -> None:
    """The log of a live xfs is not replayed, but the reader says so."""
    if not is_root():
        pytest.skip("mounting needs root")
    live = mkfs_xfs(tmp_path / "live.img")
    copy = tmp_path / "copy.img"
    with loop_mounted(live) as mnt:
        with open(mnt / "new-file", "wb") as f:
            f.write(b"fresh data")
            os.fsync(f.fileno())
        shutil.copyfile(live, copy)
    assert open_image(live).needs_recovery is False
    fs = open_image(copy)
    assert fs.needs_recovery is True
    assert "not replayed" in fs.journal_note
    fs.listdir("/")  # still readable: the state of the last checkpoint


def test_root_listing_is_fast(mounted_variant: tuple[str, Path, dict[str, Expected]]) -> None:
    _, image, _ = mounted_variant
    started = time.perf_counter()
    fs = open_image(image)
    assert len(fs.listdir("/")) > 10
    assert time.perf_counter() - started < 0.2


# ------------------------------------------------------------------ protofile images (no root)

PROTO_VARIANTS: dict[str, tuple[str, ...]] = {
    "v4": ("-m", "crc=0"),
    "v4-no-ftype": ("-m", "crc=0", "-n", "ftype=0"),
    "v5": (),
}


@pytest.fixture(scope="module")
def proto_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A protofile cannot express blanks in names, sockets, hard links, the sticky bit or
    # times; and this mkfs.xfs writes remote symlinks without their v5 header, so keep
    # targets short enough to live in the inode.
    spec = TreeSpec(
        big_dirs=DIRS,
        fragments=300,
        huge_size=0,
        long_symlink=300,
        hostile=False,
        socket=False,
        devices=False,
        hardlinks=False,
        sticky=False,
    )
    return build_tree(tmp_path_factory.mktemp("xfs-proto") / "tree", spec)


@pytest.mark.parametrize("name", sorted(PROTO_VARIANTS))
def test_protofile_image_matches_the_source(name: str, proto_source: Path, tmp_path: Path) -> None:
    proto = tmp_path / "proto"
    xfs_protofile(proto_source, proto)
    image = mkfs_xfs(tmp_path / "xfs.img", *PROTO_VARIANTS[name], protofile=proto)
    fs = open_image(image)
    assert (fs.kind, fs.needs_recovery) == ("xfs", False)
    expected = snapshot(proto_source)
    del expected["/"]
    fields = ("kind", "mode", "uid", "gid", "size")
    assert compare(fs, expected, fields, dir_sizes=False) == []
    assert xfs_inode_format(image, fs.lookup("/d5000").inode) == "btree"
    assert fs.read(fs.lookup("/sparse.bin"), 20 * MiB - 10, 100) == b"tail-bytes"
