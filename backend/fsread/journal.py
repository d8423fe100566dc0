"""Replaying an ext3/ext4 (jbd2) journal in memory, so a crash-consistent image reads as mounted.

A snapshot of a mounted ext4 carries the needs_recovery flag: the newest metadata may sit
only in the journal. Like e2fsck and the kernel, we scan the log from its start for
committed transactions, honour revoke records, and take the newest journalled copy of each
block. Nothing is written: the result is an overlay on top of the image.

Not replayed: fast-commit blocks (the fast_commit feature), external journal devices.
Checksums are not verified, as everywhere in these readers.
"""

from __future__ import annotations

import bisect
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .api import ReadAt
from .errors import CorruptFilesystem, UnsupportedFilesystem

log = logging.getLogger("lamina.fsread")

JOURNAL_MAGIC = 0xC03B3998
DESCRIPTOR, COMMIT, SUPERBLOCK_V1, SUPERBLOCK_V2, REVOKE = 1, 2, 3, 4, 5
INCOMPAT_REVOKE = 0x1
INCOMPAT_64BIT = 0x2
INCOMPAT_ASYNC_COMMIT = 0x4
INCOMPAT_CSUM_V2 = 0x8
INCOMPAT_CSUM_V3 = 0x10
INCOMPAT_FAST_COMMIT = 0x20
INCOMPAT_KNOWN = 0x3F
FLAG_ESCAPE = 0x1
FLAG_SAME_UUID = 0x2
FLAG_LAST_TAG = 0x8
DEFAULT_FAST_COMMIT_BLOCKS = 256

_HEADER = struct.Struct(">III")


@dataclass(frozen=True)
class Replay:
    """Where the newest committed copy of each filesystem block is, in the image."""

    copies: dict[int, tuple[int, bool]]  # fs block -> (byte offset of the copy, escaped)
    transactions: int


def plan_replay(
    journal_block: Callable[[int], bytes],
    journal_disk: Callable[[int], int],
    block_size: int,
    journal_blocks: int,
) -> Replay:
    """Scan the log. ``journal_block(n)`` reads block n of the journal, ``journal_disk(n)``
    gives its byte offset in the image; the journal holds ``journal_blocks`` blocks."""
    sb = journal_block(0)
    magic, block_type, _ = _HEADER.unpack_from(sb, 0)
    if magic != JOURNAL_MAGIC or block_type not in (SUPERBLOCK_V1, SUPERBLOCK_V2):
        raise CorruptFilesystem("the ext4 journal superblock is damaged")
    j_block_size, max_len, first, sequence, start = struct.unpack_from(">IIIII", sb, 0xC)
    incompat = struct.unpack_from(">I", sb, 0x28)[0] if block_type == SUPERBLOCK_V2 else 0
    if j_block_size != block_size or not 0 < first < max_len <= journal_blocks:
        raise CorruptFilesystem("the ext4 journal superblock has an impossible geometry")
    if start == 0:
        return Replay({}, 0)  # the log is empty: nothing to replay
    if incompat & ~INCOMPAT_KNOWN:
        raise UnsupportedFilesystem(
            f"the ext4 journal uses unknown features {incompat & ~INCOMPAT_KNOWN:#x}"
        )
    last = max_len
    if incompat & INCOMPAT_FAST_COMMIT:
        fast_commit = struct.unpack_from(">I", sb, 0x54)[0] or DEFAULT_FAST_COMMIT_BLOCKS
        last = max(first + 1, max_len - fast_commit)
    wide = bool(incompat & INCOMPAT_64BIT)
    if incompat & INCOMPAT_CSUM_V3:
        tag_size = 16
    else:
        tag_size = 12 + (2 if incompat & INCOMPAT_CSUM_V2 else 0) - (0 if wide else 4)
    tail = 4 if incompat & (INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3) else 0
    if not first <= start < last:
        raise CorruptFilesystem(f"the ext4 journal starts at block {start}, outside the log")

    def following(block: int) -> int:
        block += 1
        return first if block >= last else block

    writes: list[list[tuple[int, int, bool]]] = []  # per committed transaction
    revoked: dict[int, int] = {}  # fs block -> newest committed transaction revoking it
    pending: list[tuple[int, int, bool]] = []
    pending_revokes: list[int] = []
    block = start
    for _ in range(last - first):  # a log never holds more blocks than the journal has
        header = journal_block(block)
        magic, block_type, block_sequence = _HEADER.unpack_from(header, 0)
        if magic != JOURNAL_MAGIC or block_sequence != sequence:
            break  # the end of the log
        if block_type == DESCRIPTOR:
            tags = _descriptor_tags(header, tag_size, wide, block_size - tail)
            for target, flags in tags:
                block = following(block)
                pending.append((target, journal_disk(block), bool(flags & FLAG_ESCAPE)))
        elif block_type == REVOKE:
            pending_revokes.extend(_revoked_blocks(header, wide, block_size))
        elif block_type == COMMIT:
            writes.append(pending)
            for target in pending_revokes:
                revoked[target] = sequence
            pending, pending_revokes = [], []
            sequence = (sequence + 1) & 0xFFFFFFFF
        else:
            break
        block = following(block)
    copies: dict[int, tuple[int, bool]] = {}
    first_sequence = (sequence - len(writes)) & 0xFFFFFFFF
    for index, transaction in enumerate(writes):
        transaction_sequence = (first_sequence + index) & 0xFFFFFFFF
        for target, disk, escaped in transaction:
            revoker = revoked.get(target)
            if revoker is not None and _not_before(revoker, transaction_sequence):
                continue
            copies[target] = (disk, escaped)
    return Replay(copies, len(writes))


