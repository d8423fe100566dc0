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
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import (
    Cancelled,
    CorruptObject,
    LaminaError,
    MissingObject,
    SourceError,
    UsageError,
)
from ..names import check_name, shown
from ..progress import ProgressCallback, ProgressTracker
from . import format as fmt
from . import restore_record
from .extents import (
    Range,
    allocated_ranges,
    checked_ranges,
    image_digest,
    resolve_chain,
    split_on_grid,
    subtract,
)
from .fingerprints import UNKNOWN, Collector, Fingerprints, resolve_fingerprints
from .format import EXTENT_DATA, EXTENT_UNALLOCATED, EXTENT_ZERO, Extent, PieceEntry
from .repository import Point, Repository, new_point_id, pack_runs, pack_size_for, utc_now
from .safewrite import ImageTarget, TargetError
from .storage.metering import ContextThreadPool

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


@dataclass(frozen=True)
class RestoreReport:
    """What a restore wrote: every piece checked against its id, then the image digest."""

    point: str
    target: str
    capacity: int
    bytes_written: int
    pieces: int
    image_digest: str
    requests: int
    duration_seconds: float
    digest_checked: bool = True  # a restore fails rather than end with a digest unchecked

    @property
    def rate(self) -> float:
        return self.bytes_written / self.duration_seconds if self.duration_seconds else 0.0

    def as_json(self) -> dict[str, Any]:
        """What `lamina restore --json` prints: every field but ``digest_checked`` (always)."""
        values = asdict(self)
        del values["digest_checked"]
        return values


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
        listed = repo.list_points() if request.parent == "auto" else []
        parent, notes = _choose_parent(repo, request, capacity, listed)
        mode, ranges, origin = _plan(request, parent, fd, capacity, notes, repo)
        # The parent's chain, once: every manifest was just listed under this backup's lock.
        chain = repo.chain_of(parent, listed) if parent is not None else []
        parent_maps = repo.load_maps(chain)
        scan: _Scan | None = None
        unallocated: list[Extent] = []
        if mode == "scan-incremental":
            assert parent is not None
            ranges = list(ranges)  # read twice: for the holes and for the data
            scan, unallocated = _scan_baseline(repo, chain, parent_maps, ranges)
        _advise_sequential(fd)
        if isinstance(ranges, list):
            total: int | None = sum(r[1] for r in ranges)
        else:
            tracker.set_phase("listing ranges")
            ranges, total = _with_total(ranges, cancelled)
        tracker.set_phase("backing up", total)
        extents, stats, found = _run_pipeline(
            repo, fd, ranges, capacity, scan, tracker, cancelled, threads, total
        )
        if unallocated:
            extents = sorted(extents + unallocated, key=lambda e: e.offset)
        fingerprints = None
        if found is not None:
            fingerprints = _finish_fingerprints(
                repo, fd, capacity, found, unallocated, mask=mode != "changed-ranges"
            )
        if cancelled():
            raise Cancelled("backup cancelled; no restore point was written")
        tracker.set_phase("committing")
        point_id = new_point_id()
        resolved = resolve_chain([extents, *parent_maps])
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
        point = repo.save_point(manifest, extents, fingerprints)
        tracker.finish(f"point {point_id}")
        return point
    finally:
        os.close(fd)


def _choose_parent(
    repo: Repository, request: BackupRequest, capacity: int, listed: Sequence[Point]
) -> tuple[Point | None, list[str]]:
    notes: list[str] = []
    if request.parent == "none":
        return None, notes
    if request.parent == "auto":
        same = [p for p in listed if p.volume == request.volume.as_dict()]
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
    request: BackupRequest,
    parent: Point | None,
    fd: int,
    capacity: int,
    notes: list[str],
    repo: Repository,
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
    if parent is not None:
        notes.append(
            "no changed-block ranges: read every allocated byte and stored only "
            + (
                f"the {repo.fingerprint_block // 1024} KiB blocks whose fingerprint differs"
                if repo.fingerprinter is not None
                else "grid cells whose hash differs"
            )
        )
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


@dataclass
class _Scan:
    """What a scan incremental compares the source with."""

    # The parent's whole-piece cells: offset -> (length, piece id) (the cell-hash fallback).
    cells: dict[int, tuple[int, bytes]]
    # The parent's resolved fingerprints (None: the repository keeps none).
    fingerprints: Fingerprints | None


