"""Delta restore: bring a target that holds some version of the volume to a point, writing
only the blocks that differ.

The volume is cut into fingerprint blocks (grid cells in a repository without
fingerprints). A block whose hash, as the point reads it, is known from the point's
resolved fingerprints is read from the target and hashed: equal means nothing to do.
Holes settle blocks without reading: a hole on both sides is equal, a hole in the point
over the target's data is zeroed, the target's hole under the point's data reads as zeros.
A block whose hash is unknown is written whole. Only pieces that differing blocks read are
downloaded. With ``assume_from`` the target is not read: the blocks where the two points'
resolved maps differ are the ones written, after a sample of the others was checked.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import random
import stat
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import Cancelled, CorruptObject, LaminaError, MissingObject
from ..progress import ProgressCallback, ProgressTracker
from .extents import allocated_ranges, image_digest
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
            same, bytes_read = _compare_target(
                fd, is_device, units, block, capacity, hasher, expected, tracker, cancelled
            )
            if cancelled():
                raise Cancelled("delta restore cancelled; nothing was written")
            differing = [u for u in units if not same[u[0]]]
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
        written = _write_units(repo, fd, is_device, differing, block, capacity, tracker, cancelled)
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


READ_CHUNK = 8 * 1024 * 1024  # one sequential pread of the target, hashed by one worker
# BLAKE3 releases the GIL on a block; one thread more than cores keeps them busy while one faults
HASH_THREADS = min(8, (os.cpu_count() or 1) + 1)
_FALLOC_PUNCH_HOLE = 0x01 | 0x02  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def _target_data_blocks(fd: int, capacity: int, block: int) -> bytearray:
    """Per block of an image file, 1 where SEEK_DATA finds data in it, 0 for a whole hole."""
    flags = bytearray((capacity + block - 1) // block)
    for offset, length in allocated_ranges(fd, capacity):
        first, last = offset // block, (offset + length - 1) // block
        flags[first : last + 1] = b"\x01" * (last + 1 - first)
    return flags


def _compare_target(
    fd: int,
    is_device: bool,
    units: Sequence[tuple[int, list[Extent]]],
    block: int,
    capacity: int,
    hasher: Fingerprinter,
    expected: Callable[[int, Sequence[Extent]], bytes | None],
    tracker: ProgressTracker,
    cancelled: Callable[[], bool],
) -> tuple[bytearray, int]:
    """Per block, 1 where the target already holds the point's bytes; and the bytes read.

    Only blocks whose answer needs the target's bytes are read: in an image file a hole
    reads as zeros (no reading), and where the point has a hole and the target data, the
    block is zeroed without looking. What is read is read in long sequential runs, each run
    hashed block by block in a pool thread."""
    same = bytearray(len(units))
    target_data = None if is_device else _target_data_blocks(fd, capacity, block)
    to_read: list[tuple[int, bytes]] = []
    skipped = 0
    for b, parts in units:
        length = min(block, capacity - b * block)
        has_data = target_data is None or target_data[b]
        if not any(p.kind == EXTENT_DATA for p in parts):
            if not has_data:
                same[b] = 1
            elif target_data is None:  # a device's zeros look like data: read them
                to_read.append((b, hasher.zero(length)))
                continue
            skipped += length
            continue
        want = expected(b, parts)
        if want is not None and not has_data:
            same[b] = want == hasher.zero(length)
        elif want is not None:
            to_read.append((b, want))
            continue
        skipped += length
    tracker.add(skipped)

    per_run = max(1, READ_CHUNK // block)
    runs: list[list[tuple[int, bytes]]] = []
    for item in to_read:
        if runs and runs[-1][-1][0] == item[0] - 1 and len(runs[-1]) < per_run:
            runs[-1].append(item)
        else:
            runs.append([item])

    def check(run: list[tuple[int, bytes]]) -> None:
        if cancelled():
            return
        start = run[0][0] * block
        end = min((run[-1][0] + 1) * block, capacity)
        # pread, not a mapping: long reads keep a cold disk streaming (faults read ahead
        # less), and a target cut short meanwhile fails with an error, not SIGBUS.
        view = memoryview(os.pread(fd, end - start, start))
        for b, want in run:
            at = b * block - start
            same[b] = hasher.of(view[at : at + block]) == want
        tracker.add(end - start, read=end - start)

    with ContextThreadPool(HASH_THREADS) as pool:
        list(pool.map(check, runs))
    return same, sum(min(block, capacity - b * block) for b, _ in to_read)


@functools.cache
def _fallocate() -> Any:
    fallocate = ctypes.CDLL(None, use_errno=True).fallocate
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return fallocate


def _punch(fd: int, offset: int, length: int) -> bool:
    """Make [offset, offset + length) of an image file a hole; False where unsupported."""
    if _fallocate()(fd, _FALLOC_PUNCH_HOLE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err))


def _same_content(a: Sequence[Extent], b: Sequence[Extent]) -> bool:
    """Whether two clipped map pieces read the same bytes (zeros in either form are alike)."""
    data_a = [(e.offset, e.length, e.piece_id, e.piece_offset) for e in a if e.kind == EXTENT_DATA]
    data_b = [(e.offset, e.length, e.piece_id, e.piece_offset) for e in b if e.kind == EXTENT_DATA]
    return data_a == data_b


def _write_units(
    repo: Repository,
    fd: int,
    is_device: bool,
    units: Sequence[tuple[int, list[Extent]]],
    block: int,
    capacity: int,
    tracker: ProgressTracker,
    cancelled: Callable[[], bool],
) -> int:
    """Write each unit whole: its data from the pieces, zeros elsewhere."""
    users: dict[bytes, list[Extent]] = {}
    written = 0
    # An image file keeps the point's holes as holes: cheaper, and a later delta restore
    # then skips them without reading.
    can_punch = not is_device
    for b, parts in units:
        start, end = b * block, min((b + 1) * block, capacity)
        data = [(p.offset, p.length) for p in parts if p.kind == EXTENT_DATA]
        pos = start
        for offset, length in [*data, (end, 0)]:
            if offset > pos and not (can_punch and _punch(fd, pos, offset - pos)):
                can_punch = False
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
