"""Volume images for tests: sparse files with known data, and helpers to change them."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

BLOCK = 4096


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def make_volume(path: Path, capacity: int, *, seed: int = 0, extents: int = 12) -> Path:
    """A sparse image: random incompressible and compressible extents, zeros and holes."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(capacity)
        for i in range(extents):
            length = rng.randrange(1, 64) * BLOCK * 4
            offset = rng.randrange(0, (capacity - length) // BLOCK) * BLOCK
            f.seek(offset)
            if i % 3 == 0:
                f.write((f"text block {i} ".encode()) * (length // 13) + b"x" * (length % 13))
            elif i % 3 == 1:
                f.write(rng.randbytes(length))
            else:
                f.write(bytes(length))  # written zeros: allocated, all zero
    return path


def scribble(
    path: Path, count: int, size: int, *, seed: int = 1, zero: bool = False
) -> list[tuple[int, int]]:
    """Overwrite ``count`` scattered, non-overlapping ``size``-byte blocks; return the ranges."""
    rng = random.Random(seed)
    capacity = os.path.getsize(path)
    slots = rng.sample(range(capacity // size), count)
    ranges = sorted((s * size, size) for s in slots)
    with open(path, "r+b") as f:
        for offset, length in ranges:
            f.seek(offset)
            f.write(bytes(length) if zero else rng.randbytes(length))
    return ranges


def sparse_copy(source: Path, target: Path) -> Path:
    """Copy an image keeping its allocation exactly: data ranges (zeros included) and holes."""
    from lamina.backend.engine.extents import allocated_ranges

    size = os.path.getsize(source)
    with open(source, "rb") as src, open(target, "wb") as dst:
        dst.truncate(size)
        for offset, length in allocated_ranges(src.fileno(), size):
            os.pwrite(dst.fileno(), os.pread(src.fileno(), length, offset), offset)
    return target
