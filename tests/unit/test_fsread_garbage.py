"""Garbage, truncated and damaged images: a clear FsReadError every time, never a crash or hang."""

from __future__ import annotations

import os
import random
import shutil
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.backend.fsread import (
    CorruptFilesystem,
    FileSystem,
    FsReadError,
    ImageFile,
    UnsupportedFilesystem,
    open_filesystem,
)
from lamina.backend.fsread.ext4 import Ext4FileSystem
from lamina.backend.fsread.xfs import XfsFileSystem
from tests.support.fsread_images import (
    TreeSpec,
    build_tree,
    debugfs,
    have,
    make_ext_image,
    mkfs_xfs,
    xfs_protofile,
)

pytestmark = pytest.mark.timeout(60)
needs_e2fsprogs = pytest.mark.skipif(not have("mkfs.ext4"), reason="needs e2fsprogs")
needs_xfsprogs = pytest.mark.skipif(not have("mkfs.xfs"), reason="needs xfsprogs")


class MemoryImage:
    """A ReadAt over bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def pread(self, length: int, offset: int) -> bytes:
        return self.data[offset : offset + length]


class PatchedImage:
    """A ReadAt over an image file with some byte ranges replaced (the file stays intact)."""

    def __init__(self, base: ImageFile, patches: dict[int, bytes]) -> None:
        self.base = base
        self.size = base.size
        self.patches = patches
        self.offsets: set[int] = set()  # chunk offsets read, to aim corruption at metadata
        self._lock = threading.Lock()

    def pread(self, length: int, offset: int) -> bytes:
        with self._lock:
            self.offsets.add(offset)
        data = bytearray(self.base.pread(length, offset))
        for at, patch in self.patches.items():
            lo, hi = max(at, offset), min(at + len(patch), offset + len(data))
            if lo < hi:
                data[lo - offset : hi - offset] = patch[lo - at : hi - at]
        return bytes(data)


def exercise(fs: FileSystem, files_per_dir: int = 40) -> int:
    """Examine the log, list every directory, stat everything, read links and some files."""
    if fs.needs_recovery:
        assert "\n" not in fs.journal_note
    seen_dirs: set[int] = set()
    todo = [fs.root()]
    visited = 0
    while todo:
        directory = todo.pop()
        if directory.inode in seen_dirs:
            continue  # a damaged entry may point back up the tree
        seen_dirs.add(directory.inode)
        files = 0
        for entry in fs.listdir(directory):
            visited += 1
            if entry.kind == "dir":
                todo.append(entry)
            elif entry.kind == "file" and files < files_per_dir:
                files += 1
                fs.read(entry, 0, 16 * 1024)
                if entry.size > 16 * 1024:
                    fs.read(entry, entry.size - 5000, 10_000)
            elif entry.kind == "symlink":
                fs.readlink(entry)
    return visited


# ------------------------------------------------------------------ no filesystem at all


def test_random_bytes() -> None:
    data = random.Random(1).randbytes(1 << 20)
    with pytest.raises(UnsupportedFilesystem) as caught:
        open_filesystem(MemoryImage(data))
    message = str(caught.value)
    assert message.startswith("no ext4 or xfs filesystem found (first bytes: ")
    assert data[:4].hex(" ") in message


@pytest.mark.parametrize(
    ("offset", "magic", "words"),
    [
        (0, b"\0", "zeros only"),
        (0, b"LUKS\xba\xbe", "LUKS"),
        (512, b"EFI PART", "GPT partition table"),
        (0x10040, b"_BHRfS_M", "btrfs"),
        (510, b"\x55\xaa", "partition table or boot sector"),
    ],
)
def test_other_contents_are_named(offset: int, magic: bytes, words: str) -> None:
    data = bytearray(1 << 20)
    data[offset : offset + len(magic)] = magic
    with pytest.raises(UnsupportedFilesystem, match=words):
        open_filesystem(MemoryImage(bytes(data)))


def test_tiny_image() -> None:
    with pytest.raises(UnsupportedFilesystem, match="only 100 bytes"):
        open_filesystem(MemoryImage(b"x" * 100))
    with pytest.raises(UnsupportedFilesystem):
        open_filesystem(MemoryImage(b""))


def test_read_errors_become_fsread_errors(tmp_path: Path) -> None:
    image = ImageFile(tmp_path.joinpath("empty").open("wb").name)
    image.size = 1 << 20  # claims more than the file holds: reads come back short
    with pytest.raises(CorruptFilesystem, match="the image returned 0 of 2048 bytes at byte 0"):
        open_filesystem(image)
    image.close()  # reading a closed file fails with an OSError, reported as FsReadError
    with pytest.raises(FsReadError, match="cannot read the image"):
        open_filesystem(image)


# ------------------------------------------------------------------ ext4


@pytest.fixture(scope="module")
def ext4_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("garbage-ext4")
    spec = TreeSpec(big_dirs={"many": 300}, huge_size=0, fragments=50, socket=False)
    tree = build_tree(base / "tree", spec)
    return make_ext_image(base / "ext4.img", tree, size_mib=16)


@pytest.fixture(scope="module")
def ext2_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("garbage-ext2")
    spec = TreeSpec(big_dirs={"many": 300}, huge_size=0, fragments=50, socket=False)
    tree = build_tree(base / "tree", spec)
    return make_ext_image(base / "ext2.img", tree, fs_type="ext2", block_size=1024, size_mib=32)


def patch_superblock(image: Path, offset: int, fmt: str, value: int) -> PatchedImage:
    return PatchedImage(ImageFile(image), {offset: struct.pack(fmt, value)})


@needs_e2fsprogs
@pytest.mark.parametrize(
    ("bits", "message"),
    [
        (0x1, "ext4 feature compression is not supported"),
        (0x1000, "ext4 feature dirdata is not supported"),
        (0x80000000, "ext4 feature 0x80000000 is not supported"),
        (0x8, "an external ext4 journal device"),
    ],
)
def test_ext4_unsupported_features(ext4_image: Path, bits: int, message: str) -> None:
    incompat = struct.unpack("<I", ImageFile(ext4_image).pread(4, 1024 + 0x60))[0]
    with pytest.raises(UnsupportedFilesystem, match=message):
        open_filesystem(patch_superblock(ext4_image, 1024 + 0x60, "<I", incompat | bits))


@needs_e2fsprogs
def test_ext4_bad_geometry(ext4_image: Path) -> None:
    for offset, fmt, value in [(0x18, "<I", 30), (0x20, "<I", 0), (0x58, "<H", 100)]:
        with pytest.raises(CorruptFilesystem, match="ext4 superblock"):
            open_filesystem(patch_superblock(ext4_image, 1024 + offset, fmt, value))


def file_inode_offset(fs: Ext4FileSystem, path: str) -> tuple[int, int]:
    number = fs.lookup(path).inode
    group, index = divmod(number - 1, fs.inodes_per_group)
    table, _ = fs._inode_table(group)
    return number, table * fs.block_size + index * fs.inode_size


@needs_e2fsprogs
def test_ext4_damaged_inode(ext4_image: Path) -> None:
    clean = open_filesystem(ImageFile(ext4_image))
    assert isinstance(clean, Ext4FileSystem)
    number, at = file_inode_offset(clean, "/medium.bin")
    broken = open_filesystem(PatchedImage(ImageFile(ext4_image), {at + 0x28: b"\0\0"}))
    entry = broken.lookup("/medium.bin")
    with pytest.raises(CorruptFilesystem, match=f"inode {number}: extent header magic is wrong"):
        broken.read(entry, 0, 100)
    unused = open_filesystem(
        PatchedImage(ImageFile(ext4_image), {at: bytes(2), at + 0x1A: bytes(2)})
    )
    with pytest.raises(CorruptFilesystem, match=f"inode {number} is not in use"):
        unused.lookup("/medium.bin")
    bad_type = open_filesystem(PatchedImage(ImageFile(ext4_image), {at: b"\xa4\xf1"}))
    with pytest.raises(CorruptFilesystem, match="file type 0o170000 is not valid"):
        bad_type.lookup("/medium.bin")


@needs_e2fsprogs
def test_ext4_extent_tree_that_points_at_itself(ext4_image: Path) -> None:
    """An index node whose child is the node itself: the depth check stops the walk."""
    clean = open_filesystem(ImageFile(ext4_image))
    assert isinstance(clean, Ext4FileSystem)
    _, at = file_inode_offset(clean, "/medium.bin")
    loop_block = clean.blocks_count - 1
    index_node = struct.pack("<HHHHI", 0xF30A, 1, 4, 1, 0) + struct.pack(
        "<IIHH", 0, loop_block, 0, 0
    )
    patches = {at + 0x28: index_node, loop_block * clean.block_size: index_node}
    broken = open_filesystem(PatchedImage(ImageFile(ext4_image), patches))
    with pytest.raises(CorruptFilesystem, match="extent node is damaged"):
        broken.read(broken.lookup("/medium.bin"), 0, 100)
    # The same child listed twice in one node: the keys must increase.
    twice = (
        struct.pack("<HHHHI", 0xF30A, 2, 4, 1, 0) + struct.pack("<IIHH", 0, loop_block, 0, 0) * 2
    )
    broken = open_filesystem(PatchedImage(ImageFile(ext4_image), {at + 0x28: twice}))
    with pytest.raises(CorruptFilesystem, match="out of order"):
        broken.read(broken.lookup("/medium.bin"), 0, 100)


@needs_e2fsprogs
def test_ext4_damaged_directory_block(ext4_image: Path) -> None:
    clean = open_filesystem(ImageFile(ext4_image))
    assert isinstance(clean, Ext4FileSystem)
    directory = clean.inode(clean.lookup("/sizes").inode)
    run = next(clean._data_runs(directory, 0, 1))
    broken = open_filesystem(PatchedImage(ImageFile(ext4_image), {run.disk + 4: b"\x03\x00"}))
    with pytest.raises(CorruptFilesystem, match=r"directory inode \d+: damaged entry in block 0"):
        broken.listdir("/sizes")


@needs_e2fsprogs
def test_truncated_image(ext4_image: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.img"
    shutil.copyfile(ext4_image, short)
    clean = open_filesystem(ImageFile(ext4_image))
    medium = clean.lookup("/medium.bin")
    os.truncate(short, 2 << 20)
    fs = open_filesystem(ImageFile(short))
    with pytest.raises(CorruptFilesystem, match="the image is truncated"):
        exercise(fs)
        fs.read(medium, 0, medium.size)


def metadata_ranges(image: Path) -> list[tuple[int, int]]:
    """The (offset, length) of every metadata structure a clean walk reads."""
    fs = open_filesystem(ImageFile(image))
    reader = fs.reader  # type: ignore[attr-defined]
    ranges: set[tuple[int, int]] = set()
    meta = reader.meta

    def recording_meta(offset: int, length: int, *args: object, **kwargs: object) -> bytes:
        ranges.add((offset, length))
        return meta(offset, length, *args, **kwargs)  # type: ignore[no-any-return]

    reader.meta = recording_meta
    exercise(fs)
    return sorted(ranges)


def corruptions(
    image: Path,
    seeds: range,
    extra: list[tuple[int, int]] = (),  # type: ignore[assignment]
) -> Iterator[tuple[int, PatchedImage]]:
    """Random damage aimed at the structures a clean walk reads (and at ``extra`` ranges)."""
    targets = metadata_ranges(image) + list(extra)
    for seed in seeds:
        rng = random.Random(seed)
        patches: dict[int, bytes] = {}
        for _ in range(rng.randrange(1, 4)):
            offset, length = rng.choice(targets)
            # Headers (magic numbers, counts, levels) sit at the start: aim there half the time.
            at = offset + rng.randrange(min(length, 64) if rng.random() < 0.5 else length)
            patches[at] = rng.choice(
                [
                    rng.randbytes(rng.randrange(1, 17)),
                    b"\0" * rng.randrange(1, 9),
                    b"\xff" * rng.randrange(1, 9),
                    struct.pack("<I", rng.choice([1, 2, 0x7FFFFFFF, 0x80000000, 12, 4096])),
                    struct.pack(">I", rng.choice([1, 2, 0x7FFFFFFF, 0x80000000, 12, 4096])),
                ]
            )
        yield seed, PatchedImage(ImageFile(image), patches)


def assert_only_clear_errors(
    image: Path,
    seeds: range,
    extra: list[tuple[int, int]] = (),  # type: ignore[assignment]
) -> dict[str, int]:
    outcomes = {"ok": 0, "error": 0}
    for seed, damaged in corruptions(image, seeds, extra):
        try:
            exercise(open_filesystem(damaged))
            outcomes["ok"] += 1
        except FsReadError as e:
            assert str(e) and "\n" not in str(e), (seed, str(e))
            outcomes["error"] += 1
        except Exception as e:  # pragma: no cover - the failure this test exists to catch
            raise AssertionError(f"seed {seed}: {type(e).__name__}: {e}") from e
    return outcomes


@needs_e2fsprogs
def test_random_damage_ext4(ext4_image: Path) -> None:
    outcomes = assert_only_clear_errors(ext4_image, range(150))
    assert outcomes["error"] > 10  # the damage really hit metadata


@pytest.fixture(scope="module")
def journal_image(ext4_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ext4 image with transactions pending in its journal (as in a live snapshot)."""
    image = tmp_path_factory.mktemp("garbage-journal") / "journal.img"
    shutil.copyfile(ext4_image, image)
    fs = open_filesystem(ImageFile(image))
    assert isinstance(fs, Ext4FileSystem)
    table, _ = fs._inode_table(0)
    copies = image.parent / "copies"
    blocks = [table, table + 1, first_dir_block(fs, "/")]
    copies.write_bytes(
        b"".join(ImageFile(image).pread(fs.block_size, b * fs.block_size) for b in blocks)
    )
    debugfs(
        image,
        "jo",
        f"jw -b {','.join(map(str, blocks))} {copies}",
        f"jw -r {blocks[1]} {copies}",
        "jc",
        write=True,
    )
    replayed = open_filesystem(ImageFile(image))
    assert replayed.journal_transactions == 2  # type: ignore[attr-defined]
    return image


