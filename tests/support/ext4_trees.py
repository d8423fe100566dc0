"""ext4 images with known files for the mount and extraction tests, built without root.

``mkfs.ext4 -d DIR`` fills an image from a folder; ``debugfs -w`` changes it between points.
mkfs keeps whole-second times only, so the source folders use whole seconds too.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
BASE_TIME = 1_700_000_000  # whole seconds


def _set_time(path: Path, seconds: int) -> None:
    os.utime(path, ns=(seconds * 10**9, seconds * 10**9), follow_symlinks=False)


def make_source_tree(root: Path, *, seed: int = 0) -> Path:
    """A folder with files of several sizes and modes, nested folders and symlinks."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc" / "secret").write_text("not for everyone\n")
    (root / "etc" / "secret").chmod(0o600)
    (root / "data" / "deep" / "deeper").mkdir(parents=True)
    (root / "data" / "random.bin").write_bytes(rng.randbytes(700_000))
    (root / "data" / "sparse.bin").write_bytes(b"head" + bytes(300_000) + b"tail")
    (root / "data" / "deep" / "deeper" / "leaf.txt").write_text("leaf\n" * 1000)
    (root / "data" / "empty").write_bytes(b"")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "name with spaces & ünïcode").write_text("odd names are fine\n")
    (root / "hosts-link").symlink_to("etc/hosts")
    (root / "absolute-link").symlink_to("/etc/passwd")
    (root / "data" / "escape-link").symlink_to("../../../../etc/passwd")
    for i, path in enumerate(sorted(root.rglob("*"), reverse=True)):
        _set_time(path, BASE_TIME + 1000 * i)
    _set_time(root, BASE_TIME)
    return root


def mkfs_ext4(source: Path, image: Path, size: int = 16 * MiB, *features: str) -> Path:
    command = ["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(source)]
    if features:
        command += ["-O", ",".join(features)]
    subprocess.run([*command, str(image), f"{size // 1024}k"], check=True, capture_output=True)
    return image


def debugfs(image: Path, *requests: str) -> None:
    for request in requests:
        done = subprocess.run(
            ["debugfs", "-w", "-R", request, str(image)], capture_output=True, text=True
        )
        if done.returncode != 0 or "debugfs:" in done.stderr.replace("debugfs 1.", ""):
            raise RuntimeError(f"debugfs {request!r} failed: {done.stderr.strip()}")


def change_file(image: Path, source_root: Path, relative: str, data: bytes, seconds: int) -> None:
    """Replace (or add) a file both in the source folder and in the image."""
    path = source_root / relative
    existed = path.exists()
    path.write_bytes(data)
    _set_time(path, seconds)
    if existed:
        debugfs(image, f"rm {relative}")
    debugfs(
        image,
        f"write {path} {relative}",
        f"sif {relative} mtime @{seconds}",
        f"sif {relative} atime @{seconds}",
    )


@dataclass(frozen=True)
class PointSource:
    point_id: str
    image_sha256: str
    source: Path  # a frozen copy of the folder this point's filesystem holds


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def freeze(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    for path in [*sorted(source.rglob("*")), source]:
        twin = target / path.relative_to(source)
        st = os.lstat(path)
        os.utime(twin, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    return target


def describe_tree(root: Path, *, with_dir_times: bool = False) -> dict[str, tuple[object, ...]]:
    """Every entry below ``root``: kind, permissions, size, mtime, link target, content hash."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode)) + (
                    (st.st_mtime_ns,) if with_dir_times else ()
                )
            else:
                out[rel] = (
                    "file",
                    stat.S_IMODE(st.st_mode),
                    st.st_size,
                    st.st_mtime_ns,
                    sha256_file(path),
                )
    return out