def _not_before(a: int, b: int) -> bool:
    """Transaction ``a`` is ``b`` or later, on the wrapping 32-bit sequence."""
    return ((a - b) & 0xFFFFFFFF) < 0x80000000


def _descriptor_tags(block: bytes, tag_size: int, wide: bool, usable: int) -> list[tuple[int, int]]:
    tags: list[tuple[int, int]] = []
    pos = 12
    while pos + tag_size <= usable:
        if tag_size == 16:
            low, flags, high = struct.unpack_from(">III", block, pos)
        else:
            low, _, flags = struct.unpack_from(">IHH", block, pos)
            high = struct.unpack_from(">I", block, pos + 8)[0] if wide else 0
        target = low | (high << 32 if wide else 0)
        tags.append((target, flags))
        pos += tag_size
        if not flags & FLAG_SAME_UUID:
            pos += 16
        if flags & FLAG_LAST_TAG:
            break
    return tags


def _revoked_blocks(block: bytes, wide: bool, block_size: int) -> list[int]:
    count = min(struct.unpack_from(">I", block, 12)[0], block_size)
    size = 8 if wide else 4
    return [
        struct.unpack_from(">Q" if wide else ">I", block, pos)[0]
        for pos in range(16, count - size + 1, size)
    ]


class JournalOverlay:
    """A ReadAt showing the image with the replayed journal blocks in place."""

    ESCAPED_MAGIC = struct.pack(">I", JOURNAL_MAGIC)

    def __init__(self, image: ReadAt, block_size: int, replay: Replay) -> None:
        self.image = image
        self.size = image.size
        self.block_size = block_size
        self.replay = replay
        self._blocks = sorted(replay.copies)

    def pread(self, length: int, offset: int) -> bytes:
        data = self.image.pread(length, offset)
        end = offset + len(data)
        bs = self.block_size
        i = bisect.bisect_left(self._blocks, offset // bs)
        if i == len(self._blocks) or self._blocks[i] * bs >= end:
            return data
        patched = bytearray(data)
        while i < len(self._blocks) and self._blocks[i] * bs < end:
            target = self._blocks[i]
            disk, escaped = self.replay.copies[target]
            copy = bytearray(self.image.pread(bs, disk))
            if len(copy) != bs:
                raise CorruptFilesystem("a journalled block lies beyond the end of the image")
            if escaped:
                copy[:4] = self.ESCAPED_MAGIC
            lo, hi = max(target * bs, offset), min((target + 1) * bs, end)
            patched[lo - offset : hi - offset] = copy[lo - target * bs : hi - target * bs]
            i += 1
        return bytes(patched)