def first_dir_block(fs: Ext4FileSystem, path: str) -> int:
    run = next(fs._data_runs(fs.inode(fs.lookup(path).inode), 0, 1))
    return run.disk // fs.block_size


@needs_e2fsprogs
def test_random_damage_with_a_journal_to_replay(journal_image: Path) -> None:
    fs = open_filesystem(ImageFile(journal_image), replay_journal=False)
    assert isinstance(fs, Ext4FileSystem)
    journal = fs.inode(fs.journal_inode)
    log = [(run.disk, run.count * fs.block_size) for run in fs._data_runs(journal, 0, 8)]
    # Half the damage goes to the log itself: a damaged log is skipped with a note.
    outcomes = assert_only_clear_errors(journal_image, range(4000, 4150), log * 40)
    assert outcomes["error"] > 10


@needs_e2fsprogs
def test_random_damage_ext2_block_maps(ext2_image: Path) -> None:
    outcomes = assert_only_clear_errors(ext2_image, range(1000, 1150))
    assert outcomes["error"] > 10


# ------------------------------------------------------------------ xfs


@pytest.fixture(scope="module")
def xfs_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("garbage-xfs")
    spec = TreeSpec(
        big_dirs={"d5": 5, "d50": 50, "d500": 500, "d3000": 3000},
        huge_size=0,
        fragments=50,
        long_symlink=300,
        hostile=False,
        socket=False,
        devices=False,
        hardlinks=False,
        sticky=False,
    )
    tree = build_tree(base / "tree", spec)
    xfs_protofile(tree, base / "proto")
    return mkfs_xfs(base / "xfs.img", protofile=base / "proto")


