"""Backup, restore and verify: the engine under the service layer."""

from __future__ import annotations

import itertools
import mmap
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import format as fmt
from .errors import (
    Cancelled,
    CorruptObject,
    LaminaError,
    MissingObject,
    SourceError,
    UsageError,
)
from .extents import Range, allocated_ranges, checked_ranges, image_digest, split_on_grid, subtract
from .format import EXTENT_DATA, EXTENT_UNALLOCATED, EXTENT_ZERO, Extent, PieceEntry
from .names import check_name, shown
from .progress import ProgressCallback, ProgressTracker
from .repository import Point, Repository, new_point_id, pack_runs, utc_now
from .safewrite import ImageTarget, TargetError

RangeSource = Callable[[], Iterable[Range]]


@dataclass(frozen=True)
class VolumeRef:
    """Who a volume is: the same identity across backups makes a chain."""

    cluster: str
    namespace: str
    name: str

    @classmethod
    def of(cls, cluster: str, namespace: str, name: str) -> VolumeRef:
        """A volume named by its parts, each checked to be one safe path component."""
        return cls(cluster, namespace, name).checked()

    @classmethod
    def parse(cls, text: str) -> VolumeRef:
        """'NAME', 'NAMESPACE/NAME' or 'CLUSTER/NAMESPACE/NAME', every part a valid name."""
        parts = text.strip().split("/")
        if len(parts) > 3 or (len(parts) > 1 and not all(parts)):
            raise UsageError(
                f"not a volume name: '{shown(text)}' (use NAME, NS/NAME or CLUSTER/NS/NAME)"
            )
        if len(parts) == 1:
            return cls.of("local", "default", parts[0])
        if len(parts) == 2:
            return cls.of("local", parts[0], parts[1])
        return cls.of(parts[0], parts[1], parts[2])

    def checked(self) -> VolumeRef:
        """This volume, when its cluster, namespace and name are all valid names."""
        check_name(self.cluster, "cluster name")
        check_name(self.namespace, "namespace")
        check_name(self.name, "volume name")
        return self

    def as_dict(self) -> dict[str, str]:
        return {"cluster": self.cluster, "namespace": self.namespace, "name": self.name}

    def __str__(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.name}"


@dataclass
class BackupRequest:
    source: str
    volume: VolumeRef
    parent: str = "auto"  # "auto", "none" or a point id
    # Byte ranges changed since the parent (CBT delta or a ranges file). None: not known.
    changed_ranges: RangeSource | None = None
    changed_ranges_origin: str = ""
    # Allocated byte ranges for a full backup (CBT allocated). None: ask the source's holes.
    allocated_ranges: RangeSource | None = None
    allocated_ranges_origin: str = ""
    capacity: int | None = None  # None: the size of the source
    snapshot_handle: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class VerifyReport:
    points: int = 0
    pieces: int = 0
    bytes_checked: int = 0
    deep: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


CancelCheck = Callable[[], bool]


def _never() -> bool:
    return False


# ------------------------------------------------------------------------------- backup


@dataclass
class _PieceResult:
    offset: int
    length: int
    kind: int  # EXTENT_DATA or EXTENT_ZERO
    piece_id: bytes = fmt.NO_PIECE
    blob: bytes | None = None  # None: known to the repository already (or zero)
    codec: int = 0
    unchanged: bool = False


def _source_capacity(fd: int, path: str) -> int:
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    raise SourceError(f"{path} is neither a regular file nor a block device")