def _scan_baseline(
    repo: Repository,
    chain: Sequence[Point],
    maps: Sequence[Sequence[Extent]],
    allocated: Sequence[Range],
) -> tuple[_Scan, list[Extent]]:
    """For a backup without changed ranges: what to compare with, and the data the parent had
    where the source now has holes (to be marked unallocated)."""
    resolved = resolve_chain(maps)
    cells = {
        e.offset: (e.length, e.piece_id)
        for e in resolved
        if e.kind == EXTENT_DATA and e.piece_offset == 0
    }
    parent_data = [(e.offset, e.length) for e in resolved if e.kind == EXTENT_DATA]
    gone = [Extent(o, n, EXTENT_UNALLOCATED) for o, n in subtract(parent_data, allocated)]
    fingerprints = None
    if repo.fingerprinter is not None:
        layers = repo.fingerprint_layers(chain)
        fingerprints = resolve_fingerprints(repo.fingerprint_block, layers)
    return _Scan(cells, fingerprints), gone


def _advise_sequential(fd: int) -> None:
    """Ask the kernel for aggressive read-ahead: a backup reads its ranges in order."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        try:
            advise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass


@dataclass
class _Unit:
    """What one worker made of one read: pieces, and the fingerprints of the blocks it saw."""

    pieces: list[_PieceResult] = field(default_factory=list)
    read: int = 0
    unchanged: int = 0
    fp_blocks: list[int] = field(default_factory=list)
    fp_hashes: list[bytes] = field(default_factory=list)
    partial: list[Range] = field(default_factory=list)  # blocks these ranges touch only in part


def _cells(ranges: Iterable[Range], grid: int) -> Iterator[list[Range]]:
    """Ranges cut on the grid, grouped by grid cell."""
    group: list[Range] = []
    cell = -1
    for offset, length in split_on_grid(ranges, grid):
        if offset // grid != cell and group:
            yield group
            group = []
        cell = offset // grid
        group.append((offset, length))
    if group:
        yield group


def _intersect(a: Sequence[Range], b: Sequence[Range]) -> list[Range]:
    """The parts of sorted, non-overlapping ``a`` that lie in sorted, non-overlapping ``b``."""
    out: list[Range] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][0] + a[i][1], b[j][0] + b[j][1])
        if start < end:
            out.append((start, end - start))
        if a[i][0] + a[i][1] < b[j][0] + b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _mask(buf: bytearray, base: int, keep: Sequence[Range]) -> None:
    """Zero the bytes of ``buf`` (which starts at volume offset ``base``) outside ``keep``:
    what a point reads there is zeros, whatever the source holds."""
    for offset, length in subtract([(base, len(buf))], keep):
        buf[offset - base : offset - base + length] = bytes(length)


def _read_exact(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise SourceError(
            f"short read from the source at offset {offset}: it shrank during the backup"
        )
    return data


def _run_pipeline(
    repo: Repository,
    fd: int,
    ranges: Iterable[Range],
    capacity: int,
    scan: _Scan | None,
    tracker: ProgressTracker,
    cancelled: CancelCheck,
    threads: int | None,
    planned_bytes: int | None,
) -> tuple[list[Extent], dict[str, Any], tuple[Collector, list[Range]] | None]:
    # As many hashing/compressing workers as cores (zstd and blake3 release the GIL); more
    # only adds pieces held in memory.
    workers = threads or max(2, min(8, os.cpu_count() or 2))
    zero_cache: dict[int, bytes] = {}
    this_backup: dict[bytes, PieceEntry] = {}
    fpr = repo.fingerprinter
    fb = repo.fingerprint_block
    collector = Collector(fb) if fpr is not None else None
    parent_cells = scan.cells if scan is not None else {}
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

    def zeros(length: int) -> bytes:
        zero = zero_cache.get(length)
        if zero is None:
            zero = zero_cache.setdefault(length, bytes(length))
        return zero

    def piece(offset: int, data: bytes) -> _PieceResult:
        length = len(data)
        if data == zeros(length):
            return _PieceResult(offset, length, EXTENT_ZERO)
        piece_id = repo.piece_id(data)
        cell = parent_cells.get(offset)
        if cell is not None and cell == (length, piece_id):
            return _PieceResult(offset, length, EXTENT_DATA, piece_id, unchanged=True)
        if piece_id in this_backup or piece_id in repo.index:
            return _PieceResult(offset, length, EXTENT_DATA, piece_id)
        blob, codec = repo.encode_piece(piece_id, data)
        return _PieceResult(offset, length, EXTENT_DATA, piece_id, blob, codec)

    def work(offset: int, length: int) -> _Unit:
        """One piece of a full or changed-ranges backup (or of a scan without fingerprints)."""
        data = _read_exact(fd, length, offset)
        result = piece(offset, data)
        unit = _Unit(
            [] if result.unchanged else [result], length, length if result.unchanged else 0
        )
        if fpr is not None:
            end = offset + length
            first = -(-offset // fb)
            last = end // fb if end < capacity else -(-end // fb)
            zero = result.kind == EXTENT_ZERO
            if not zero and last - first == 1 and first * fb == offset and length == fb:
                # A piece that is one whole block (a 64 KiB changed range): its id hashed it.
                known = fpr.of_whole_piece(result.piece_id)
                if known is not None:
                    unit.fp_blocks.append(first)
                    unit.fp_hashes.append(known)
                    return unit
            view = memoryview(data)
            for b in range(first, last):
                start, stop = b * fb - offset, min((b + 1) * fb, capacity) - offset
                unit.fp_blocks.append(b)
                unit.fp_hashes.append(fpr.zero(stop - start) if zero else fpr.of(view[start:stop]))
            if offset % fb or (end % fb and end < capacity):
                unit.partial.append((offset, length))
        return unit

    def scan_work(spans: list[Range]) -> _Unit:
        """One grid cell of a scan incremental: one read, a fingerprint per block, and pieces
        only for the blocks that differ from the parent."""
        assert fpr is not None and scan is not None and scan.fingerprints is not None
        lo = spans[0][0] // fb * fb
        end = spans[-1][0] + spans[-1][1]
        hi = min(-(-end // fb) * fb, capacity)
        data: bytes | bytearray = _read_exact(fd, hi - lo, lo)
        if sum(n for _, n in spans) != hi - lo:  # holes inside the read: zeros, whatever is there
            data = bytearray(data)
            _mask(data, lo, spans)
        view = memoryview(data)
        blocks: list[int] = []
        for offset, length in spans:
            for b in range(offset // fb, (offset + length - 1) // fb + 1):
                if not blocks or blocks[-1] != b:
                    blocks.append(b)
        unit = _Unit(read=sum(n for _, n in spans))
        changed: list[int] = []
        unknown: list[int] = []
        for b in blocks:
            start, stop = b * fb, min((b + 1) * fb, capacity)
            digest = fpr.of(view[start - lo : stop - lo])
            unit.fp_blocks.append(b)
            unit.fp_hashes.append(digest)
            expected = scan.fingerprints.lookup(b)
            if expected is None:  # no point of the chain has data here: it read as zeros
                expected = fpr.zero(stop - start)
            if expected == UNKNOWN:
                unknown.append(b)
            elif expected != digest:
                changed.append(b)
        if unknown:
            # The parent's point there predates fingerprints: compare whole pieces instead.
            same = set()
            for offset, length in spans:
                cell = parent_cells.get(offset)
                if cell is not None and cell == (
                    length,
                    repo.piece_id(view[offset - lo : offset - lo + length]),
                ):
                    same.add(offset)
            for b in unknown:
                start, stop = b * fb, (b + 1) * fb
                if any(o not in same for o, n in spans if o < stop and o + n > start):
                    changed.append(b)
            changed.sort()
        runs: list[Range] = []
        for b in changed:
            start, stop = b * fb, min((b + 1) * fb, capacity)
            if runs and runs[-1][0] + runs[-1][1] == start:
                runs[-1] = (runs[-1][0], stop - runs[-1][0])
            else:
                runs.append((start, stop - start))
        for offset, length in _intersect(spans, runs):
            unit.pieces.append(piece(offset, bytes(view[offset - lo : offset - lo + length])))
        unit.unchanged = unit.read - sum(r.length for r in unit.pieces)
        return unit

    extents: list[Extent] = []
    partial: list[Range] = []

    def take(unit: _Unit) -> None:
        stats["bytes_read"] += unit.read
        stats["bytes_unchanged"] += unit.unchanged
        if unit.unchanged:
            tracker.add(unit.unchanged, read=unit.unchanged)
        for result in unit.pieces:
            _take(result, writer, this_backup, extents, stats, tracker)
        if collector is not None:
            for b, digest in zip(unit.fp_blocks, unit.fp_hashes, strict=True):
                collector.add(b, digest)
            partial.extend(unit.partial)

    max_ahead = workers + 2
    by_block = fpr is not None and scan is not None and scan.fingerprints is not None
    with (
        ContextThreadPool(workers, thread_name_prefix="lamina-piece") as pool,
        ContextThreadPool(
            max(2, repo.io_threads // 2), thread_name_prefix="lamina-upload"
        ) as upload_pool,
    ):
        # Buffered and uploading packs hold at most two of the repository's packs' bytes.
        pack_size = pack_size_for(planned_bytes, repo.pack_size)
        writer = repo.new_pack_writer(
            upload_pool, max_in_flight=max(2, 2 * repo.pack_size // pack_size), pack_size=pack_size
        )
        pending: deque[Future[_Unit]] = deque()
        units: Iterator[Future[_Unit]]
        if by_block:
            units = (pool.submit(scan_work, spans) for spans in _cells(ranges, repo.grid_size))
        else:
            units = (pool.submit(work, o, n) for o, n in split_on_grid(ranges, repo.grid_size))
        try:
            for future in units:
                if cancelled():
                    raise Cancelled("backup cancelled; no restore point was written")
                pending.append(future)
                if len(pending) >= max_ahead:
                    take(pending.popleft().result())
            while pending:
                if cancelled():
                    raise Cancelled("backup cancelled; no restore point was written")
                take(pending.popleft().result())
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
    return extents, stats, (collector, partial) if collector is not None else None


def _finish_fingerprints(
    repo: Repository,
    fd: int,
    capacity: int,
    found: tuple[Collector, list[Range]],
    unallocated: Sequence[Extent],
    *,
    mask: bool,
) -> Fingerprints:
    """The point's fingerprints: those the pipeline computed, plus the blocks its extents
    touch only in part (read from the source now). With ``mask``, bytes of such a block
    outside the point's own ranges are zeros in what the point reads (full and scan
    backups); otherwise they are the parent's, which the source still holds (changed ranges).
    """
    collector, partial = found
    fpr = repo.fingerprinter
    assert fpr is not None
    fb = fpr.block_size
    covered: dict[int, list[Range]] = {}
    for offset, length in partial:
        for b in (offset // fb, (offset + length - 1) // fb):
            if b not in collector:
                part = covered.setdefault(b, [])
                if not part or part[-1] != (offset, length):
                    part.append((offset, length))

    def block_fingerprint(b: int) -> bytes:
        start, stop = b * fb, min((b + 1) * fb, capacity)
        buf = bytearray(_read_exact(fd, stop - start, start))
        if mask:
            _mask(buf, start, covered[b])
        return fpr.of(buf)

    blocks = sorted(covered)
    if len(blocks) > 1:
        with ContextThreadPool(min(8, len(blocks))) as pool:
            digests = list(pool.map(block_fingerprint, blocks))
    else:
        digests = [block_fingerprint(b) for b in blocks]
    for b, digest in zip(blocks, digests, strict=True):
        collector.add(b, digest)
    # Blocks a scan marks unallocated that no allocated byte touches: all zeros now.
    for e in unallocated:
        for b in range(e.offset // fb, (e.end - 1) // fb + 1):
            if b not in collector:
                collector.add(b, fpr.zero(fpr.block_length(b, capacity)))
    return collector.finish()


def _take(
    r: _PieceResult,
    writer: Any,
    this_backup: dict[bytes, PieceEntry],
    extents: list[Extent],
    stats: dict[str, Any],
    tracker: ProgressTracker,
) -> None:
    if r.kind == EXTENT_ZERO:
        stats["bytes_zero"] += r.length
        if extents and extents[-1].kind == EXTENT_ZERO and extents[-1].end == r.offset:
            last = extents.pop()
            extents.append(Extent(last.offset, last.length + r.length, EXTENT_ZERO))
        else:
            extents.append(Extent(r.offset, r.length, EXTENT_ZERO))
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
) -> RestoreReport:
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

        with ContextThreadPool(workers, thread_name_prefix="lamina-restore") as pool:
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
        if image.committed is not None:  # a later --delta onto it can skip reading it
            restore_record.record(repo.id, point.id, image.path, image.committed)
    except OSError as e:
        raise TargetError(f"cannot write {image.path}: {e.strerror or e}") from None
    finally:
        if direct is not None:
            direct.close()
        image.discard()  # after a commit: nothing left to remove
    result = RestoreReport(
        point=point.id,
        target=target,
        capacity=point.capacity,
        bytes_written=total,
        pieces=len(users),
        image_digest=digest,
        requests=repo.counter.requests - requests_before,
        duration_seconds=round(time.monotonic() - started, 3),
    )
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
    maps_checked: set[str] = set()
    tracker.set_phase("checking maps", len(points), unit="points")
    for point in points:
        if cancelled():
            raise Cancelled("verify cancelled")
        report.points += 1
        try:
            chain = repo.chain(point)
            # The repository's own maps, never the local cache's: verify checks what is stored.
            for link in chain:
                if link.map_key not in maps_checked:
                    repo.check_stored_map(link)
                    maps_checked.add(link.map_key)
            resolved = resolve_chain(repo.load_maps(chain))
        except LaminaError as e:
            report.problems.append(f"point {point.id}: {e}")
            continue
        if image_digest(point.capacity, resolved) != point.manifest.get("image_digest"):
            report.problems.append(f"point {point.id}: image digest does not match its extent maps")
        try:
            repo.check_stored_fingerprints(point)
        except LaminaError as e:  # backups would compare whole cells instead: worth knowing
            report.problems.append(f"point {point.id}: {e}")
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

        with ContextThreadPool(repo.io_threads) as pool:
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
