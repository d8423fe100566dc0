"""Delta restore: bring a target that holds some version of the volume to a point, writing
only the blocks that differ.

The volume is cut into fingerprint blocks (grid cells in a repository without
fingerprints). A block whose hash, as the point reads it, is known from the point's
resolved fingerprints is read from the target and hashed: equal means nothing to do.
Holes settle blocks without reading: a hole on both sides is equal, a hole in the point
over the target's data is zeroed, the target's hole under the point's data reads as zeros.
A block whose hash is unknown is written whole. Only pieces that differing blocks read are
downloaded, and of a raw piece in an unencrypted repository only the ranges, each block
checked against its fingerprint. With ``assume_from`` the target is not read: the blocks
where the two points' resolved maps differ are the ones written, after a sample of the
others was checked. A restore record that still matches an image file (restore_record.py)
stands for ``assume_from``, except that a failed sample falls back to reading the target.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import os
import random
import stat
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import Cancelled, CorruptObject, LaminaError, MissingObject, PointNotFound
from ..progress import ProgressCallback, ProgressTracker
from . import restore_record
from .extents import allocated_ranges, image_digest
from .fingerprints import UNKNOWN, Fingerprinter
from .format import EXTENT_DATA, PIECE_RAW, Extent, PieceEntry
from .repository import Point, Repository, pack_runs
from .safewrite import TargetError
from .storage.metering import ContextThreadPool

SAMPLES = 32  # blocks read back to check an --assume-from point or a restore record


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

        point_data = _data_flags(resolved, block, capacity)

        def expected(b: int) -> bytes | None:
            length = min(block, capacity - b * block)
            if not point_data[b]:
                return hasher.zero(length)
            if fps is None:
                return None
            h = fps.lookup(b)
            if h is None:
                return hasher.zero(length)
            return None if h == UNKNOWN else h

        ends = [e.end for e in resolved]

        def unit(b: int) -> tuple[int, list[Extent]]:
            start = b * block
            return b, _clip(
                resolved, start, min(start + block, capacity), bisect_right(ends, start)
            )[0]

        bytes_read = 0
        basis = "assume-from" if assume_from is not None else "target"
        # A record of the last restore onto this image file, still matching its identity:
        # the maps' difference then, after a sample (restore_record.py).
        recorded = (
            _recorded_point(repo, target, fd, capacity)
            if assume_from is None and not is_device and fps is not None
            else None
        )
        differing: list[tuple[int, list[Extent]]] | None = None
        if assume_from is not None:
            differing, bytes_read, mismatch = _from_maps(
                repo, fd, resolved, point_data, unit, assume_from, block, capacity, hasher, expected
            )
            if mismatch is not None:
                raise TargetError(
                    f"{target} does not hold point {assume_from.id} (offset {mismatch} "
                    "differs); run without --assume-from; nothing was written"
                )
        elif recorded is not None:
            tracker.set_phase("checking the restore record")
            found, bytes_read, mismatch = _from_maps(
                repo, fd, resolved, point_data, unit, recorded, block, capacity, hasher, expected
            )
            if mismatch is None:
                differing, basis = found, "record"
        if differing is None:
            tracker.set_phase("reading target", capacity)
            same, read = _compare_target(
                fd, is_device, point_data, block, capacity, hasher, expected, tracker, cancelled
            )
            bytes_read += read
            if cancelled():
                raise Cancelled("delta restore cancelled; nothing was written")
            differing = [unit(b) for b in range(len(same)) if not same[b]]
        restore_record.forget(target)  # the target changes now; a new record follows
        written, downloaded_ranges = _write_units(
            repo, fd, is_device, differing, block, capacity, hasher, expected, tracker, cancelled
        )
        if not is_device and os.fstat(fd).st_size > capacity:
            os.ftruncate(fd, capacity)
        os.fsync(fd)
        restore_record.record(repo.id, point.id, target, os.fstat(fd))
    except OSError as e:
        raise TargetError(f"cannot write {target}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    assumed = assume_from if assume_from is not None else recorded if basis == "record" else None
    result = {
        "point": point.id,
        "target": target,
        "capacity": capacity,
        "delta": True,
        "assumed_from": assumed.id if assumed is not None else None,
        "basis": basis,
        "bytes_read_target": bytes_read,
        "bytes_written": written,
        "bytes_downloaded": repo.counter.bytes_down - down_before,
        "blocks_differing": len(differing),
        "blocks_from_ranges": downloaded_ranges,
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
    point_data: bytearray,
    block: int,
    capacity: int,
    hasher: Fingerprinter,
    expected: Callable[[int], bytes | None],
    tracker: ProgressTracker,
    cancelled: Callable[[], bool],
) -> tuple[bytearray, int]:
    """Per block, 1 where the target already holds the point's bytes; and the bytes read.

    Only blocks whose answer needs the target's bytes are read: in an image file a hole
    reads as zeros (no reading), and where the point has a hole and the target data, the
    block is zeroed without looking. What is read is read in long sequential runs, each run
    hashed block by block in a pool thread."""
    same = bytearray(len(point_data))
    target_data = None if is_device else _target_data_blocks(fd, capacity, block)
    to_read: list[tuple[int, bytes]] = []
    skipped = 0
    for b in range(len(point_data)):
        length = min(block, capacity - b * block)
        has_data = target_data is None or target_data[b]
        if not point_data[b]:
            if not has_data:
                same[b] = 1
            elif target_data is None:  # a device's zeros look like data: read them
                to_read.append((b, hasher.zero(length)))
                continue
            skipped += length
            continue
        want = expected(b)
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


def _recorded_point(repo: Repository, target: str, fd: int, capacity: int) -> Point | None:
    """The point a still-matching restore record says the target holds, if it is usable."""
    found = restore_record.matching(repo.id, target, fd)
    if found is None:
        return None
    try:
        base = repo.load_point(found.point)
    except (PointNotFound, CorruptObject, MissingObject):  # pruned since, or damaged
        return None
    return base if base.capacity == capacity else None


def _data_flags(resolved: Sequence[Extent], block: int, capacity: int) -> bytearray:
    """Per block, 1 where the point has data in it, 0 where it reads only zeros."""
    flags = bytearray((capacity + block - 1) // block)
    for e in resolved:
        if e.kind == EXTENT_DATA and e.length:
            first, last = e.offset // block, (e.end - 1) // block
            flags[first : last + 1] = b"\x01" * (last + 1 - first)
    return flags


def _data_spans(resolved: Sequence[Extent]) -> list[tuple[int, int, bytes, int]]:
    """Data extents as (start, end, piece, piece offset - volume offset): equal keys over a
    byte mean the same byte, however the maps cut their extents."""
    return [
        (e.offset, e.end, e.piece_id, e.piece_offset - e.offset)
        for e in resolved
        if e.kind == EXTENT_DATA and e.length
    ]


def _differing_blocks(new: Sequence[Extent], old: Sequence[Extent], block: int) -> list[int]:
    """The blocks where two resolved maps read different bytes, by one sweep over both."""
    a, b = _data_spans(new), _data_spans(old)
    cuts = sorted({x for s in a for x in s[:2]} | {x for s in b for x in s[:2]})
    differing: list[int] = []
    i = j = 0
    for start, end in itertools.pairwise(cuts):
        while i < len(a) and a[i][1] <= start:
            i += 1
        while j < len(b) and b[j][1] <= start:
            j += 1
        key_a = a[i][2:] if i < len(a) and a[i][0] <= start else None
        key_b = b[j][2:] if j < len(b) and b[j][0] <= start else None
        if key_a != key_b:
            first, last = start // block, (end - 1) // block
            if differing and differing[-1] >= first:
                first = differing[-1] + 1
            differing.extend(range(first, last + 1))
    return differing


def _from_maps(
    repo: Repository,
    fd: int,
    resolved: Sequence[Extent],
    point_data: bytearray,
    unit: Callable[[int], tuple[int, list[Extent]]],
    base: Point,
    block: int,
    capacity: int,
    hasher: Fingerprinter,
    expected: Callable[[int], bytes | None],
) -> tuple[list[tuple[int, list[Extent]]], int, int | None]:
    """The blocks where ``base``'s resolved map differs from the point's, assuming the target
    holds ``base``; the bytes read to check that on a sample of the other blocks; and the
    offset of a sampled block that disagrees (None when the sample holds)."""
    old = repo.resolve(base)
    if image_digest(base.capacity, old) != base.manifest.get("image_digest"):
        raise CorruptObject(
            f"the resolved extent map of point {base.id} does not match its recorded image digest"
        )
    differ = _differing_blocks(resolved, old, block)
    skip = set(differ)  # written anyway: neither sampled nor counted
    # Blocks with data first (where a volume is written), then the holes, each drawn at random.
    rng = random.Random()
    data_blocks = [b for b, flag in enumerate(point_data) if flag and b not in skip]
    hole_blocks = [b for b, flag in enumerate(point_data) if not flag and b not in skip]
    candidates = rng.sample(data_blocks, min(len(data_blocks), 4 * SAMPLES))
    candidates += rng.sample(hole_blocks, min(len(hole_blocks), 4 * SAMPLES))
    bytes_read = checked = 0
    for b in candidates:
        if checked == SAMPLES:
            break
        want = expected(b)
        if want is None:  # no hash to check this block against
            continue
        length = min(block, capacity - b * block)
        bytes_read += length
        checked += 1
        if hasher.of(os.pread(fd, length, b * block)) != want:
            return [unit(b) for b in differ], bytes_read, b * block
    return [unit(b) for b in differ], bytes_read, None


RANGE_RUN = 8 * 1024 * 1024  # the most one worker fetches by ranges in a row


def _write_units(
    repo: Repository,
    fd: int,
    is_device: bool,
    units: Sequence[tuple[int, list[Extent]]],
    block: int,
    capacity: int,
    hasher: Fingerprinter,
    expected: Callable[[int], bytes | None],
    tracker: ProgressTracker,
    cancelled: Callable[[], bool],
) -> tuple[int, int]:
    """Write each unit whole: its data from the pieces, zeros elsewhere. Returns the bytes
    written and the number of units whose data was fetched by ranges.

    A piece is the unit the format checks, so it is fetched whole; except that a unit whose
    every piece is stored raw in an unencrypted repository, and is mostly not needed, gets
    just its ranges of the packs, checked against the block's fingerprint before writing."""
    written = 0
    # An image file keeps the point's holes as holes: cheaper, and a later delta restore
    # then skips them without reading.
    can_punch = not is_device
    for b, parts in units:
        start, end = b * block, min((b + 1) * block, capacity)
        pos = start
        spans = [(p.offset, p.length) for p in parts if p.kind == EXTENT_DATA]
        for offset, length in [*spans, (end, 0)]:
            if offset > pos and not (can_punch and _punch(fd, pos, offset - pos)):
                can_punch = False
                os.pwrite(fd, bytes(offset - pos), pos)
            pos = offset + length
        written += end - start
    entries: dict[bytes, PieceEntry] = {}
    needed: dict[bytes, int] = {}
    for _b, parts in units:
        for p in parts:
            if p.kind != EXTENT_DATA:
                continue
            if p.piece_id not in entries:
                entry = repo.find_piece(p.piece_id)
                if entry is None:
                    raise MissingObject(
                        f"piece {p.piece_id.hex()[:16]} for volume offset {p.offset} "
                        "is not in the repository"
                    )
                entries[p.piece_id] = entry
            needed[p.piece_id] = needed.get(p.piece_id, 0) + p.length

    def by_ranges(p: Extent) -> bool:
        entry = entries[p.piece_id]
        return entry.codec == PIECE_RAW and 2 * needed[p.piece_id] <= entry.raw_size

    users: dict[bytes, list[Extent]] = {}
    ranged: list[tuple[int, list[Extent], bytes]] = []
    for b, parts in units:
        data: list[Extent] = [p for p in parts if p.kind == EXTENT_DATA]
        want = expected(b) if data and not repo.sealer.encrypted else None
        if want is not None and all(by_ranges(p) for p in data):
            ranged.append((b, data, want))
            continue
        for p in data:
            users.setdefault(p.piece_id, []).append(p)
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

    def fetch_ranges(run: list[tuple[int, list[Extent], bytes]]) -> None:
        if failure or cancelled():
            return
        try:
            _write_ranged(repo, fd, run, entries, block, capacity, hasher, tracker)
        except LaminaError as e:
            failure.append(e)

    with ContextThreadPool(repo.io_threads) as pool:
        done = [pool.submit(fetch, run) for run in pack_runs(entries[i] for i in users)]
        done += [pool.submit(fetch_ranges, run) for run in _range_runs(ranged, entries)]
        for future in done:
            future.result()
    if failure:
        raise failure[0]
    if cancelled():
        raise Cancelled("delta restore cancelled; the target holds a mix of both versions")
    return written, len(ranged)


