"""The ext2/3/4 reader against real images built by mkfs -d (and the kernel's view, as root)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.backend.fsread import Entry, FileSystem, ImageFile, open_filesystem
from tests.support.fsread_images import (
    Expected,
    MiB,
    TreeSpec,
    build_tree,
    compare,
    debugfs,
    ext_extent_depth,
    ext_mounted,
    have,
    index_directories,
    is_root,
    loop_mounted,
    make_ext_image,
    snapshot,
    walk,
)

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not have("mkfs.ext4") or not have("debugfs"), reason="needs e2fsprogs"),
]

needs_root = pytest.mark.skipif(not is_root(), reason="loop-mounting needs root")

# mkfs -d keeps whole seconds and cannot store times past 2038, and the root directory
# gains lost+found: the source comparison leaves those to the kernel comparison.
SOURCE_FIELDS = ("kind", "mode", "uid", "gid", "size", "nlink", "mtime_ns", "rdev")

VARIANTS: dict[str, dict[str, object]] = {
    "ext4": {"block_size": 4096},
    "ext4-inline-data": {"block_size": 4096, "features": "inline_data"},
    "ext4-block-maps": {"block_size": 4096, "features": "^extent,^64bit"},
    "ext4-meta-bg-1k": {"block_size": 1024, "features": "meta_bg,^resize_inode,^64bit"},
    "ext4-bigalloc-1k": {"block_size": 1024, "features": "bigalloc", "size_mib": 128},
    "ext3": {"fs_type": "ext3", "block_size": 4096},
    "ext2-1k-128": {"fs_type": "ext2", "block_size": 1024, "inode_size": 128},
}

# What debugfs must report for each variant, so each test really covers its feature.
HTREE = ("htree_dump /many", "Number of entries (count)")
FEATURE_CHECKS: dict[str, list[tuple[str, str]]] = {
    "ext4": [HTREE, ('stat "/many"', "Flags: 0x81000")],  # htree + extents
    "ext4-inline-data": [('stat "/sizes/file-59"', "Size of inline data"), HTREE],
    "ext4-block-maps": [('stat "/sparse.bin"', "(DIND)"), HTREE],
    "ext4-meta-bg-1k": [("stats", "meta_bg"), HTREE],
    "ext4-bigalloc-1k": [("stats", "bigalloc"), ("stats", "Cluster size:             16384")],
    "ext2-1k-128": [('stat "/huge.bin"', "(TIND)"), HTREE],
    "ext3": [('stat "/sparse.bin"', "(DIND)"), HTREE, ("stats", "has_journal")],
}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tree(tmp_path_factory.mktemp("ext-src") / "tree", TreeSpec(far_times=False))


@pytest.fixture(scope="module")
def source_expected(source: Path) -> dict[str, Expected]:
    expected = snapshot(source)
    del expected["/"]
    return expected


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(
    request: pytest.FixtureRequest, source: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    name: str = request.param
    options = dict(VARIANTS[name])
    image = tmp_path_factory.mktemp("ext-img") / f"{name}.img"
    make_ext_image(image, source, label=name[:16], **options)  # type: ignore[arg-type]
    index_directories(image)
    yield name, image
    image.unlink()


def open_image(image: Path) -> FileSystem:
    return open_filesystem(ImageFile(image))


def test_matches_the_source_tree(
    variant: tuple[str, Path], source_expected: dict[str, Expected]
) -> None:
    name, image = variant
    fs = open_image(image)
    assert fs.kind == name.split("-")[0]
    assert fs.label == name[:16]
    problems = compare(
        fs, source_expected, SOURCE_FIELDS, skip=("lost+found",), seconds_only=True, dir_sizes=False
    )
    assert problems == []


@needs_root
def test_matches_the_kernel(variant: tuple[str, Path]) -> None:
    _, image = variant
    with ext_mounted(image) as mnt:
        expected = snapshot(mnt)
    assert compare(open_image(image), expected) == []


def test_variant_exercises_its_feature(variant: tuple[str, Path]) -> None:
    name, image = variant
    for command, needle in FEATURE_CHECKS.get(name, []):
        assert needle in debugfs(image, command), (name, command)
    if name == "ext4":
        assert ext_extent_depth(image, "/fragmented.bin") == 2


@pytest.fixture(scope="module")
def edited_image(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A default ext4 image changed by debugfs: nanoseconds, dates past 2038, unwritten extents."""
    image = make_ext_image(tmp_path_factory.mktemp("ext-edit") / "edited.img", source)
    debugfs(
        image,
        f"sif /sizes/file-59 mtime_extra {(123_456_789 << 2) | 1:#x}",  # + 2**32 seconds
        "sif /sizes/file-59 atime 0x7fffffff",
        "sif /sizes/file-59 atime_extra 0x3",
        f"sif /sizes/file-60 ctime_extra {999_999_999 << 2:#x}",
        "sif /sizes/file-1 mtime 0x80000000",
        "sif /sizes/file-1 mtime_extra 0",  # so: the most negative 32-bit second
        "fallocate /sparse.bin 100 300",
        "fallocate /holes-only 0 200",
        write=True,
    )
    assert "Uninit" in debugfs(image, "dump_extents /holes-only")
    return image


