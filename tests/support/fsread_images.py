"""Filesystem images for the fsread tests: populated source trees, ext2/3/4 and xfs builders.

ext images are built without root by ``mkfs.ext* -d``. xfs images are filled through a loop
mount (root only) or, without root, from a ``mkfs.xfs -p`` protofile. ``snapshot`` records
what the kernel (or the source tree) says about every entry, to compare with the readers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lamina.backend.fsread import Entry, FileSystem

MiB = 1024 * 1024
GiB = 1024 * MiB
BASE_TIME_NS = 1_500_000_000_123_456_789
WHOLE_HASH_LIMIT = 64 * MiB  # larger files are compared by their data ranges
SBIN_PATH = os.environ.get("PATH", "") + ":/sbin:/usr/sbin"

HOSTILE_NAMES = (
    "new\nline",
    "..foo",
    "...",
    "back\\slash",
    "sp ace ",
    "-dash",
    "tab\there",
    "ünïcødé-名前.txt",
    "emoji-🦀",
    "x" * 255,
)
INVALID_UTF8_NAME = os.fsdecode(b"bad-\xff\xfe-utf8")


def is_root() -> bool:
    return os.geteuid() == 0


def have(tool: str) -> bool:
    return shutil.which(tool, path=SBIN_PATH) is not None


def run(*args: str | os.PathLike[str]) -> str:
    done = subprocess.run(
        [os.fspath(a) for a in args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PATH=SBIN_PATH),
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{os.fspath(args[0])} failed ({done.returncode}): {done.stderr.strip()}"
        )
    return done.stdout


# ------------------------------------------------------------------ source trees


@dataclass
class TreeSpec:
    """What a source tree holds; the defaults suit a 4 KiB-block filesystem."""

    big_dirs: dict[str, int] = field(default_factory=lambda: {"many": 3000})
    long_symlink: int = 1000  # bytes of the longest symlink target (mkfs -d takes < 1024)
    huge_size: int = 5 * GiB  # a sparse file with data near its end (0: none)
    fragments: int = 2000  # one-block pieces separated by holes: deep extent trees
    block: int = 4096
    far_times: bool = True  # timestamps before 1970 and after 2038
    hostile: bool = True
    fifo: bool = True
    socket: bool = True
    devices: bool = True  # only as root
    hardlinks: bool = True
    sticky: bool = True  # a protofile cannot express the sticky bit


def build_tree(root: Path, spec: TreeSpec, seed: int = 7) -> Path:
    """Populate ``root`` with every kind of entry the readers must handle."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)

    def write(rel: str, data: bytes, mode: int = 0o644) -> Path:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
        return path

    # Nested directories, and small files of sizes around the interesting boundaries.
    write("empty", b"")
    for size in (1, 59, 60, 61, 100, 4095, 4096, 4097, 100_000):
        write(f"sizes/file-{size}", rng.randbytes(size))
    deep = "nested/" + "/".join(f"level{i}" for i in range(8))
    write(f"{deep}/leaf.txt", b"deep leaf\n")
    write("nested/level0/text.txt", b"hello\n" * 1000)
    write("modes/private", b"secret", 0o600)
    write("modes/script", b"#!/bin/sh\necho hi\n", 0o755)
    write("modes/setuid", b"s", 0o4755)
    write("modes/odd", b"o", 0o2741)
    (root / "modes/sticky").mkdir()
    (root / "modes/sticky").chmod(0o1777 if spec.sticky else 0o777)
    (root / "emptydir").mkdir()
    write("medium.bin", rng.randbytes(3 * MiB + 123))

    for name, count in spec.big_dirs.items():
        big = root / name
        big.mkdir()
        for i in range(count):
            (big / f"entry-{i:05d}-{'n' * (i % 13)}").write_bytes(str(i).encode())

    # Sparse: 20 MiB with data at the start, in the middle and at the very end.
    with open(root / "sparse.bin", "wb") as f:
        f.write(rng.randbytes(10_000))
        f.seek(5 * MiB + 4096 * 3)
        f.write(rng.randbytes(70_000))
        f.seek(20 * MiB - 10)
        f.write(b"tail-bytes")
    write("holes-only", b"")
    os.truncate(root / "holes-only", 3 * MiB)
    if spec.huge_size:
        with open(root / "huge.bin", "wb") as f:
            f.seek(spec.huge_size - 2 * MiB - 4096 * 7)
            f.write(rng.randbytes(MiB))
            f.seek(spec.huge_size - 100)
            f.write(b"end" * 33 + b"!")
    if spec.fragments:
        with open(root / "fragmented.bin", "wb") as f:
            for i in range(spec.fragments):
                f.seek(2 * i * spec.block)
                f.write(rng.randbytes(spec.block))

    # Symlinks: short (in the inode), long (in a block), dangling, absolute, to a directory.
    links = root / "links"
    links.mkdir()
    os.symlink("../sizes/file-100", links / "short")
    os.symlink("t" * 59, links / "fast-59")
    os.symlink("u" * 60, links / "slow-60")
    os.symlink("/absolute/" + "long/" * 40 + "target", links / "long")
    os.symlink("L" * spec.long_symlink, links / "longest")
    os.symlink("does-not-exist", links / "dangling")
    os.symlink("../nested", links / "to-dir")
    os.symlink("ünïcødé/" + "名" * 10, links / "unicode")

    if spec.hostile:
        hostile = root / "hostile"
        hostile.mkdir()
        for i, name in enumerate(HOSTILE_NAMES):
            (hostile / name).write_bytes(f"hostile {i}\n".encode())
        (hostile / INVALID_UTF8_NAME).write_bytes(b"invalid utf-8 name\n")
        (hostile / "dir\nwith newline").mkdir()
        (hostile / "dir\nwith newline" / "inside").write_bytes(b"inside\n")
    special = root / "special"
    special.mkdir()
    if spec.fifo:
        os.mkfifo(special / "fifo", 0o640)
    if spec.socket:
        with contextlib.chdir(special):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind("socket")
            sock.close()
    if spec.devices and is_root():
        os.mknod(special / "chardev", stat.S_IFCHR | 0o600, os.makedev(240, 17))
        os.mknod(special / "blockdev", stat.S_IFBLK | 0o660, os.makedev(8, 1))
    if spec.hardlinks:
        write("hardlinks/one", b"shared contents\n")
        os.link(root / "hardlinks/one", root / "hardlinks/two")
        os.link(root / "hardlinks/one", root / "hardlinks/three")
    if is_root():
        os.chown(root / "sizes/file-100", 1234, 5678)
        os.chown(root / "modes", 4321, 8765)
        os.lchown(links / "short", 2222, 3333)
        os.chown(root / "modes/private", 70000, 80000)

    # Timestamps last, children before their directories (new entries touch the directory).
    paths = [*sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True), root]
    for path in paths:
        times = (
            BASE_TIME_NS + rng.randrange(0, 10**17),
            BASE_TIME_NS + rng.randrange(0, 10**17),
        )
        os.utime(path, ns=times, follow_symlinks=False)
    if spec.far_times:
        os.utime(root / "sizes/file-1", ns=(-365 * 86_400 * 10**9, -1_000_000_000 * 10**9 + 5))
        os.utime(root / "sizes/file-59", ns=(4_102_444_800 * 10**9, 4_200_000_000 * 10**9 + 7))
        os.utime(root / "sizes", ns=(BASE_TIME_NS, BASE_TIME_NS))
    return root