def backup(
    repo: Repository,
    request: BackupRequest,
    *,
    progress: ProgressCallback | None = None,
    cancelled: CancelCheck = _never,
    threads: int | None = None,
    before_commit: Callable[[], None] | None = None,
) -> Point:
    """Back up ``request.source`` and return the new restore point.

    ``before_commit`` runs just before the manifest is written (the service checks there
    that its lock is still held, so every piece deduplicated against still exists).

    Nothing becomes visible until the manifest is written, which is the last step: a crash or a
    cancel at any moment leaves the repository with every earlier point intact.
    """
    request.volume.checked()  # its parts become folders of the FUSE view
    started = time.monotonic()
    requests_before = repo.counter.requests
    tracker = ProgressTracker(progress)
    tracker.set_phase("preparing")
    try:
        fd = os.open(request.source, os.O_RDONLY)
    except FileNotFoundError:
        raise SourceError(f"source {request.source} does not exist") from None
    except OSError as e:
        raise SourceError(f"cannot open source {request.source}: {e.strerror}") from None
    try:
        source_size = _source_capacity(fd, request.source)
        capacity = request.capacity if request.capacity is not None else source_size
        if source_size < capacity:
            raise SourceError(
                f"source {request.source} has {source_size} bytes, less than the volume capacity {capacity}"
            )
        repo.load_index()
        parent, notes = _choose_parent(repo, request, capacity)
        mode, ranges, origin = _plan(request, parent, fd, capacity, notes)
        parent_cells: dict[int, tuple[int, bytes]] = {}
        unallocated: list[Extent] = []
        if mode == "scan-incremental":
            assert parent is not None
            parent_cells, unallocated = _scan_baseline(repo, parent, fd, capacity)
        if isinstance(ranges, list):
            total: int | None = sum(r[1] for r in ranges)
        else:
            tracker.set_phase("listing ranges")
            ranges, total = _with_total(ranges, cancelled)
        tracker.set_phase("backing up", total)
        extents, stats = _run_pipeline(
            repo, fd, ranges, capacity, parent_cells, tracker, cancelled, threads
        )
        if unallocated:
            extents = sorted(extents + unallocated, key=lambda e: e.offset)
        if cancelled():
            raise Cancelled("backup cancelled; no restore point was written")
        tracker.set_phase("committing")
        point_id = new_point_id()
        resolved = repo.resolve_with(parent, extents) if parent else extents
        digest = image_digest(capacity, resolved)
        manifest: dict[str, Any] = {
            "format": fmt.FORMAT_VERSION,
            "id": point_id,
            "parent": parent.id if parent else None,
            "kind": "incremental" if parent else "full",
            "volume": request.volume.as_dict(),
            "capacity": capacity,
            "grid_size": repo.grid_size,
            "snapshot_handle": request.snapshot_handle,
            "created": utc_now(),
            "source": {"path": os.path.abspath(request.source), "ranges": origin, "mode": mode},
            "notes": notes,
            "labels": dict(request.labels),
            "image_digest": digest,
            "stats": {},
        }
        stats["requests"] = repo.counter.requests - requests_before + 2
        stats["duration_seconds"] = round(time.monotonic() - started, 3)
        manifest["stats"] = stats
        if before_commit is not None:
            before_commit()
        point = repo.save_point(manifest, extents)
        tracker.finish(f"point {point_id}")
        return point
    finally:
        os.close(fd)


def _choose_parent(
    repo: Repository, request: BackupRequest, capacity: int
) -> tuple[Point | None, list[str]]:
    notes: list[str] = []
    if request.parent == "none":
        return None, notes
    if request.parent == "auto":
        same = [p for p in repo.list_points() if p.volume == request.volume.as_dict()]
        if not same:
            notes.append("full backup: no earlier point of this volume")
            return None, notes
        parent = same[-1]
    else:
        parent = repo.find_point(request.parent)
        if parent.volume != request.volume.as_dict():
            raise UsageError(
                f"point {parent.id} belongs to volume {parent.volume_key}, not {request.volume}"
            )
    if parent.capacity != capacity:
        notes.append(
            f"full backup: capacity changed from {parent.capacity} to {capacity} bytes since point {parent.id}"
        )
        return None, notes
    return parent, notes


def _plan(
    request: BackupRequest, parent: Point | None, fd: int, capacity: int, notes: list[str]
) -> tuple[str, Iterable[Range], str]:
    """Which ranges to read: (mode, ranges, where the ranges came from)."""
    if parent is not None and request.changed_ranges is not None:
        return (
            "changed-ranges",
            checked_ranges(request.changed_ranges(), capacity),
            request.changed_ranges_origin or "changed ranges",
        )
    if parent is None and request.changed_ranges is not None and not notes:
        notes.append("full backup: no parent point to apply the changed ranges to")
    if request.allocated_ranges is not None:
        mode = "full" if parent is None else "scan-incremental"
        return (
            mode,
            checked_ranges(request.allocated_ranges(), capacity, "allocated ranges"),
            request.allocated_ranges_origin or "allocated ranges",
        )
    ranges = list(allocated_ranges(fd, capacity))
    if parent is None:
        return "full", ranges, "allocated (SEEK_DATA/SEEK_HOLE)"
    notes.append(
        "no changed-block ranges: read every allocated byte and stored only grid cells whose hash differs"
    )
    return "scan-incremental", ranges, "allocated (SEEK_DATA/SEEK_HOLE), compared with the parent"


