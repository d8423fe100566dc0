"""Delta restore: bring a target that holds some version of the volume to a point, writing
only the blocks that differ.

The volume is cut into fingerprint blocks (grid cells in a repository without
fingerprints). A block whose hash, as the point reads it, is known from the point's
resolved fingerprints is read from the target and hashed: equal means nothing to do.
A block whose hash is unknown is written whole. Only pieces that differing blocks read are
downloaded. With ``assume_from`` the target is not read: the blocks where the two points'
resolved maps differ are the ones written, after a sample of the others was checked.
"""

from __future__ import annotations

import os
import random
import stat
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import Cancelled, CorruptObject, LaminaError, MissingObject
from ..progress import ProgressCallback, ProgressTracker
from .extents import image_digest
from .fingerprints import UNKNOWN, Fingerprinter
from .format import EXTENT_DATA, Extent, PieceEntry
from .repository import Point, Repository, pack_runs
from .safewrite import TargetError
from .storage.metering import ContextThreadPool

SAMPLES = 32  # blocks of an --assume-from restore read back to check the assumption


def _mounted_devices() -> set[str]:
    try:
        with open("/proc/self/mountinfo") as f:
            return {line.split()[2] for line in f if len(line.split()) > 2}
    except OSError:
        return set()


def _loop_users(path: str) -> list[str]:
    real = os.path.realpath(path)
    users = []
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return []
    for name in names:
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                if f.read().strip() == real:
                    users.append(f"/dev/{name}")
        except OSError:
            continue
    return users