def test_timestamps_with_extra_fields(edited_image: Path, source: Path) -> None:
    fs = open_image(edited_image)
    file59 = fs.lookup("/sizes/file-59")
    base = (source / "sizes/file-59").stat().st_mtime_ns // 10**9
    assert file59.mtime_ns == (base + 2**32) * 10**9 + 123_456_789
    assert file59.atime_ns == (2**31 - 1 + 3 * 2**32) * 10**9
    assert fs.lookup("/sizes/file-60").ctime_ns % 10**9 == 999_999_999
    assert fs.lookup("/sizes/file-1").mtime_ns == -(2**31) * 10**9


def test_unwritten_extents_read_as_zeros(edited_image: Path, source: Path) -> None:
    fs = open_image(edited_image)
    holes = fs.lookup("/holes-only")
    assert fs.read(holes, 0, holes.size) == bytes(3 * MiB)
    sparse = fs.lookup("/sparse.bin")
    assert fs.read(sparse, 0, sparse.size) == (source / "sparse.bin").read_bytes()


@needs_root
def test_edited_image_matches_the_kernel(edited_image: Path) -> None:
    with ext_mounted(edited_image) as mnt:
        expected = snapshot(mnt)
    assert compare(open_image(edited_image), expected) == []


class CountingImage:
    """An ImageFile that records every read, as a lazy remote reader would see them."""

    def __init__(self, path: Path) -> None:
        self._image = ImageFile(path)
        self.size = self._image.size
        self.reads: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def pread(self, length: int, offset: int) -> bytes:
        with self._lock:
            self.reads.append((offset, length))
        return self._image.pread(length, offset)


def test_listing_the_root_is_fast_and_reads_little(variant: tuple[str, Path]) -> None:
    _, image = variant
    counting = CountingImage(image)
    started = time.perf_counter()
    fs = open_filesystem(counting)
    names = {e.name for e in fs.listdir(fs.root())}
    elapsed = time.perf_counter() - started
    assert {"many", "sizes", "links", "lost+found"} <= names
    assert elapsed < 0.2
    # Whole aligned 64 KiB chunks, at most one per entry (inode tables) and a few more.
    assert len(counting.reads) <= len(names) + 4, counting.reads
    assert all(offset % (64 * 1024) == 0 for offset, _ in counting.reads)


def test_big_files_are_read_in_large_requests(variant: tuple[str, Path], source: Path) -> None:
    _, image = variant
    counting = CountingImage(image)
    fs = open_filesystem(counting)
    medium = fs.lookup("/medium.bin")
    before = len(counting.reads)
    data = fs.read(medium, 0, medium.size)
    assert data == (source / "medium.bin").read_bytes()
    # 3 MiB: a handful of reads of up to 4 MiB, never one per block or per indirect block
    # (block maps: indirect blocks are fetched 1 MiB at a time and read through as gaps).
    assert len(counting.reads) - before <= 8, counting.reads[before:]


def test_many_threads_share_one_reader(variant: tuple[str, Path]) -> None:
    _, image = variant
    fs = open_image(image)
    entries = [
        e for e in walk(fs, ("lost+found",)).values() if e.kind == "file" and e.size < 64 * MiB
    ]
    want = {e.inode: hashlib.sha256(fs.read(e, 0, e.size)).hexdigest() for e in entries}
    paths = {e.inode: p for p, e in walk(fs, ("lost+found",)).items()}
    fresh = open_image(image)  # cold caches, filled by all threads at once
    errors: list[BaseException] = []
    results: dict[int, str] = {}

    def work(part: list[Entry]) -> None:
        try:
            assert len(fresh.listdir("/many")) == 3000
            for e in part:
                found = fresh.lookup(paths[e.inode])
                results[e.inode] = hashlib.sha256(fresh.read(found, 0, found.size)).hexdigest()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(entries[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == want


def test_two_level_htree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "big").mkdir(parents=True)
    for i in range(3000):
        (tree / "big" / f"a-rather-long-name-to-fill-blocks-{i:06d}").write_bytes(b"%d" % i)
    image = make_ext_image(tmp_path / "htree.img", tree, block_size=1024, size_mib=16)
    index_directories(image)
    assert "Indirect levels: 1" in debugfs(image, "htree_dump /big")
    fs = open_image(image)
    names = sorted(e.name for e in fs.listdir("/big"))
    assert names == sorted(p.name for p in (tree / "big").iterdir())
    last = fs.lookup("/big/a-rather-long-name-to-fill-blocks-002999")
    assert fs.read(last, 0, 100) == b"2999"


@needs_root
def test_inline_directory_grown_by_the_kernel(tmp_path: Path) -> None:
    """The kernel keeps a small directory inline, its tail in the system.data attribute
    (mkfs -d converts such directories to blocks instead)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    image = make_ext_image(tmp_path / "inline.img", tree, block_size=4096, features="inline_data")
    with loop_mounted(image, "", "ext4") as mnt:
        (mnt / "grown").mkdir()
        for name in "abcdefg":
            (mnt / "grown" / name).write_bytes(name.encode() * 70)
    stat = debugfs(image, "stat /grown")
    assert "Size of inline data: 128" in stat  # 60 bytes in i_block, the rest in the attribute
    with ext_mounted(image) as mnt:
        expected = snapshot(mnt)
    assert compare(open_image(image), expected) == []