# A streamed range list (CBT) is read ahead up to this many ranges, about 12 MB, so that
# the backup knows its total (percentage, bar, ETA); a longer list streams without one.
RANGES_FOR_A_TOTAL = 100_000


def _with_total(
    ranges: Iterable[Range], cancelled: CancelCheck = _never
) -> tuple[Iterable[Range], int | None]:
    """The ranges again, and their total length when the list is short enough to hold."""
    iterator = iter(ranges)
    head: list[Range] = []
    for r in itertools.islice(iterator, RANGES_FOR_A_TOTAL):
        head.append(r)
        if len(head) % 1024 == 0 and cancelled():
            raise Cancelled("backup cancelled; no restore point was written")
    if len(head) < RANGES_FOR_A_TOTAL:
        return head, sum(r[1] for r in head)
    return itertools.chain(head, iterator), None


def _scan_baseline(
    repo: Repository, parent: Point, fd: int, capacity: int
) -> tuple[dict[int, tuple[int, bytes]], list[Extent]]:
    """For a backup without changed ranges: the parent's whole-piece cells, and the data the
    parent had where the source now has holes (to be marked unallocated)."""
    resolved = repo.resolve(parent)
    cells = {
        e.offset: (e.length, e.piece_id)
        for e in resolved
        if e.kind == EXTENT_DATA and e.piece_offset == 0
    }
    parent_data = [(e.offset, e.length) for e in resolved if e.kind == EXTENT_DATA]
    allocated = list(allocated_ranges(fd, capacity))
    gone = [Extent(o, n, EXTENT_UNALLOCATED) for o, n in subtract(parent_data, allocated)]
    return cells, gone


def _run_pipeline(
    repo: Repository,
    fd: int,
    ranges: Iterable[Range],
    capacity: int,
    parent_cells: dict[int, tuple[int, bytes]],
    tracker: ProgressTracker,
    cancelled: CancelCheck,
    threads: int | None,
) -> tuple[list[Extent], dict[str, Any]]:
    # As many hashing/compressing workers as cores (zstd and blake3 release the GIL); more
    # only adds pieces held in memory.
    workers = threads or max(2, min(8, os.cpu_count() or 2))
    zero_cache: dict[int, bytes] = {}
    this_backup: dict[bytes, PieceEntry] = {}
    stats = {
        "bytes_read": 0,
        "bytes_new": 0,
        "bytes_stored": 0,
        "bytes_deduplicated": 0,
        "bytes_zero": 0,
        "bytes_unchanged": 0,
        "pieces_new": 0,
        "pieces_deduplicated": 0,
        "packs_written": 0,
        "extents": 0,
    }

    def work(offset: int, length: int) -> _PieceResult:
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise SourceError(
                f"short read from the source at offset {offset}: it shrank during the backup"
            )
        zero = zero_cache.get(length)
        if zero is None:
            zero = zero_cache.setdefault(length, bytes(length))
        if data == zero:
            return _PieceResult(offset, length, EXTENT_ZERO)
        piece_id = repo.piece_id(data)
        cell = parent_cells.get(offset)
        if cell is not None and cell == (length, piece_id):
            return _PieceResult(offset, length, EXTENT_DATA, piece_id, unchanged=True)
        if piece_id in this_backup or piece_id in repo.index:
            return _PieceResult(offset, length, EXTENT_DATA, piece_id)
        blob, codec = repo.encode_piece(piece_id, data)
        return _PieceResult(offset, length, EXTENT_DATA, piece_id, blob, codec)

    extents: list[Extent] = []
    max_ahead = workers + 2
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="lamina-piece") as pool,
        ThreadPoolExecutor(
            max(2, repo.io_threads // 2), thread_name_prefix="lamina-upload"
        ) as upload_pool,
    ):
        writer = repo.new_pack_writer(upload_pool, max_in_flight=2)
        pending: deque[Future[_PieceResult]] = deque()
        try:
            for offset, length in split_on_grid(ranges, repo.grid_size):
                if cancelled():
                    raise Cancelled("backup cancelled; no restore point was written")
                pending.append(pool.submit(work, offset, length))
                if len(pending) >= max_ahead:
                    _take(pending.popleft().result(), writer, this_backup, extents, stats, tracker)
            while pending:
                if cancelled():
                    raise Cancelled("backup cancelled; no restore point was written")
                _take(pending.popleft().result(), writer, this_backup, extents, stats, tracker)
            written = writer.finish()
        except BaseException:
            for f in pending:
                f.cancel()
            writer.abort()
            raise
    stats["packs_written"] = writer.packs_written
    stats["bytes_uploaded"] = writer.bytes_written
    if written:
        repo.write_index_segment(written)
        for entry in written:
            repo.index.add(entry)
    stats["extents"] = len(extents)
    return extents, stats