# ------------------------------------------------------------------ snapshots


@dataclass(frozen=True)
class Expected:
    """What lstat(2), readlink(2) and the contents say about one entry."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    nlink: int
    inode: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int
    target: str | None = None
    sha256: str | None = None  # whole contents, files up to WHOLE_HASH_LIMIT
    data_ranges: tuple[tuple[int, int, str], ...] = ()  # (offset, length, sha256) otherwise
    children: tuple[str, ...] = ()


_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
}


def data_ranges(path: Path, size: int) -> Iterator[tuple[int, int]]:
    """The (offset, length) ranges SEEK_DATA/SEEK_HOLE report as data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                return
            end = os.lseek(fd, start, os.SEEK_HOLE)
            yield start, end - start
            offset = end
    finally:
        os.close(fd)


def hash_range(path: Path, offset: int, length: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(left, 4 * MiB))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, Expected]:
    """Every entry under ``root`` keyed by '/relative/path' ('/' for ``root`` itself)."""
    result: dict[str, Expected] = {}

    def visit(path: Path, rel: str) -> None:
        st = os.lstat(path)
        kind = _KINDS[stat.S_IFMT(st.st_mode)]
        target = sha = None
        ranges: tuple[tuple[int, int, str], ...] = ()
        children: tuple[str, ...] = ()
        if kind == "symlink":
            target = os.readlink(path)
        elif kind == "file":
            if st.st_size <= WHOLE_HASH_LIMIT:
                sha = hash_range(path, 0, st.st_size)
            else:
                ranges = tuple(
                    (offset, length, hash_range(path, offset, length))
                    for offset, length in data_ranges(path, st.st_size)
                )
        elif kind == "dir":
            children = tuple(sorted(name for name in os.listdir(path) if name not in skip))
        result[rel or "/"] = Expected(
            kind=kind,
            mode=st.st_mode,
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size,
            nlink=st.st_nlink,
            inode=st.st_ino,
            atime_ns=st.st_atime_ns,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            rdev=st.st_rdev,
            target=target,
            sha256=sha,
            data_ranges=ranges,
            children=children,
        )
        for name in children:
            visit(path / name, f"{rel}/{name}")

    visit(root, "")
    return result


