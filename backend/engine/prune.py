"""Garbage collection: delete what no remaining point can see, repack what is mostly dead.

Runs under an exclusive repository lock (backend/locks.py), so no backup can be choosing
pieces to deduplicate against while pieces are being removed. The order of writes makes a
crash at any moment harmless (docs/format.md, "Prune"):

1. copy the live pieces of sparse packs into new packs (blobs copied as they are);
2. write new index segments that list every live piece at its (new) location;
3. delete the old index segments;
4. delete dead and repacked packs, then unreferenced maps and stray markers.

Until step 3 ends, old and new segments both name existing packs; packs go only after no
segment names them. Memory: the compact piece table plus one byte a piece for the mark.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import LaminaError
from .format import PieceEntry
from .repository import Repository
from .repository.packs import pack_key, pack_runs
from .storage.metering import ContextThreadPool

INDEX_SEGMENT_ENTRIES = 250_000
DEBRIS_GRACE = 0.0  # seconds; prune runs under an exclusive lock, so debris is never in use


@dataclass
class PruneReport:
    dry_run: bool
    points: int = 0
    pieces_total: int = 0
    pieces_live: int = 0
    packs_total: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_kept_locked: int = 0
    bytes_total: int = 0
    bytes_reclaimed: int = 0
    bytes_rewritten: int = 0
    maps_deleted: int = 0
    segments_rewritten: int = 0
    requests: int = 0
    duration_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


def prune(
    repo: Repository,
    *,
    dry_run: bool = False,
    repack_below: float = 0.5,
    log: Callable[[str], None] | None = None,
    now: float | None = None,
) -> PruneReport:
    started = time.monotonic()
    requests_before = repo.counter.requests
    say = log or (lambda _m: None)
    report = PruneReport(dry_run=dry_run)
    now = time.time() if now is None else now

    # Mark: every piece any remaining point's own map references.
    old_segments = repo.reload_index()
    index = repo.index
    live = bytearray(index.table_size)
    points = repo.list_points()
    report.points = len(points)
    for point in points:
        for piece_id in repo.map_piece_ids(point):
            pos = index.position(piece_id)
            if pos is None:
                report.problems.append(
                    f"point {point.id} references piece {piece_id.hex()[:16]}, which no index lists"
                )
            else:
                live[pos] = 1
    if report.problems:
        raise LaminaError(
            f"prune stopped before deleting anything: {report.problems[0]} (run 'lamina verify')"
        )

    # Sweep plan: live bytes of each pack.
    packs = dict(repo.list_packs())
    mtimes = {info.key: info.mtime for info in repo.storage.list("packs/")}
    pack_numbers = {pack_id: no for no, pack_id in enumerate(index.packs)}
    live_bytes = array("Q", bytes(8 * len(index.packs)))
    for i in range(index.table_size):
        if live[i]:
            live_bytes[index.pack_number_at(i)] += index.stored_size_at(i)
    report.pieces_total = index.table_size
    report.pieces_live = sum(live)
    report.packs_total = len(packs)
    report.bytes_total = sum(packs.values())
    retain_until = repo.retention_of
    doomed: list[bytes] = []
    repack: set[bytes] = set()
    for pack_id, size in packs.items():
        no = pack_numbers.get(pack_id)
        used = live_bytes[no] if no is not None else 0
        if used == 0 or used < repack_below * size:
            locked_until = retain_until(mtimes.get(pack_key(pack_id), now))
            if locked_until > now:
                report.packs_kept_locked += 1
                continue
            if used == 0:
                doomed.append(pack_id)
                report.bytes_reclaimed += size
            else:
                repack.add(pack_id)
                report.bytes_reclaimed += size - used
                report.bytes_rewritten += used
    report.packs_deleted = len(doomed) + len(repack)
    report.packs_repacked = len(repack)
    referenced_maps = {p.map_key for p in points}
    referenced_maps |= {key for p in points if (key := p.fingerprints_key)}
    stray_maps = [
        info.key
        for info in repo.storage.list("maps/")
        if info.key not in referenced_maps and retain_until(info.mtime) <= now
    ]
    report.maps_deleted = len(stray_maps)
    say(
        f"{report.points} points reference {report.pieces_live} of {report.pieces_total} pieces; "
        f"{len(doomed)} packs to delete, {len(repack)} to repack, {len(stray_maps)} stray maps"
    )
    if dry_run:
        report.requests = repo.counter.requests - requests_before
        report.duration_seconds = round(time.monotonic() - started, 3)
        return report

    # 1. Repack: copy live pieces of sparse packs into new packs.
    moved: dict[bytes, PieceEntry] = {}
    if repack:
        movers = [
            index.at(i)
            for i in range(index.table_size)
            if live[i] and index.at(i).pack_id in repack
        ]
        with ContextThreadPool(4, thread_name_prefix="lamina-prune") as pool:
            writer = repo.new_pack_writer(pool, max_in_flight=2)
            for run in pack_runs(movers):
                first = run[0]
                blob = repo.storage.get_range(
                    pack_key(first.pack_id),
                    first.offset,
                    run[-1].offset + run[-1].stored_size - first.offset,
                )
                for e in run:
                    start = e.offset - first.offset
                    new = writer.add(
                        e.piece_id, blob[start : start + e.stored_size], e.raw_size, e.codec
                    )
                    moved[e.piece_id] = new
            writer.finish()
        say(f"repacked {len(moved)} live pieces from {len(repack)} packs")

    # 2. New index segments: every live piece, at its new place if it moved.
    batch: list[PieceEntry] = []
    new_segments = 0
    for i in range(index.table_size):
        if not live[i]:
            continue
        entry = index.at(i)
        batch.append(moved.get(entry.piece_id, entry))
        if len(batch) >= INDEX_SEGMENT_ENTRIES:
            repo.write_index_segment(batch)
            new_segments += 1
            batch = []
    if batch:
        repo.write_index_segment(batch)
        new_segments += 1
    report.segments_rewritten = new_segments

    # 3. Old segments go; 4. then packs, maps and stray markers.
    for key in old_segments:
        repo.storage.delete(key)
    for pack_id in [*doomed, *repack]:
        repo.storage.delete(pack_key(pack_id))
    for key in stray_maps:
        repo.storage.delete(key)
    point_ids = {p.id for p in points}
    for info in repo.storage.list("protected/"):
        if info.key.split("/", 1)[1] not in point_ids:
            repo.storage.delete(info.key)
    repo.reload_index()
    say(f"deleted {report.packs_deleted} packs and {report.maps_deleted} maps")
    report.requests = repo.counter.requests - requests_before
    report.duration_seconds = round(time.monotonic() - started, 3)
    return report
