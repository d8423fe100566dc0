"""Path lookup, listing and reading rules of the fsread readers, on a small real ext4 image."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lamina.backend.errors import LaminaError
from lamina.backend.fsread import (
    FileNotFound,
    FileSystem,
    ImageFile,
    InvalidRange,
    NotADirectory,
    NotARegularFile,
    NotASymlink,
    open_filesystem,
)
from tests.support.fsread_images import have, make_ext_image

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not have("mkfs.ext4"), reason="needs e2fsprogs"),
]

BIG = bytes(range(256)) * 4096 * 3  # 3 MiB with a recognisable pattern


@pytest.fixture(scope="module")
def fs(tmp_path_factory: pytest.TempPathFactory) -> FileSystem:
    root = tmp_path_factory.mktemp("paths") / "tree"
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "file").write_bytes(b"hello")
    (root / "dir" / "sub" / "deep").write_bytes(b"deep")
    (root / "big").write_bytes(BIG)
    with open(root / "sparse", "wb") as f:
        f.seek(1 << 20)
        f.write(b"after a hole")
    os.symlink("dir", root / "link-to-dir")
    os.symlink("/etc/passwd", root / "absolute")
    (root / os.fsdecode(b"\xff\xfename")).write_bytes(b"bytes name")
    image = make_ext_image(
        root.parent / "paths.img", root, size_mib=16, block_size=4096, label="paths"
    )
    return open_filesystem(ImageFile(image))


def test_root_and_lookup(fs: FileSystem) -> None:
    root = fs.root()
    assert (root.name, root.kind, root.inode) == ("", "dir", 2)
    assert fs.lookup("/") == root
    assert fs.lookup("") == root
    entry = fs.lookup("/dir/sub/deep")
    assert (entry.name, entry.kind, entry.size) == ("deep", "file", 4)
    assert fs.lookup("dir//sub/./deep") == entry
    assert fs.lookup("/dir/sub/../sub/deep") == entry
    assert fs.lookup("/../dir/sub/deep") == entry  # '..' of the root is the root
    assert fs.lookup("/dir/sub/") == fs.lookup("/dir/sub")


def test_missing_and_not_a_directory(fs: FileSystem) -> None:
    with pytest.raises(FileNotFound, match="/dir/nope: no such file or directory"):
        fs.lookup("/dir/nope")
    with pytest.raises(NotADirectory, match="/dir/file is not a directory"):
        fs.lookup("/dir/file/x")
    with pytest.raises(NotADirectory):
        fs.lookup("/dir/file/")
    with pytest.raises(NotADirectory):
        fs.listdir("/dir/file")


def test_symlinks_are_never_followed(fs: FileSystem) -> None:
    link = fs.lookup("/link-to-dir")
    assert (link.kind, link.link_target) == ("symlink", "dir")
    with pytest.raises(NotADirectory, match="/link-to-dir is not a directory"):
        fs.lookup("/link-to-dir/file")
    with pytest.raises(NotADirectory):
        fs.listdir(link)
    assert fs.readlink(fs.lookup("/absolute")) == "/etc/passwd"
    with pytest.raises(NotASymlink):
        fs.readlink(fs.lookup("/dir/file"))


def test_errors_are_lamina_errors_with_errno(fs: FileSystem) -> None:
    with pytest.raises(LaminaError) as caught:
        fs.lookup("/missing")
    assert caught.value.errno == 2  # type: ignore[attr-defined]


def test_names_are_bytes_decoded_with_surrogateescape(fs: FileSystem) -> None:
    names = {e.name for e in fs.listdir("/")}
    odd = os.fsdecode(b"\xff\xfename")
    assert odd in names
    assert fs.read(fs.lookup("/" + odd), 0, 100) == b"bytes name"
    assert os.fsencode(odd) == b"\xff\xfename"


def test_listdir_excludes_dot_entries(fs: FileSystem) -> None:
    assert sorted(e.name for e in fs.listdir("/dir")) == ["file", "sub"]
    assert fs.listdir(fs.lookup("/dir")) == fs.listdir("/dir")


def test_reads_at_any_offset(fs: FileSystem) -> None:
    big = fs.lookup("/big")
    assert fs.read(big, 0, big.size) == BIG
    for offset, length in [(0, 1), (4095, 2), (12345, 1 << 20), (big.size - 3, 100), (5, 0)]:
        assert fs.read(big, offset, length) == BIG[offset : offset + length]
    assert fs.read(big, big.size, 10) == b""
    assert fs.read(big, big.size + 4096, 10) == b""
    sparse = fs.lookup("/sparse")
    assert fs.read(sparse, 0, sparse.size) == bytes(1 << 20) + b"after a hole"
    assert fs.read(sparse, (1 << 20) - 2, 6) == b"\0\0afte"


def test_read_rejects_bad_requests(fs: FileSystem) -> None:
    big = fs.lookup("/big")
    with pytest.raises(InvalidRange):
        fs.read(big, -1, 10)
    with pytest.raises(InvalidRange):
        fs.read(big, 0, -10)
    with pytest.raises(NotARegularFile, match="is a dir"):
        fs.read(fs.lookup("/dir"), 0, 10)
    with pytest.raises(NotARegularFile, match="is a symlink"):
        fs.read(fs.lookup("/absolute"), 0, 10)


def test_identity(fs: FileSystem, tmp_path: Path) -> None:
    assert fs.kind == "ext4"
    assert fs.label == "paths"
    assert len(fs.uuid) == 36
    assert fs.block_size == 4096