# ------------------------------------------------------------------ ext2/3/4


def make_ext_image(
    image: Path,
    source: Path | None,
    *,
    fs_type: str = "ext4",
    size_mib: int = 64,
    block_size: int | None = None,
    features: str | None = None,
    inode_size: int | None = None,
    label: str = "",
) -> Path:
    """``mkfs.<fs_type> -d source``: a populated image, no root needed."""
    args: list[str] = [f"mkfs.{fs_type}", "-q", "-F"]
    if block_size:
        args += ["-b", str(block_size)]
    if features:
        args += ["-O", features]
    if inode_size:
        args += ["-I", str(inode_size)]
    if label:
        args += ["-L", label]
    if source is not None:
        args += ["-d", os.fspath(source)]
    if image.exists():
        image.unlink()
    run(*args, image, f"{size_mib}M")
    return image


def index_directories(image: Path) -> None:
    """``e2fsck -fyD``: rebuild directories, with htree indexes where the feature is on
    (mkfs -d writes linear directories only)."""
    done = subprocess.run(
        ["e2fsck", "-fyD", os.fspath(image)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PATH=SBIN_PATH),
    )
    if done.returncode not in (0, 1):  # 1: errors corrected, which -D always reports
        raise RuntimeError(f"e2fsck failed ({done.returncode}): {done.stdout}{done.stderr}")


def debugfs(image: Path, *commands: str, write: bool = False) -> str:
    """Run debugfs commands on an image (``write`` opens it read-write)."""
    args: list[str] = ["debugfs", "-w"] if write else ["debugfs"]
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs", delete=False) as script:
        script.write("\n".join(commands) + "\n")
    try:
        return run(*args, "-f", script.name, image)
    finally:
        os.unlink(script.name)


@contextlib.contextmanager
def ext_mounted(image: Path) -> Iterator[Path]:
    """Mount an ext2/3/4 image read-only without touching it (no journal replay)."""
    with loop_mounted(image, "ro,noload", "ext4") as mnt:
        yield mnt


def ext_extent_depth(image: Path, path: str) -> int:
    """Depth of a file's extent tree, as ``debugfs dump_extents`` reports it."""
    out = debugfs(image, f'dump_extents "{path}"')
    depths = [int(m.group(1)) for m in re.finditer(r"^\s*\d+/\s*(\d+)\s", out, re.MULTILINE)]
    return max(depths, default=0)


# ------------------------------------------------------------------ xfs


@contextlib.contextmanager
def loop_mounted(image: Path, options: str = "", fs_type: str = "auto") -> Iterator[Path]:
    """Mount an image through a loop device (root only); unmounted on exit."""
    mountpoint = Path(tempfile.mkdtemp(prefix="lamina-fsread-mnt-"))
    opts = "loop" + (f",{options}" if options else "")
    run("mount", "-t", fs_type, "-o", opts, image, mountpoint)
    try:
        yield mountpoint
    finally:
        run("umount", mountpoint)
        mountpoint.rmdir()


def mkfs_xfs(
    image: Path, *options: str, size_mib: int = 320, protofile: Path | None = None
) -> Path:
    """A sparse image file with a fresh xfs (300 MiB is the smallest mkfs.xfs accepts)."""
    if image.exists():
        image.unlink()
    with open(image, "wb") as f:
        f.truncate(size_mib * MiB)
    args: list[str] = ["mkfs.xfs", "-q", "-f", *options]
    if protofile is not None:
        args += ["-p", os.fspath(protofile)]
    run(*args, image)
    return image