def _spans(
    data: Sequence[Extent], entries: dict[bytes, PieceEntry]
) -> list[tuple[bytes, int, int]]:
    """Where each data extent's bytes sit: (pack, offset in the pack, length)."""
    out = []
    for p in data:
        entry = entries[p.piece_id]
        out.append((entry.pack_id, entry.offset + p.piece_offset, p.length))
    return out


def _range_runs(
    ranged: Sequence[tuple[int, list[Extent], bytes]], entries: dict[bytes, PieceEntry]
) -> list[list[tuple[int, list[Extent], bytes]]]:
    """Units whose bytes follow each other in one pack, grouped: one GET serves a group."""
    runs: list[list[tuple[int, list[Extent], bytes]]] = []
    run_end: tuple[bytes, int] | None = None
    run_size = 0
    keyed = sorted(ranged, key=lambda u: _spans(u[1], entries)[0][:2])
    for unit in keyed:
        spans = _spans(unit[1], entries)
        size = sum(length for _, _, length in spans)
        joined = all(a[0] == b[0] and a[1] + a[2] == b[1] for a, b in itertools.pairwise(spans))
        if runs and run_end == spans[0][:2] and run_size + size <= RANGE_RUN:
            runs[-1].append(unit)
            run_size += size
        else:
            runs.append([unit])
            run_size = size
        run_end = (spans[-1][0], spans[-1][1] + spans[-1][2]) if joined else None
    return runs


