"""Deterministic test volumes for the benchmark: sparse image files with a realistic mix.

About half of a volume is left unallocated (real holes, visible to SEEK_HOLE); the rest is
split between text-like data (log lines, compresses about 3x with zstd) and incompressible
random bytes. Everything follows from one seed, so every run backs up the same bytes.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import zstandard

MiB = 1024 * 1024
BLOCK = MiB  # layout granularity
TEXT_SLICE = 4096
TEXT_POOL_SIZE = 8 * MiB
CHANGE_SIZE = 64 * 1024
HOLE, TEXT, RANDOM = "hole", "text", "random"

_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "shi", "on", "ve", "po", "lin", "dar", "qu")
_LEVELS = ("INFO", "DEBUG", "WARN", "ERROR")


class DataMaker:
    """Produces text-like and random bytes, reproducibly from a seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._random_key = blake3.blake3(f"lamina-bench-{seed}".encode()).digest()
        self._random_offset = 0
        self._pool = self._text_pool(random.Random(seed + 1))

    @staticmethod
    def _text_pool(rng: random.Random) -> bytes:
        words = [
            "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(3000)
        ]
        lines: list[str] = []
        size = 0
        while size < TEXT_POOL_SIZE:
            line = (
                f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
                f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z "
                f"{rng.choice(_LEVELS)} {rng.choice(words)}[{rng.randint(1, 9999)}]: "
                + " ".join(rng.choices(words, k=rng.randint(3, 12)))
                + f" id={rng.getrandbits(32):08x}\n"
            )
            lines.append(line)
            size += len(line)
        return "".join(lines).encode()

    def text(self, size: int) -> bytes:
        """Log-like text, stitched from random 4 KiB slices of a pool (so never repeated)."""
        parts = []
        left = size
        while left > 0:
            n = min(TEXT_SLICE, left)
            start = self.rng.randrange(len(self._pool) - n)
            parts.append(self._pool[start : start + n])
            left -= n
        return b"".join(parts)

    def random(self, size: int) -> bytes:
        """Incompressible bytes: a keyed blake3 output stream, never repeating."""
        data = blake3.blake3(key=self._random_key).digest(length=size, seek=self._random_offset)
        self._random_offset += size
        return data

    def make(self, kind: str, size: int) -> bytes:
        return self.text(size) if kind == TEXT else self.random(size)


@dataclass(frozen=True)
class Layout:
    """Which parts of a volume hold data, and of which kind: (offset, length, kind) runs."""

    size: int
    runs: tuple[tuple[int, int, str], ...]

    @property
    def allocated(self) -> int:
        return sum(length for _, length, kind in self.runs if kind != HOLE)

    def bytes_of(self, kind: str) -> int:
        return sum(length for _, length, k in self.runs if k == kind)


def plan_layout(size: int, seed: int) -> Layout:
    """Runs of 1-32 MiB: half holes, a quarter text, a quarter random (by expectation)."""
    if size % BLOCK:
        raise ValueError(f"volume size must be a multiple of {BLOCK} bytes")
    rng = random.Random(seed)
    runs: list[tuple[int, int, str]] = []
    offset = 0
    while offset < size:
        kind = rng.choices((HOLE, TEXT, RANDOM), weights=(2, 1, 1))[0]
        length = min(rng.randint(1, 32) * BLOCK, size - offset)
        if runs and runs[-1][2] == kind:
            last = runs.pop()
            runs.append((last[0], last[1] + length, kind))
        else:
            runs.append((offset, length, kind))
        offset += length
    return Layout(size, tuple(runs))


def plan_sparse_layout(size: int, data: int, seed: int) -> Layout:
    """A mostly empty volume: about ``data`` bytes in runs of 1-32 MiB (half text, half
    random) spread evenly over ``size`` bytes, holes between them."""
    if size % BLOCK or data > size:
        raise ValueError(f"sizes must be multiples of {BLOCK} bytes, data <= size")
    rng = random.Random(seed)
    lengths: list[int] = []
    while sum(lengths) < data:
        lengths.append(min(rng.randint(1, 32) * BLOCK, data - sum(lengths)))
    stride = size // len(lengths) // BLOCK * BLOCK
    runs: list[tuple[int, int, str]] = []
    for i, length in enumerate(lengths):
        slack = max(0, stride - length) // BLOCK
        offset = i * stride + rng.randint(0, slack) * BLOCK if slack else i * stride
        runs.append((offset, length, rng.choice((TEXT, RANDOM))))
    return Layout(size, tuple(runs))