def make_xfs_image(
    image: Path,
    source: Path,
    *options: str,
    size_mib: int = 320,
    mount_options: str = "",
    inside: Callable[[Path], None] | None = None,
) -> dict[str, Expected]:
    """An xfs image holding a copy of ``source``; returns the kernel's view of it (root only)."""
    mkfs_xfs(image, *options, size_mib=size_mib)
    with loop_mounted(image, mount_options) as mnt:
        run("cp", "-a", "--sparse=always", f"{source}/.", mnt)
        if inside is not None:
            inside(mnt)
        run("sync", "-f", mnt)
        expected = snapshot(mnt)
    return expected


def write_interleaved(path: Path, other: Path, pieces: int, block: int, seed: int = 3) -> None:
    """A file written block by block, interleaved with another: contiguous in the file,
    scattered on disk (mount with allocsize=<block> so preallocation does not merge them)."""
    rng = random.Random(seed)
    a = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    b = os.open(other, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(pieces):
            os.write(a, rng.randbytes(block))
            os.fdatasync(a)
            os.write(b, b"f" * block)
            os.fdatasync(b)
    finally:
        os.close(a)
        os.close(b)


def write_with_holes(path: Path, pieces: int, block: int, seed: int = 5) -> None:
    """``pieces`` one-block extents, each followed by a one-block hole."""
    rng = random.Random(seed)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(pieces):
            os.pwrite(fd, rng.randbytes(block), 2 * i * block)
    finally:
        os.close(fd)


def write_preallocated(path: Path) -> None:
    """1 MiB preallocated (unwritten) with 8 KiB written in the middle, 3 MiB in size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.posix_fallocate(fd, 0, MiB)
        os.pwrite(fd, b"w" * 8192, 65536)
        os.ftruncate(fd, 3 * MiB)
        os.fsync(fd)
    finally:
        os.close(fd)


def xfs_db(image: Path, *commands: str) -> str:
    args: list[str] = ["xfs_db", "-r"]
    for command in commands:
        args += ["-c", command]
    return run(*args, image)


def xfs_inode_format(image: Path, inode: int) -> str:
    """'local', 'extents' or 'btree': the data fork format as xfs_db names it."""
    out = xfs_db(image, f"inode {inode}", "print core.format")
    return out.split("(")[1].split(")")[0]


def xfs_bmbt_levels(image: Path, inode: int) -> int:
    """Levels below the in-inode root of a btree-format data fork."""
    out = xfs_db(image, f"inode {inode}", "print u3.bmbt.level")
    return int(out.split("=")[1])


def xfs_bmap(image: Path, inode: int) -> list[tuple[int, int]]:
    """(file block offset, block count) of every data fork extent."""
    out = xfs_db(image, f"inode {inode}", "bmap")
    extents = []
    for line in out.splitlines():
        words = line.split()
        if "offset" in words and "count" in words:
            extents.append(
                (int(words[words.index("offset") + 1]), int(words[words.index("count") + 1]))
            )
    return extents


def xfs_protofile(source: Path, proto: Path) -> None:
    """A ``mkfs.xfs -p`` protofile for ``source`` (names without blanks or colons only)."""
    lines = ["lamina", "0 0"]

    def mode_word(st: os.stat_result, kind: str) -> str:
        suid = "u" if st.st_mode & stat.S_ISUID else "-"
        sgid = "g" if st.st_mode & stat.S_ISGID else "-"
        return f"{kind}{suid}{sgid}{stat.S_IMODE(st.st_mode) & 0o777:03o}"

    def visit(path: Path, depth: int) -> None:
        indent = "  " * depth
        for child in sorted(path.iterdir()):
            st = os.lstat(child)
            head = f"{indent}{child.name} "
            owner = f"{st.st_uid} {st.st_gid}"
            if stat.S_ISDIR(st.st_mode):
                lines.append(f"{head}{mode_word(st, 'd')} {owner}")
                visit(child, depth + 1)
                lines.append(f"{indent}$")
            elif stat.S_ISLNK(st.st_mode):
                lines.append(f"{head}{mode_word(st, 'l')} {owner} {os.readlink(child)}")
            elif stat.S_ISREG(st.st_mode):
                lines.append(f"{head}{mode_word(st, '-')} {owner} {child}")
            elif stat.S_ISFIFO(st.st_mode):
                lines.append(f"{head}{mode_word(st, 'p')} {owner}")

    st = os.lstat(source)
    lines.append(f"{mode_word(st, 'd')} {st.st_uid} {st.st_gid}")
    visit(source, 1)
    lines.append("$")
    proto.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------ comparing a reader


KERNEL_FIELDS = (
    "kind",
    "mode",
    "uid",
    "gid",
    "size",
    "nlink",
    "inode",
    "atime_ns",
    "mtime_ns",
    "ctime_ns",
    "rdev",
)


def walk(fs: FileSystem, skip: tuple[str, ...] = ()) -> dict[str, Entry]:
    """Every entry the reader lists, keyed like ``snapshot``."""
    found: dict[str, Entry] = {"/": fs.root()}
    todo = [("", fs.root())]
    while todo:
        prefix, directory = todo.pop()
        for entry in fs.listdir(directory):
            if not prefix and entry.name in skip:
                continue
            path = f"{prefix}/{entry.name}"
            assert path not in found, f"{path} listed twice"
            found[path] = entry
            if entry.kind == "dir":
                todo.append((path, entry))
    return found


def _read_hash(fs: FileSystem, entry: Entry, offset: int, length: int, step: int) -> str:
    digest = hashlib.sha256()
    end = offset + length
    while offset < end:
        piece = fs.read(entry, offset, min(step, end - offset))
        if not piece:
            break
        digest.update(piece)
        offset += len(piece)
    return digest.hexdigest()


def compare(
    fs: FileSystem,
    expected: dict[str, Expected],
    fields: tuple[str, ...] = KERNEL_FIELDS,
    *,
    skip: tuple[str, ...] = (),
    seconds_only: bool = False,
    dir_sizes: bool = True,
) -> list[str]:
    """Differences between the reader and ``expected`` (empty when they agree)."""
    problems: list[str] = []
    got = walk(fs, skip)
    if "/" not in expected:
        del got["/"]
    for path in sorted(set(expected) - set(got)):
        problems.append(f"{path!r}: missing from the reader's listing")
    for path in sorted(set(got) - set(expected)):
        problems.append(f"{path!r}: listed by the reader but not expected")
    for path, want in sorted(expected.items()):
        entry = got.get(path)
        if entry is None:
            continue
        if path != "/" and fs.lookup(path) != entry:
            problems.append(f"{path!r}: lookup and listdir disagree")
        for name in fields:
            have_value = getattr(entry, name)
            want_value = getattr(want, name)
            if name == "size" and want.kind == "dir" and not dir_sizes:
                continue
            if name.endswith("_ns") and seconds_only:
                have_value, want_value = have_value // 10**9, want_value // 10**9
            if have_value != want_value:
                problems.append(f"{path!r}: {name} is {have_value!r}, expected {want_value!r}")
        if want.kind == "symlink" and (
            entry.link_target != want.target or fs.readlink(entry) != want.target
        ):
            problems.append(f"{path!r}: symlink target differs")
        if want.kind == "file" and entry.size == want.size:
            if want.sha256 is not None:
                step = 1 * MiB + 4097 if entry.size > 2 * MiB else 4 * MiB
                if _read_hash(fs, entry, 0, entry.size, step) != want.sha256:
                    problems.append(f"{path!r}: contents differ")
            for offset, length, digest in want.data_ranges:
                if _read_hash(fs, entry, offset, length, 4 * MiB) != digest:
                    problems.append(f"{path!r}: contents at {offset} (+{length}) differ")
                if offset >= MiB and fs.read(entry, offset - MiB, MiB).strip(b"\0"):
                    problems.append(f"{path!r}: the MiB before {offset} is not zeros")
    return problems


def expected_from(fs: FileSystem) -> dict[str, Expected]:
    """What a reader shows, as expectations for another (say, after a different replay)."""
    expected: dict[str, Expected] = {}
    for path, entry in walk(fs).items():
        sha = None
        children: tuple[str, ...] = ()
        if entry.kind == "file":
            sha = _read_hash(fs, entry, 0, entry.size, 4 * MiB)
        elif entry.kind == "dir":
            children = tuple(sorted(e.name for e in fs.listdir(entry)))
        expected[path] = Expected(
            kind=entry.kind,
            mode=entry.mode,
            uid=entry.uid,
            gid=entry.gid,
            size=entry.size,
            nlink=entry.nlink,
            inode=entry.inode,
            atime_ns=entry.atime_ns,
            mtime_ns=entry.mtime_ns,
            ctime_ns=entry.ctime_ns,
            rdev=entry.rdev,
            target=entry.link_target,
            sha256=sha,
            children=children,
        )
    return expected