def _write_ranged(
    repo: Repository,
    fd: int,
    run: Sequence[tuple[int, list[Extent], bytes]],
    entries: dict[bytes, PieceEntry],
    block: int,
    capacity: int,
    hasher: Fingerprinter,
    tracker: ProgressTracker,
) -> None:
    """Fetch a run of units by their ranges of the packs, check each against its block's
    fingerprint (the hash of the whole block as the point reads it), then write it."""
    wanted = sorted({span for _, data, _ in run for span in _spans(data, entries)})
    gets: list[tuple[bytes, int, int]] = []  # contiguous spans merged into one GET each
    for pack_id, offset, length in wanted:
        last = gets[-1] if gets else None
        if last is not None and last[0] == pack_id and last[1] + last[2] >= offset:
            gets[-1] = (pack_id, last[1], max(last[2], offset + length - last[1]))
        else:
            gets.append((pack_id, offset, length))
    fetched = [(get, repo.read_stored_span(*get)) for get in gets]

    def stored(pack_id: bytes, offset: int, length: int) -> memoryview:
        for (pid, at, size), blob in fetched:
            if pid == pack_id and at <= offset and offset + length <= at + size:
                return memoryview(blob)[offset - at : offset - at + length]
        raise AssertionError("a span outside what was fetched")

    for b, data, want in run:
        start = b * block
        content = bytearray(min(block, capacity - start))
        pieces = [stored(*span) for span in _spans(data, entries)]
        for p, chunk in zip(data, pieces, strict=True):
            content[p.offset - start : p.offset - start + p.length] = chunk
        if hasher.of(content) != want:
            raise CorruptObject(
                f"pack {entries[data[0].piece_id].pack_id.hex()[:16]} fails the fingerprint "
                f"of volume offset {start} (corrupt)"
            )
        for p, chunk in zip(data, pieces, strict=True):
            os.pwrite(fd, chunk, p.offset)
            tracker.add(p.length)