@needs_xfsprogs
@pytest.mark.parametrize(
    ("offset", "fmt", "value", "error", "message"),
    [
        (100, ">H", 0xB4A3, UnsupportedFilesystem, "xfs version 3 is not supported"),
        (216, ">I", 0x8000000B, UnsupportedFilesystem, "xfs feature 0x80000000 is not supported"),
        (216, ">I", 0x10B, UnsupportedFilesystem, "xfs feature metadir is not supported"),
        (4, ">I", 3000, CorruptFilesystem, "block size 3000 is not valid"),
        (84, ">I", 0, CorruptFilesystem, "allocation group geometry"),
    ],
)
def test_xfs_bad_superblock(
    xfs_image: Path, offset: int, fmt: str, value: int, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        open_filesystem(patch_superblock(xfs_image, offset, fmt, value))


@needs_xfsprogs
def test_xfs_damaged_inode_and_btree(xfs_image: Path) -> None:
    clean = open_filesystem(ImageFile(xfs_image))
    assert isinstance(clean, XfsFileSystem)
    number = clean.lookup("/d3000").inode
    slot = number & ((1 << clean.inodes_per_block_log) - 1)
    agino = number >> clean.inodes_per_block_log
    ag, block = agino >> clean.ag_block_log, agino & ((1 << clean.ag_block_log) - 1)
    at = ((ag * clean.ag_blocks + block) << clean.block_log) + slot * clean.inode_size
    assert clean.inode(number).format == 3  # a btree-format directory
    bad_magic = open_filesystem(PatchedImage(ImageFile(xfs_image), {at: b"XX"}))
    with pytest.raises(CorruptFilesystem, match=f"inode {number}: inode magic is wrong"):
        bad_magic.lookup("/d3000")
    # The btree root claims one more level than its children have.
    root_level = struct.unpack(">H", ImageFile(xfs_image).pread(2, at + 176))[0]
    deeper = open_filesystem(
        PatchedImage(ImageFile(xfs_image), {at + 176: struct.pack(">H", root_level + 1)})
    )
    with pytest.raises(CorruptFilesystem, match="extent btree levels are inconsistent"):
        deeper.listdir("/d3000")


@needs_xfsprogs
def test_random_damage_xfs(xfs_image: Path) -> None:
    outcomes = assert_only_clear_errors(xfs_image, range(2000, 2060))
    assert outcomes["error"] > 10