def _take(
    r: _PieceResult,
    writer: Any,
    this_backup: dict[bytes, PieceEntry],
    extents: list[Extent],
    stats: dict[str, Any],
    tracker: ProgressTracker,
) -> None:
    stats["bytes_read"] += r.length
    if r.kind == EXTENT_ZERO:
        stats["bytes_zero"] += r.length
        if extents and extents[-1].kind == EXTENT_ZERO and extents[-1].end == r.offset:
            last = extents.pop()
            extents.append(Extent(last.offset, last.length + r.length, EXTENT_ZERO))
        else:
            extents.append(Extent(r.offset, r.length, EXTENT_ZERO))
        tracker.add(r.length, read=r.length)
        return
    if r.unchanged:
        stats["bytes_unchanged"] += r.length
        tracker.add(r.length, read=r.length)
        return
    extents.append(Extent(r.offset, r.length, EXTENT_DATA, r.piece_id, 0))
    if r.blob is None or r.piece_id in this_backup:
        stats["bytes_deduplicated"] += r.length
        stats["pieces_deduplicated"] += 1
        tracker.add(r.length, deduplicated=r.length, read=r.length)
        return
    this_backup[r.piece_id] = writer.add(r.piece_id, r.blob, r.length, r.codec)
    stats["bytes_new"] += r.length
    stats["bytes_stored"] += len(r.blob)
    stats["pieces_new"] += 1
    tracker.add(r.length, stored=len(r.blob), read=r.length)


# ------------------------------------------------------------------------------- restore


def _plan_reads(
    repo: Repository, resolved: Sequence[Extent]
) -> tuple[list[list[PieceEntry]], dict[bytes, list[Extent]]]:
    """The pieces a map needs, grouped into runs read with one GET each, and their users."""
    users: dict[bytes, list[Extent]] = {}
    for e in resolved:
        if e.kind == EXTENT_DATA:
            users.setdefault(e.piece_id, []).append(e)
    entries: list[PieceEntry] = []
    for piece_id, exts in users.items():
        entry = repo.find_piece(piece_id)
        if entry is None:
            raise MissingObject(
                f"piece {piece_id.hex()[:16]} for volume offset {exts[0].offset} is not in the repository"
            )
        entries.append(entry)
    return pack_runs(entries), users