def write_image(path: Path, layout: Layout, seed: int) -> None:
    """Write a sparse image: holes stay holes, data runs are written block by block."""
    maker = DataMaker(seed)
    with open(path, "wb") as f:
        f.truncate(layout.size)
        fd = f.fileno()
        for offset, length, kind in layout.runs:
            if kind == HOLE:
                continue
            done = 0
            while done < length:
                n = min(4 * MiB, length - done)
                os.pwrite(fd, maker.make(kind, n), offset + done)
                done += n
        os.fsync(fd)


@dataclass(frozen=True)
class Change:
    """Scattered writes applied for the incremental, and what they should cost to store."""

    ranges: tuple[tuple[int, int], ...]
    bytes_changed: int
    bytes_zstd: int  # the changed data, each write compressed on its own with zstd level 3


def apply_changes(path: Path, fraction: float, seed: int, *, within_data: bool = False) -> Change:
    """Overwrite ``fraction`` of the volume in 64 KiB writes at random aligned places.

    Writes land anywhere, holes included (a filesystem allocates as it goes); the data mix
    matches the volume's: half text-like, half random. With ``within_data``, they land only
    in the allocated data and ``fraction`` is of the allocated bytes (a sparse volume whose
    files change in place).
    """
    size = path.stat().st_size
    rng = random.Random(seed)
    if within_data:
        candidates: list[int] = []
        for offset, length in data_ranges(path):  # whole 64 KiB slots inside the data
            candidates.extend(range(-(-offset // CHANGE_SIZE), (offset + length) // CHANGE_SIZE))
        count = max(1, round(len(candidates) * fraction))
        chosen = sorted(rng.sample(candidates, count))
    else:
        count = max(1, round(size * fraction / CHANGE_SIZE))
        chosen = sorted(rng.sample(range(size // CHANGE_SIZE), count))
    maker = DataMaker(seed)
    compressor = zstandard.ZstdCompressor(level=3)
    compressed = 0
    with open(path, "r+b") as f:
        fd = f.fileno()
        for slot in chosen:
            data = maker.make(rng.choice((TEXT, RANDOM)), CHANGE_SIZE)
            os.pwrite(fd, data, slot * CHANGE_SIZE)
            compressed += len(compressor.compress(data))
        os.fsync(fd)
    ranges = tuple((slot * CHANGE_SIZE, CHANGE_SIZE) for slot in chosen)
    return Change(ranges, count * CHANGE_SIZE, compressed)


def write_ranges_json(path: Path, ranges: tuple[tuple[int, int], ...]) -> None:
    path.write_text(json.dumps([{"byte_offset": o, "size_bytes": n} for o, n in ranges]))


def data_ranges(path: Path) -> Iterator[tuple[int, int]]:
    """The allocated ranges of a sparse file (SEEK_DATA/SEEK_HOLE)."""
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                return
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            yield start, end - start
            offset = end


def file_digest(path: Path) -> str:
    """blake3 of the file's whole content (holes read as zeros), to check restores."""
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        zeros = bytes(4 * MiB)
        offset = 0
        for start, length in data_ranges(path):
            _update_zeros(h, zeros, start - offset)
            done = 0
            while done < length:
                chunk = os.pread(fd, min(4 * MiB, length - done), start + done)
                if not chunk:
                    raise OSError(f"{path} shrank while hashing")
                h.update(chunk)
                done += len(chunk)
            offset = start + length
        _update_zeros(h, zeros, size - offset)
    return str(h.hexdigest())


def _update_zeros(h: blake3.blake3, zeros: bytes, count: int) -> None:
    while count > 0:
        n = min(count, len(zeros))
        h.update(zeros[:n] if n < len(zeros) else zeros)
        count -= n


def read_allocated(path: Path) -> int:
    """Read every allocated byte once in 4 MiB reads (the floor of any scan); returns the
    number of bytes read."""
    total = 0
    with open(path, "rb") as f:
        fd = f.fileno()
        for start, length in data_ranges(path):
            done = 0
            while done < length:
                chunk = os.pread(fd, min(4 * MiB, length - done), start + done)
                if not chunk:
                    raise OSError(f"{path} shrank while reading")
                done += len(chunk)
            total += length
    return total


if __name__ == "__main__":
    import sys

    # `python bench/volume.py read PATH`: the reference reader the benchmark times.
    if len(sys.argv) != 3 or sys.argv[1] != "read":
        sys.exit("usage: volume.py read PATH")
    print(read_allocated(Path(sys.argv[2])))
