"""Copy restore points, with their chains, from one repository to another.

Only what the destination lacks moves. Where both repositories name pieces the same way
(both unencrypted, or the same keys), use the same compression and a grid at least as
coarse, sealed blobs move as they are: no recompression, same piece ids, same maps. Otherwise
every piece is opened and checked on the source, then re-encoded (re-cut on a finer grid,
recompressed, re-sealed, renamed under the destination's identity hash) and the maps are
rewritten; the image digest then changes with the ids, and the manifest keeps the first
repository's digest under ``origin`` (docs/copy.md).

A point is written to the destination in the order a backup writes it (packs, index
segment, map, manifest last) and only after every piece its resolved map needs is in the
destination's index, so a crash at any moment leaves debris at worst, and a rerun moves
only what is still missing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import Cancelled, CorruptObject, LaminaError, MissingObject, UsageError
from ..progress import ProgressCallback, ProgressTracker
from .extents import image_digest, resolve_chain, split_on_grid
from .format import EXTENT_DATA, Extent, PieceEntry
from .repository import Point, Repository, pack_key, pack_runs, utc_now
from .storage import ObjectNotFound, ShortRead
from .storage.metering import ContextThreadPool

CancelCheck = Callable[[], bool]

# A unit of the destination: (source piece id, offset in it, length).
_Unit = tuple[bytes, int, int]


@dataclass
class CopyReport:
    """What a copy did: points written, points the destination already had, bytes moved."""

    source: str
    destination: str
    mode: str  # "as-is" (sealed blobs moved unchanged) or "re-encoded"
    copied: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    pieces_copied: int = 0
    bytes_read: int = 0  # downloaded from the source
    bytes_uploaded: int = 0  # packs written to the destination
    verified: bool = False  # every piece re-read on the destination (--verify)
    duration_seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def identity_digest(point: Point) -> str:
    """The image digest of the repository that made the point: the same in every copy."""
    origin = point.manifest.get("origin")
    if isinstance(origin, dict) and isinstance(origin.get("image_digest"), str):
        return str(origin["image_digest"])
    return str(point.manifest.get("image_digest"))


# What a copy keeps; parent and kind may differ where one side consolidated (same digest).
IDENTITY_FIELDS = ("volume", "capacity", "created", "labels", "snapshot_handle")


def same_point(a: Point, b: Point) -> bool:
    """Whether two copies of a point (same id) describe the same volume image."""
    return identity_digest(a) == identity_digest(b) and all(
        a.manifest.get(k) == b.manifest.get(k) for k in IDENTITY_FIELDS
    )


def same_identities(src: Repository, dst: Repository) -> bool:
    """Whether both repositories give a piece the same id (same identity hash and key)."""
    return src.sealer.keys == dst.sealer.keys


def check_distinct(src: Repository, dst: Repository) -> None:
    if src.id == dst.id:
        raise UsageError(
            f"{src.url} and {dst.url} are the same repository (id {src.id[:8]}); "
            "give two different repositories"
        )


def select_points(
    repo: Repository,
    listed: Sequence[Point],
    refs: Sequence[str] = (),
    volume: Callable[[Point], bool] | None = None,
) -> list[Point]:
    """The points named (all, or all of the selected volumes), with their chains, parents
    before children."""
    if refs:
        chosen = [repo.find_point(r, listed) for r in refs]
    else:
        chosen = [p for p in listed if volume is None or volume(p)]
    ordered: list[Point] = []
    seen: set[str] = set()
    for point in chosen:
        for p in reversed(repo.chain_of(point, listed)):
            if p.id not in seen:
                seen.add(p.id)
                ordered.append(p)
    return ordered


class _Copier:
    def __init__(
        self,
        src: Repository,
        dst: Repository,
        tracker: ProgressTracker,
        cancelled: CancelCheck,
        report: CopyReport,
    ) -> None:
        self.src = src
        self.dst = dst
        self.tracker = tracker
        self.cancelled = cancelled
        self.report = report
        self.same_ids = same_identities(src, dst)
        self.whole = dst.grid_size >= src.grid_size  # a source piece fits a destination cell
        self.as_is = self.same_ids and self.whole and src.zstd_level == dst.zstd_level
        self.carry_fingerprints = self.same_ids and src.fingerprint_block == dst.fingerprint_block
        self.translation: dict[_Unit, bytes] = {}  # source unit -> destination piece id
        self.written: set[bytes] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ piece ids

    def units(self, e: Extent) -> list[tuple[Extent, _Unit]]:
        """A source DATA extent as destination extents, each with the unit it reads."""
        if self.whole:
            entry = self._entry(e.piece_id, e.offset)
            return [(e, (e.piece_id, 0, entry.raw_size))]
        out = []
        for offset, length in split_on_grid([(e.offset, e.length)], self.dst.grid_size):
            start = e.piece_offset + offset - e.offset
            out.append((Extent(offset, length), (e.piece_id, start, length)))
        return out

    def _entry(self, piece_id: bytes, offset: int) -> PieceEntry:
        entry = self.src.find_piece(piece_id)
        if entry is None:
            raise MissingObject(
                f"piece {piece_id.hex()[:16]} for volume offset {offset} is not in the source"
            )
        return entry

    def seed(self, point: Point) -> None:
        """Learn destination ids from a point both sides hold: their resolved maps line up."""
        if self.same_ids or not self.whole:
            return
        theirs = {e.offset: e for e in self.dst.resolve(self.dst.load_point(point.id))}
        for e in self.src.resolve(point):
            d = theirs.get(e.offset)
            if (
                e.kind == EXTENT_DATA
                and d is not None
                and d.kind == EXTENT_DATA
                and d.length == e.length
                and d.piece_offset == e.piece_offset
            ):
                entry = self.src.find_piece(e.piece_id)
                if entry is not None:
                    self.translation[(e.piece_id, 0, entry.raw_size)] = d.piece_id

    # ------------------------------------------------------------------ one point

    def copy_point(
        self, point: Point, *, verify: bool, before_commit: Callable[[], None] | None
    ) -> None:
        src, dst = self.src, self.dst
        chain = src.chain(point)
        resolved = resolve_chain(src.load_maps(chain))
        if image_digest(point.capacity, resolved) != point.manifest.get("image_digest"):
            raise CorruptObject(
                f"point {point.id} on the source does not match its recorded image digest"
            )
        extents = src.load_map(point)
        with ContextThreadPool(4, thread_name_prefix="lamina-copy-up") as up:
            writer = dst.new_pack_writer(up, max_in_flight=4)
            try:
                if self.as_is:
                    new_extents = self._move_as_is(extents, writer)
                else:
                    new_extents = self._re_encode(extents, writer)
                written = writer.finish()
            except BaseException:
                writer.abort()
                raise
        self.report.bytes_uploaded += writer.bytes_written
        if written:
            dst.write_index_segment(written)
            for entry in written:
                dst.index.add(entry)
        if self.cancelled():
            raise Cancelled(self._cancel_message())
        # The point exists on the destination only once all it needs is there: check first.
        parent_maps: list[list[Extent]] = []
        if point.parent:
            parent_maps = dst.load_maps(dst.chain(dst.load_point(point.parent)))
        on_dst = resolve_chain([new_extents, *parent_maps])
        digest = image_digest(point.capacity, on_dst)
        if self.same_ids and self.whole and digest != point.manifest.get("image_digest"):
            raise CorruptObject(f"the copy of point {point.id} resolves to another image digest")
        missing = [e for e in on_dst if e.kind == EXTENT_DATA and dst.index.get(e.piece_id) is None]
        if missing:
            raise MissingObject(
                f"point {point.id}: piece {missing[0].piece_id.hex()[:16]} for volume offset "
                f"{missing[0].offset} is not in the destination; nothing was written for it"
            )
        if verify:
            self._read_back(point, on_dst)
        manifest = dict(point.manifest)
        manifest.pop("map", None)
        manifest.pop("fingerprints", None)
        manifest["grid_size"] = dst.grid_size
        manifest["image_digest"] = digest
        if digest != point.manifest.get("image_digest") and "origin" not in manifest:
            manifest["origin"] = {
                "repository": src.id,
                "image_digest": point.manifest.get("image_digest"),
            }
        manifest["copied"] = {"from": src.id, "at": utc_now()}
        fingerprints = src.load_fingerprints(point) if self.carry_fingerprints else None
        if before_commit is not None:
            before_commit()
        dst.save_point(manifest, new_extents, fingerprints)

    def _cancel_message(self) -> str:
        done = len(self.report.copied)
        return f"copy cancelled after {done} point{'s' if done != 1 else ''}; the rest were not written"

    def _fetch_runs(
        self, entries: list[PieceEntry], take: Callable[[PieceEntry, bytes, bytes], None]
    ) -> None:
        """Read pieces from the source, one ranged GET a run, checking each; ``take`` gets
        (entry, stored blob, plaintext)."""
        failure: list[LaminaError] = []

        def fetch(run: list[PieceEntry]) -> None:
            if failure or self.cancelled():
                return
            first, last = run[0], run[-1]
            start, end = first.offset, last.offset + last.stored_size
            try:
                blob = self.src.storage.get_range(pack_key(first.pack_id), start, end - start)
            except ObjectNotFound:
                failure.append(
                    MissingObject(f"pack {first.pack_id.hex()} of the source is missing")
                )
                return
            except ShortRead:
                failure.append(
                    CorruptObject(f"pack {first.pack_id.hex()} of the source is truncated")
                )
                return
            with self._lock:
                self.report.bytes_read += len(blob)
            for entry in run:
                stored = blob[entry.offset - start : entry.offset - start + entry.stored_size]
                try:
                    data = self.src.decode_piece(entry, stored)  # decrypt and check its hash
                except LaminaError as e:
                    failure.append(e)
                    return
                take(entry, stored, data)

        with ContextThreadPool(self.src.io_threads, thread_name_prefix="lamina-copy") as pool:
            for f in [pool.submit(fetch, run) for run in pack_runs(entries)]:
                f.result()
        if failure:
            raise failure[0]
        if self.cancelled():
            raise Cancelled(self._cancel_message())

    def _move_as_is(self, extents: Sequence[Extent], writer: Any) -> list[Extent]:
        dst = self.dst
        needed: dict[bytes, PieceEntry] = {}
        for e in extents:
            if e.kind != EXTENT_DATA or e.piece_id in needed:
                continue
            if dst.index.get(e.piece_id) is None and e.piece_id not in self.written:
                needed[e.piece_id] = self._entry(e.piece_id, e.offset)
            self.tracker.add(e.length)

        def take(entry: PieceEntry, stored: bytes, data: bytes) -> None:
            with self._lock:
                if entry.piece_id in self.written:
                    return
                self.written.add(entry.piece_id)
                writer.add(entry.piece_id, stored, entry.raw_size, entry.codec)
                self.report.pieces_copied += 1
            self.tracker.add(read=len(stored), stored=len(stored))

        self._fetch_runs(list(needed.values()), take)
        return list(extents)

    def _re_encode(self, extents: Sequence[Extent], writer: Any) -> list[Extent]:
        dst = self.dst
        planned: list[tuple[Extent, Extent, _Unit]] = []  # (source extent, new extent, unit)
        wanted: dict[bytes, set[_Unit]] = {}
        entries: dict[bytes, PieceEntry] = {}
        for e in extents:
            if e.kind != EXTENT_DATA:
                planned.append((e, e, (b"", 0, 0)))
                continue
            for part, unit in self.units(e):
                planned.append((e, part, unit))
                if unit not in self.translation:
                    wanted.setdefault(e.piece_id, set()).add(unit)
                    if e.piece_id not in entries:
                        entries[e.piece_id] = self._entry(e.piece_id, e.offset)
            self.tracker.add(e.length)

        def take(entry: PieceEntry, stored: bytes, data: bytes) -> None:
            for unit in wanted[entry.piece_id]:
                _, start, length = unit
                part = data[start : start + length]
                new_id = dst.piece_id(part)
                fresh = False
                with self._lock:
                    self.translation[unit] = new_id
                    if new_id not in self.written and dst.index.get(new_id) is None:
                        self.written.add(new_id)
                        fresh = True
                if fresh:
                    blob, codec = dst.encode_piece(new_id, part)
                    with self._lock:
                        writer.add(new_id, blob, len(part), codec)
                        self.report.pieces_copied += 1
                    self.tracker.add(read=len(part), stored=len(blob))

        self._fetch_runs(list(entries.values()), take)
        out: list[Extent] = []
        for e, part, unit in planned:
            if e.kind != EXTENT_DATA:
                out.append(e)
            elif self.whole:
                out.append(
                    Extent(e.offset, e.length, EXTENT_DATA, self.translation[unit], e.piece_offset)
                )
            else:
                out.append(Extent(part.offset, part.length, EXTENT_DATA, self.translation[unit], 0))
        return out

    def _read_back(self, point: Point, resolved: Sequence[Extent]) -> None:
        """--verify: every piece the point reads, re-read from the destination and checked."""
        ids = {e.piece_id for e in resolved if e.kind == EXTENT_DATA}
        entries = [en for en in (self.dst.index.get(i) for i in ids) if en is not None]
        problems: list[str] = []

        def check(run: list[PieceEntry]) -> None:
            for data in self.dst.read_pack_run(run):
                if isinstance(data, LaminaError):
                    problems.append(str(data))

        with ContextThreadPool(self.dst.io_threads) as pool:
            list(pool.map(check, pack_runs(entries)))
        if problems:
            raise CorruptObject(f"the copy of point {point.id} does not read back: {problems[0]}")
        self.report.verified = True


def copy_points(
    src: Repository,
    dst: Repository,
    points: Sequence[Point],
    *,
    verify: bool = False,
    progress: ProgressCallback | None = None,
    cancelled: CancelCheck = lambda: False,
    before_commit: Callable[[], None] | None = None,
) -> CopyReport:
    """Copy ``points`` (parents before children, as ``select_points`` gives them) from
    ``src`` to ``dst``. Call with a shared lock on the source and on the destination;
    ``before_commit`` runs before each manifest (the destination's lock check)."""
    check_distinct(src, dst)
    started = time.monotonic()
    tracker = ProgressTracker(progress)
    tracker.set_phase("comparing")
    src.load_index()
    dst.load_index()
    theirs = {p.id: p for p in dst.list_points()}
    copier = _Copier(src, dst, tracker, cancelled, CopyReport(src.url, dst.url, "as-is"))
    report = copier.report
    report.mode = "as-is" if copier.as_is else "re-encoded"
    todo: list[Point] = []
    for p in points:
        there = theirs.get(p.id)
        if there is None:
            todo.append(p)
        elif not same_point(p, there):
            raise LaminaError(
                f"point {p.id} exists on the destination with other content "
                "(another image digest or manifest); nothing was copied"
            )
        else:
            report.present.append(p.id)
    # Where a chain continues on the destination, learn how its pieces are named there.
    for p in points:
        if p.id in theirs and any(c.parent == p.id for c in todo):
            copier.seed(p)
    total = sum(e.length for p in todo for e in src.load_map(p) if e.kind == EXTENT_DATA)
    tracker.set_phase("copying", total)
    for p in todo:
        if cancelled():
            raise Cancelled(copier._cancel_message())
        copier.copy_point(p, verify=verify, before_commit=before_commit)
        report.copied.append(p.id)
    report.duration_seconds = round(time.monotonic() - started, 3)
    tracker.finish(f"copied {len(report.copied)} points")
    return report