def restore(
    repo: Repository,
    point: Point,
    target: str,
    *,
    overwrite: bool = False,
    within: Sequence[str] = (),
    progress: ProgressCallback | None = None,
    cancelled: CancelCheck = _never,
    threads: int | None = None,
) -> dict[str, Any]:
    """Restore ``point`` to an image file or a block device, checking every piece and the digest.

    The target is opened through backend/safewrite.py (``within``: the only folders it may be
    in, opened without following symlinks); a failed restore leaves no partial file.
    """
    tracker = ProgressTracker(progress)
    tracker.set_phase("resolving chain")
    started = time.monotonic()
    requests_before = repo.counter.requests
    resolved = repo.resolve(point)
    digest = image_digest(point.capacity, resolved)
    if digest != point.manifest.get("image_digest"):
        raise CorruptObject(
            f"the resolved extent map of point {point.id} does not match its recorded image digest"
        )
    repo.load_index()
    runs, users = _plan_reads(repo, resolved)
    total = sum(e.length for e in resolved if e.kind == EXTENT_DATA)

    image = ImageTarget.open(target, capacity=point.capacity, overwrite=overwrite, within=within)
    fd = image.fd
    direct: _DirectWriter | None = None
    try:
        if image.is_device:
            _zero_gaps(fd, resolved, point.capacity, cancelled)
            os.fsync(fd)  # gaps on disk before data goes around the page cache
        direct = _DirectWriter.open(image.fd, resolved)
        tracker.set_phase("restoring", total)
        workers = threads or repo.io_threads
        failure: list[LaminaError] = []
        lock = threading.Lock()

        def fetch(run: list[PieceEntry]) -> None:
            if failure or cancelled():
                return
            results = repo.read_pack_run(run)
            for entry, data in zip(run, results, strict=True):
                if isinstance(data, LaminaError):
                    offset = users[entry.piece_id][0].offset
                    with lock:
                        failure.append(type(data)(f"{data} (volume offset {offset})"))
                    return
                tracker.add(read=len(data))  # read from the repository, once per piece
                for e in users[entry.piece_id]:
                    chunk = memoryview(data)[e.piece_offset : e.piece_offset + e.length]
                    if direct is not None:
                        direct.write(chunk, e.offset)
                    else:
                        _pwrite_all(fd, chunk, e.offset)
                    tracker.add(e.length)

        with ThreadPoolExecutor(workers, thread_name_prefix="lamina-restore") as pool:
            for f in [pool.submit(fetch, run) for run in runs]:
                f.result()
        if cancelled():
            raise Cancelled("restore cancelled")
        if failure:
            raise failure[0]
        if direct is not None:
            direct.sync()
            direct.close()
            direct = None
        image.commit()
    except OSError as e:
        raise TargetError(f"cannot write {image.path}: {e.strerror or e}") from None
    finally:
        if direct is not None:
            direct.close()
        image.discard()  # after a commit: nothing left to remove
    result = {
        "point": point.id,
        "target": target,
        "capacity": point.capacity,
        "bytes_written": total,
        "image_digest": digest,
        "requests": repo.counter.requests - requests_before,
        "duration_seconds": round(time.monotonic() - started, 3),
    }
    tracker.finish(f"restored {point.id}")
    return result


class _DirectWriter:
    """Writes around the page cache (O_DIRECT) when every data extent is 4 KiB-aligned.

    A restore writes each byte once and never reads it back: through the page cache it
    costs a memory page per 4 KiB (slow on a cold VM, and it evicts a node's working set).
    Direct I/O needs aligned buffers, so each thread copies into its own mmap'd buffer.
    Aligned or not is decided for the whole restore: mixing direct and cached writes in one
    page could let a stale cached page overwrite direct-written data.
    """

    ALIGN = 4096

    def __init__(self, fd: int, buffer_size: int) -> None:
        self.fd = fd
        self.buffer_size = buffer_size
        self._local = threading.local()

    @classmethod
    def open(cls, target_fd: int, resolved: Sequence[Extent]) -> _DirectWriter | None:
        data = [e for e in resolved if e.kind == EXTENT_DATA]
        if not data or any(e.offset % cls.ALIGN or e.length % cls.ALIGN for e in data):
            return None
        try:
            # The file already open, reopened by descriptor: a path could be swapped by now.
            fd = os.open(f"/proc/self/fd/{target_fd}", os.O_WRONLY | getattr(os, "O_DIRECT", 0))
        except OSError:  # tmpfs and some others refuse O_DIRECT: write through the cache
            return None
        return cls(fd, max(e.length for e in data))

    def write(self, chunk: memoryview, offset: int) -> None:
        buf = getattr(self._local, "buffer", None)
        if buf is None:
            buf = self._local.buffer = mmap.mmap(-1, self.buffer_size)
        n = len(chunk)
        buf[:n] = chunk
        _pwrite_all(self.fd, memoryview(buf)[:n], offset)

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def _zero_gaps(fd: int, resolved: Sequence[Extent], capacity: int, cancelled: CancelCheck) -> None:
    """A device is not sparse: write zeros wherever the map has no data."""
    data = [(e.offset, e.length) for e in resolved if e.kind == EXTENT_DATA]
    zeros = bytes(4 * 1024 * 1024)
    for offset, length in subtract([(0, capacity)], data):
        while length > 0:
            if cancelled():
                raise Cancelled("restore cancelled")
            n = min(length, len(zeros))
            _pwrite_all(fd, memoryview(zeros)[:n], offset)
            offset += n
            length -= n