def open_target(target: str, capacity: int) -> tuple[int, bool]:
    """The target opened for writing, after every check (one line, nothing written)."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        raise TargetError(
            f"{target} does not exist: a delta restore needs an existing target"
        ) from None
    except OSError as e:
        raise TargetError(f"cannot use {target}: {e.strerror}") from None
    if stat.S_ISBLK(st.st_mode):
        if f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" in _mounted_devices():
            raise TargetError(f"{target} is mounted; unmount it before restoring onto it")
    elif stat.S_ISREG(st.st_mode):
        users = _loop_users(target)
        if users:
            raise TargetError(f"{target} is attached to {', '.join(users)}; detach it first")
    else:
        raise TargetError(f"{target} is neither an image file nor a block device")
    try:
        fd = os.open(target, os.O_RDWR | os.O_NOFOLLOW)
    except OSError as e:  # a symlink (ELOOP), no write permission, a busy device
        raise TargetError(f"cannot open {target} for writing: {e.strerror}") from None
    size = os.lseek(fd, 0, os.SEEK_END)
    if size < capacity:
        os.close(fd)
        raise TargetError(
            f"{target} holds {size} bytes, less than the volume's {capacity}; nothing was written"
        )
    return fd, stat.S_ISBLK(st.st_mode)


def _clip(resolved: Sequence[Extent], start: int, end: int, first: int) -> tuple[list[Extent], int]:
    """The extents of ``resolved`` (from index ``first`` on) inside [start, end)."""
    out = []
    i = first
    while i < len(resolved) and resolved[i].end <= start:
        i += 1
    j = i
    while j < len(resolved) and resolved[j].offset < end:
        e = resolved[j]
        s, t = max(e.offset, start), min(e.end, end)
        out.append(Extent(s, t - s, e.kind, e.piece_id, e.piece_offset + s - e.offset))
        j += 1
    return out, i


def delta_restore(
    repo: Repository,
    point: Point,
    target: str,
    *,
    assume_from: Point | None = None,
    progress: ProgressCallback | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    started = time.monotonic()
    tracker = ProgressTracker(progress)
    tracker.set_phase("resolving chain")
    requests_before = repo.counter.requests
    down_before = repo.counter.bytes_down
    resolved = repo.resolve(point)
    digest = image_digest(point.capacity, resolved)
    if digest != point.manifest.get("image_digest"):
        raise CorruptObject(
            f"the resolved extent map of point {point.id} does not match its recorded image digest"
        )
    capacity = point.capacity
    if assume_from is not None and assume_from.capacity != capacity:
        raise TargetError(f"point {assume_from.id} has another capacity than point {point.id}")
    fd, is_device = open_target(target, capacity)
    try:
        fpr = repo.fingerprinter
        block = fpr.block_size if fpr is not None else repo.grid_size
        hasher = fpr if fpr is not None else Fingerprinter(block, None)
        fps = repo.resolve_fingerprints(point) if fpr is not None else None
        count = (capacity + block - 1) // block

        def expected(b: int, parts: Sequence[Extent]) -> bytes | None:
            length = min(block, capacity - b * block)
            if not any(p.kind == EXTENT_DATA for p in parts):
                return hasher.zero(length)
            if fps is None:
                return None
            h = fps.lookup(b)
            if h is None:
                return hasher.zero(length)
            return None if h == UNKNOWN else h

        units: list[tuple[int, list[Extent]]] = []
        first = 0
        for b in range(count):
            parts, first = _clip(resolved, b * block, min((b + 1) * block, capacity), first)
            units.append((b, parts))
        bytes_read = 0
        differing: list[tuple[int, list[Extent]]] = []
        if assume_from is None:
            tracker.set_phase("reading target", capacity)

            def same(unit: tuple[int, list[Extent]]) -> bool:
                b, parts = unit
                want = expected(b, parts)
                length = min(block, capacity - b * block)
                if want is None or cancelled():
                    return False
                have = os.pread(fd, length, b * block)
                tracker.add(length, read=length)
                return hasher.of(have) == want

            with ContextThreadPool(4) as pool:
                verdicts = list(pool.map(same, units))
            if cancelled():
                raise Cancelled("delta restore cancelled; nothing was written")
            bytes_read = sum(
                min(block, capacity - b * block)
                for (b, parts), ok in zip(units, verdicts, strict=True)
                if expected(b, parts) is not None
            )
            differing = [u for u, ok in zip(units, verdicts, strict=True) if not ok]
        else:
            old = repo.resolve(assume_from)
            first = 0
            unchanged: list[tuple[int, list[Extent]]] = []
            for b, parts in units:
                theirs, first = _clip(old, b * block, min((b + 1) * block, capacity), first)
                (unchanged if _same_content(parts, theirs) else differing).append((b, parts))
            sample = random.Random().sample(unchanged, min(SAMPLES, len(unchanged)))
            for b, parts in sample:
                want = expected(b, parts)
                if want is None:
                    continue
                length = min(block, capacity - b * block)
                bytes_read += length
                if hasher.of(os.pread(fd, length, b * block)) != want:
                    raise TargetError(
                        f"{target} does not hold point {assume_from.id} (offset {b * block} "
                        "differs); run without --assume-from; nothing was written"
                    )
        written = _write_units(repo, fd, differing, block, capacity, tracker, cancelled)
        if not is_device and os.fstat(fd).st_size > capacity:
            os.ftruncate(fd, capacity)
        os.fsync(fd)
    except OSError as e:
        raise TargetError(f"cannot write {target}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    result = {
        "point": point.id,
        "target": target,
        "capacity": capacity,
        "delta": True,
        "assumed_from": assume_from.id if assume_from is not None else None,
        "bytes_read_target": bytes_read,
        "bytes_written": written,
        "bytes_downloaded": repo.counter.bytes_down - down_before,
        "blocks_differing": len(differing),
        "block_size": block,
        "image_digest": digest,
        "requests": repo.counter.requests - requests_before,
        "duration_seconds": round(time.monotonic() - started, 3),
    }
    tracker.finish(f"restored {point.id} (delta)")
    return result


def _same_content(a: Sequence[Extent], b: Sequence[Extent]) -> bool:
    """Whether two clipped map pieces read the same bytes (zeros in either form are alike)."""
    data_a = [(e.offset, e.length, e.piece_id, e.piece_offset) for e in a if e.kind == EXTENT_DATA]
    data_b = [(e.offset, e.length, e.piece_id, e.piece_offset) for e in b if e.kind == EXTENT_DATA]
    return data_a == data_b


def _write_units(
    repo: Repository,
    fd: int,
    units: Sequence[tuple[int, list[Extent]]],
    block: int,
    capacity: int,
    tracker: ProgressTracker,
    cancelled: Callable[[], bool],
) -> int:
    """Write each unit whole: its data from the pieces, zeros elsewhere."""
    users: dict[bytes, list[Extent]] = {}
    written = 0
    for b, parts in units:
        start, end = b * block, min((b + 1) * block, capacity)
        data = [(p.offset, p.length) for p in parts if p.kind == EXTENT_DATA]
        pos = start
        for offset, length in [*data, (end, 0)]:
            if offset > pos:
                os.pwrite(fd, bytes(offset - pos), pos)
            pos = offset + length
        for p in parts:
            if p.kind == EXTENT_DATA:
                users.setdefault(p.piece_id, []).append(p)
        written += end - start
    entries: list[PieceEntry] = []
    for piece_id, exts in users.items():
        entry = repo.find_piece(piece_id)
        if entry is None:
            raise MissingObject(
                f"piece {piece_id.hex()[:16]} for volume offset {exts[0].offset} is not in the repository"
            )
        entries.append(entry)
    tracker.set_phase("writing", written)
    failure: list[LaminaError] = []

    def fetch(run: list[PieceEntry]) -> None:
        if failure or cancelled():
            return
        for entry, piece in zip(run, repo.read_pack_run(run), strict=True):
            if isinstance(piece, LaminaError):
                failure.append(piece)
                return
            for e in users[entry.piece_id]:
                os.pwrite(
                    fd, memoryview(piece)[e.piece_offset : e.piece_offset + e.length], e.offset
                )
                tracker.add(e.length)

    with ContextThreadPool(repo.io_threads) as pool:
        list(pool.map(fetch, pack_runs(entries)))
    if failure:
        raise failure[0]
    if cancelled():
        raise Cancelled("delta restore cancelled; the target holds a mix of both versions")
    return written