# ------------------------------------------------------------------------------- verify


def verify(
    repo: Repository,
    points: Sequence[Point],
    *,
    deep: bool = False,
    progress: ProgressCallback | None = None,
    cancelled: CancelCheck = _never,
) -> VerifyReport:
    """Check that every object the points reference exists; with ``deep``, re-read every piece."""
    tracker = ProgressTracker(progress)
    report = VerifyReport(deep=deep)
    tracker.set_phase("loading index")
    repo.load_index()
    packs = {pack_id: size for pack_id, size in repo.list_packs()}
    needed: dict[bytes, list[tuple[str, int]]] = {}
    tracker.set_phase("checking maps", len(points), unit="points")
    for point in points:
        if cancelled():
            raise Cancelled("verify cancelled")
        report.points += 1
        try:
            resolved = repo.resolve(point)
        except LaminaError as e:
            report.problems.append(f"point {point.id}: {e}")
            continue
        if image_digest(point.capacity, resolved) != point.manifest.get("image_digest"):
            report.problems.append(f"point {point.id}: image digest does not match its extent maps")
        for extent in resolved:
            if extent.kind == EXTENT_DATA:
                needed.setdefault(extent.piece_id, []).append((point.id, extent.offset))
        tracker.add(1)
    entries: list[PieceEntry] = []
    repo.refresh_index()

    def name_every_point(piece_id: bytes, problem: str) -> list[str]:
        """One line per point that reads the piece: every affected point is named."""
        by_point: dict[str, list[int]] = {}
        for point_id, offset in needed[piece_id]:
            by_point.setdefault(point_id, []).append(offset)
        lines = []
        for point_id, offsets in by_point.items():
            more = f" and {len(offsets) - 1} more" if len(offsets) > 1 else ""
            lines.append(f"point {point_id}: {problem} (volume offset {offsets[0]}{more})")
        return lines

    for piece_id in needed:
        entry = repo.index.get(piece_id)
        if entry is None:
            report.problems += name_every_point(
                piece_id, f"piece {piece_id.hex()[:16]} is not in the index"
            )
            continue
        size = packs.get(entry.pack_id)
        if size is None:
            report.problems += name_every_point(piece_id, f"pack {entry.pack_id.hex()} is missing")
            continue
        if entry.offset + entry.stored_size > size:
            report.problems += name_every_point(
                piece_id, f"pack {entry.pack_id.hex()} is truncated"
            )
            continue
        entries.append(entry)
    report.pieces = len(needed)
    if deep and entries:
        runs = pack_runs(entries)
        tracker.set_phase("reading pieces", sum(en.raw_size for en in entries))
        problems: list[str] = []

        def check(run: list[PieceEntry]) -> None:
            if cancelled():
                return
            for entry, data in zip(run, repo.read_pack_run(run), strict=True):
                if isinstance(data, LaminaError):
                    problems.extend(name_every_point(entry.piece_id, str(data)))
                tracker.add(entry.raw_size, read=entry.raw_size)

        with ThreadPoolExecutor(repo.io_threads) as pool:
            list(pool.map(check, runs))
        if cancelled():
            raise Cancelled("verify cancelled")
        report.problems.extend(sorted(problems))
        report.bytes_checked = sum(en.raw_size for en in entries)
    tracker.finish("verify clean" if report.ok else f"{len(report.problems)} problems")
    return report


def iter_ranges_json(items: Iterable[Any], what: str) -> Iterator[Range]:
    """Ranges from parsed JSON: a list of {"byte_offset", "size_bytes"} objects."""
    for i, item in enumerate(items):
        try:
            offset, size = item["byte_offset"], item["size_bytes"]
        except (TypeError, KeyError):
            raise UsageError(f"{what}: entry {i} needs byte_offset and size_bytes") from None
        if (
            isinstance(offset, bool)
            or isinstance(size, bool)
            or not isinstance(offset, int)
            or not isinstance(size, int)
        ):
            raise UsageError(f"{what}: entry {i} has non-integer byte_offset or size_bytes")
        yield offset, size
