"""A read-only reader for XFS (v5, and v4 with version 2 directories), from the on-disk format docs.

Inodes are located from their numbers (AG, block, slot), without the inode btrees. Data forks
in local, extent and B+tree (bmbt, any depth) formats; shortform, block, leaf and node
directories (entries come from the data blocks below the 32 GiB leaf offset); unwritten
extents and holes read as zeros; bigtime and classic timestamps; local and remote symlinks.
CRCs are not verified; every structure is bounds-checked.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

from .base import (
    BILLION,
    MAX_SYMLINK,
    BaseFileSystem,
    Inode,
    Run,
    check_mode_kind,
    merge_runs,
)
from .blockcache import BlockReader
from .errors import CorruptFilesystem, FsReadError, UnsupportedFilesystem

MAGIC = 0x58465342  # "XFSB"
INODE_MAGIC = 0x494E  # "IN"

# sb_versionnum (v4) bits
VERSION_DIRV2 = 0x2000
VERSION_MOREBITS = 0x8000
FEATURES2_FTYPE = 0x200
# sb_features_incompat (v5)
INCOMPAT_FTYPE = 0x1
INCOMPAT_SPINODES = 0x2
INCOMPAT_META_UUID = 0x4
INCOMPAT_BIGTIME = 0x8
INCOMPAT_NEEDSREPAIR = 0x10
INCOMPAT_NREXT64 = 0x20
INCOMPAT_EXCHRANGE = 0x40
INCOMPAT_PARENT = 0x80
INCOMPAT_READABLE = (
    INCOMPAT_FTYPE
    | INCOMPAT_SPINODES
    | INCOMPAT_META_UUID
    | INCOMPAT_BIGTIME
    | INCOMPAT_NEEDSREPAIR
    | INCOMPAT_NREXT64
    | INCOMPAT_EXCHRANGE
    | INCOMPAT_PARENT
)
INCOMPAT_NAMES = {0x100: "metadir", 0x200: "zoned"}

FORMAT_DEV, FORMAT_LOCAL, FORMAT_EXTENTS, FORMAT_BTREE = 0, 1, 2, 3
DIFLAG_REALTIME = 0x1
DIFLAG2_BIGTIME = 0x8
DIFLAG2_NREXT64 = 0x10

BMBT_MAGIC_V4 = 0x424D4150  # "BMAP"
BMBT_MAGIC_V5 = 0x424D4133  # "BMA3"
BMBT_MAX_LEVELS = 16
DIR_BLOCK_V4 = 0x58443242  # "XD2B": a single-block directory
DIR_BLOCK_V5 = 0x58444233  # "XDB3"
DIR_DATA_V4 = 0x58443244  # "XD2D": a data block of a leaf or node directory
DIR_DATA_V5 = 0x58444433  # "XDD3"
DIR_LEAF_OFFSET = 32 << 30  # data blocks live below this byte offset of a directory
SYMLINK_MAGIC = 0x58534C4D  # "XSLM"
SYMLINK_HEADER_V5 = 56
BIGTIME_EPOCH_OFFSET = 1 << 31
LOG_RECORD_MAGIC = 0xFEEDBABE
LOG_HEADER_CYCLE_SIZE = 32 * 1024  # record data covered by the cycle words of one header
LOG_CLIENT = 0xAA  # operations written by the log itself, such as the unmount record
LOG_UNMOUNT = 0x20
LOG_SEARCH_SECTORS = 1 << 16  # 32 MiB: far more than the in-flight log buffers can span
DIRTY_LOG_NOTE = (
    "the xfs log holds changes that are not replayed (the image is a snapshot of a mounted "
    "filesystem): the newest changes may be missing"
)
MAX_OFFSET = (1 << 54) - 1  # file offsets in extent records are 54 bits

_EXTENT = struct.Struct(">QQ")
_CORE = struct.Struct(">HHBBHIIIHH8s")


@dataclass(frozen=True, slots=True)
class _Node:
    """A bmbt node: in the inode (the root) or in a block."""

    data: bytes
    keys_at: int
    pointers_at: int
    count: int
    level: int


@dataclass(slots=True)
class XfsInode(Inode):
    format: int
    fork: bytes
    extents: int
    flags: int


class XfsFileSystem(BaseFileSystem[XfsInode]):
    kind = "xfs"

    def __init__(self, reader: BlockReader, sb: bytes) -> None:
        super().__init__(reader)
        (magic, block_size, dblocks) = struct.unpack_from(">IIQ", sb, 0)
        if magic != MAGIC:
            raise UnsupportedFilesystem("no xfs superblock magic")
        self.root_inode = struct.unpack_from(">Q", sb, 56)[0]
        ag_blocks, ag_count = struct.unpack_from(">II", sb, 84)
        self.ag_blocks: int = ag_blocks
        self.ag_count: int = ag_count
        versionnum, _sectsize, self.inode_size, inodes_per_block = struct.unpack_from(
            ">HHHH", sb, 100
        )
        fname = sb[108:120]
        block_log, _sectlog, inode_log, per_block_log, ag_block_log = struct.unpack_from(
            ">BBBBB", sb, 120
        )
        self.block_log: int = block_log
        self.inodes_per_block_log: int = per_block_log
        self.ag_block_log: int = ag_block_log
        self.dir_block_log = sb[192]
        features2 = struct.unpack_from(">I", sb, 200)[0]
        incompat = struct.unpack_from(">I", sb, 216)[0]
        self.version = versionnum & 0xF
        if self.version == 5:
            unknown = incompat & ~INCOMPAT_READABLE
            if unknown:
                names = [
                    INCOMPAT_NAMES.get(1 << b, f"{1 << b:#x}")
                    for b in range(32)
                    if unknown & (1 << b)
                ]
                raise UnsupportedFilesystem(f"xfs feature {', '.join(names)} is not supported")
            self.has_ftype = bool(incompat & INCOMPAT_FTYPE)
        elif self.version == 4:
            if not versionnum & VERSION_DIRV2:
                raise UnsupportedFilesystem("xfs v4 with version 1 directories is not supported")
            self.has_ftype = bool(versionnum & VERSION_MOREBITS and features2 & FEATURES2_FTYPE)
        else:
            raise UnsupportedFilesystem(f"xfs version {self.version} is not supported")
        if not 9 <= self.block_log <= 16 or block_size != 1 << self.block_log:
            raise CorruptFilesystem(f"xfs superblock: block size {block_size} is not valid")
        if not 8 <= inode_log <= 11 or self.inode_size != 1 << inode_log:
            raise CorruptFilesystem(f"xfs superblock: inode size {self.inode_size} is not valid")
        if (
            inodes_per_block != block_size // self.inode_size
            or 1 << self.inodes_per_block_log != inodes_per_block
        ):
            raise CorruptFilesystem("xfs superblock: inodes per block is not valid")
        if (
            self.ag_count == 0
            or self.ag_blocks == 0
            or self.ag_block_log > 31
            or (1 << self.ag_block_log) < self.ag_blocks
            or (1 << self.ag_block_log) >= 2 * self.ag_blocks
        ):
            raise CorruptFilesystem("xfs superblock: allocation group geometry is not valid")
        if self.block_log + self.dir_block_log > 16:
            raise CorruptFilesystem("xfs superblock: directory block size is not valid")
        self.block_size = block_size
        self.blocks_count = dblocks
        self.dir_block_size = block_size << self.dir_block_log
        self.core_size = 176 if self.version == 5 else 100
        self.label = fname.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        uuid = sb[32:48].hex()
        self.uuid = f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:]}"
        self.log_start: int = struct.unpack_from(">Q", sb, 48)[0]
        self.log_blocks: int = struct.unpack_from(">I", sb, 96)[0]
        self._log_state: tuple[bool, str] | None = None
        self.reader.fs_size = dblocks * block_size

    # --------------------------------------------------------------- the log

    @property
    def needs_recovery(self) -> bool:
        """Whether the log holds changes not yet in place (xfs keeps no flag for it: the log
        is examined on first use). They are not replayed: see ``journal_note``."""
        return self._examine_log()[0]

    @property
    def journal_note(self) -> str:
        return self._examine_log()[1]

    def _examine_log(self) -> tuple[bool, str]:
        if self._log_state is None:
            try:
                clean = log_is_clean(self)
            except FsReadError as e:
                self._log_state = (True, f"the state of the xfs log is unknown ({e})")
            else:
                if clean is None:
                    self._log_state = (
                        False,
                        "the xfs log is on another device and was not checked",
                    )
                elif clean:
                    self._log_state = (False, "")
                else:
                    self._log_state = (True, DIRTY_LOG_NOTE)
        return self._log_state

    # --------------------------------------------------------------- addresses

    def _disk_offset(self, fsb: int, count: int, what: str) -> int:
        """Byte offset of filesystem block ``fsb`` (AG number in its high bits)."""
        ag, ag_block = fsb >> self.ag_block_log, fsb & ((1 << self.ag_block_log) - 1)
        if ag >= self.ag_count or ag_block + count > self.ag_blocks:
            raise CorruptFilesystem(f"{what}: block {fsb:#x} is outside the filesystem")
        return (ag * self.ag_blocks + ag_block) << self.block_log

    def _load_inode(self, number: int) -> XfsInode:
        slot_bits = self.inodes_per_block_log
        ag = number >> (self.ag_block_log + slot_bits)
        ag_block = (number >> slot_bits) & ((1 << self.ag_block_log) - 1)
        slot = number & ((1 << slot_bits) - 1)
        if ag >= self.ag_count or ag_block >= self.ag_blocks:
            raise CorruptFilesystem(f"inode {number} is outside the filesystem")
        offset = ((ag * self.ag_blocks + ag_block) << self.block_log) + slot * self.inode_size
        raw = self.reader.meta(offset, self.inode_size, f"inode {number}")
        return self._parse_inode(number, raw)

    def _parse_inode(self, number: int, raw: bytes) -> XfsInode:
        (magic, mode, version, fmt, onlink, uid, gid, nlink, _, _, big_nextents) = (
            _CORE.unpack_from(raw, 0)
        )
        if magic != INODE_MAGIC:
            raise CorruptFilesystem(f"inode {number}: inode magic is wrong")
        if mode == 0:
            raise CorruptFilesystem(f"inode {number} is not in use (a deleted or damaged entry)")
        if version not in ((3,) if self.version == 5 else (1, 2)):
            raise CorruptFilesystem(f"inode {number}: inode version {version} is not valid")
        kind = check_mode_kind(number, mode)
        size, nblocks, _extsize, nextents, _anext, forkoff, _aformat = struct.unpack_from(
            ">QQIIHBb", raw, 56
        )
        flags = struct.unpack_from(">H", raw, 90)[0]
        flags2 = 0
        if version == 3:
            flags2 = struct.unpack_from(">Q", raw, 120)[0]
            if struct.unpack_from(">Q", raw, 152)[0] != number:
                raise CorruptFilesystem(f"inode {number}: the inode records another number")
            if flags2 & DIFLAG2_NREXT64:
                nextents = struct.unpack_from(">Q", big_nextents)[0]
        if version == 1:
            nlink = onlink
        fork_size = forkoff * 8 if forkoff else self.inode_size - self.core_size
        if self.core_size + fork_size > self.inode_size:
            raise CorruptFilesystem(f"inode {number}: attribute fork offset is not valid")
        fork = raw[self.core_size : self.core_size + fork_size]
        if size >= 1 << 63:
            raise CorruptFilesystem(f"inode {number}: size is not valid")
        bigtime = bool(flags2 & DIFLAG2_BIGTIME)
        rdev = 0
        if fmt == FORMAT_DEV and kind in ("chardev", "blockdev"):
            dev = struct.unpack_from(">I", fork, 0)[0]
            rdev = os.makedev(dev >> 18, dev & 0x3FFFF)
        return XfsInode(
            number=number,
            mode=mode,
            kind=kind,
            size=size,
            uid=uid,
            gid=gid,
            nlink=nlink,
            atime_ns=_decode_time(raw, 32, bigtime),
            mtime_ns=_decode_time(raw, 40, bigtime),
            ctime_ns=_decode_time(raw, 48, bigtime),
            rdev=rdev,
            blocks=nblocks << (self.block_log - 9),
            format=fmt,
            fork=fork,
            extents=nextents,
            flags=flags,
        )

    # --------------------------------------------------------------- block mapping

    def _data_runs(self, inode: XfsInode, first: int, end: int) -> Iterator[Run]:
        if inode.format == FORMAT_EXTENTS:
            if inode.extents * 16 > len(inode.fork):
                raise CorruptFilesystem(
                    f"inode {inode.number}: {inode.extents} extents do not fit in the inode"
                )
            yield from self._records(inode, inode.fork, 0, inode.extents, first, end, 0, MAX_OFFSET)
        elif inode.format == FORMAT_BTREE:
            fork = inode.fork
            level, count = struct.unpack_from(">HH", fork, 0)
            max_records = (len(fork) - 4) // 16
            if level == 0 or level > BMBT_MAX_LEVELS or count == 0 or count > max_records:
                raise CorruptFilesystem(f"inode {inode.number}: extent btree root is damaged")
            node = _Node(fork, 4, 4 + max_records * 8, count, level)
            yield from self._btree_node(inode, node, first, end, 0, MAX_OFFSET)
        elif inode.format == FORMAT_LOCAL:
            return
        else:
            raise CorruptFilesystem(
                f"inode {inode.number}: data fork format {inode.format} is not valid"
            )

    def _records(
        self,
        inode: XfsInode,
        block: bytes,
        start: int,
        count: int,
        first: int,
        end: int,
        low: int,
        high: int,
    ) -> Iterator[Run]:
        """Written extents overlapping [first, end) from records that must lie in [low, high)."""
        what = f"data of inode {inode.number}"
        previous_end = low
        for i in range(count):
            word0, word1 = _EXTENT.unpack_from(block, start + 16 * i)
            logical = (word0 >> 9) & MAX_OFFSET
            length = word1 & ((1 << 21) - 1)
            if length == 0 or logical < previous_end or logical + length > high:
                raise CorruptFilesystem(
                    f"inode {inode.number}: extents overlap or are out of order"
                )
            previous_end = logical + length
            if logical >= end:
                return
            if logical + length <= first:
                continue
            fsb = ((word0 & 0x1FF) << 43) | (word1 >> 21)
            disk = self._disk_offset(fsb, length, what)
            if not word0 >> 63:  # the top bit marks an unwritten (preallocated) extent
                yield Run(logical, length, disk)

    def _btree_node(
        self, inode: XfsInode, node: _Node, first: int, end: int, low: int, high: int
    ) -> Iterator[Run]:
        """Children must have increasing keys inside [low, high): a damaged tree cannot make
        the walk visit a block more than once."""
        keys = struct.unpack_from(f">{node.count}Q", node.data, node.keys_at)
        pointers = struct.unpack_from(f">{node.count}Q", node.data, node.pointers_at)
        bounds = [*keys, high]
        if keys[0] < low or any(b <= a for a, b in pairwise(bounds)):
            raise CorruptFilesystem(f"inode {inode.number}: extent btree keys are out of order")
        for i in range(node.count):
            if keys[i] >= end:
                return
            if bounds[i + 1] <= first:
                continue
            yield from self._btree_block(
                inode, pointers[i], node.level - 1, first, end, keys[i], bounds[i + 1]
            )

    def _btree_block(
        self, inode: XfsInode, fsb: int, level: int, first: int, end: int, low: int, high: int
    ) -> Iterator[Run]:
        what = f"extent btree of inode {inode.number}"
        block = self.reader.meta(self._disk_offset(fsb, 1, what), self.block_size, what)
        magic, block_level, count = struct.unpack_from(">IHH", block, 0)
        if magic == BMBT_MAGIC_V5 and self.version == 5:
            header = 72
        elif magic == BMBT_MAGIC_V4 and self.version == 4:
            header = 24
        else:
            raise CorruptFilesystem(f"inode {inode.number}: extent btree block magic is wrong")
        if block_level != level:
            raise CorruptFilesystem(f"inode {inode.number}: extent btree levels are inconsistent")
        if level == 0:
            if header + count * 16 > self.block_size:
                raise CorruptFilesystem(f"inode {inode.number}: extent btree leaf is damaged")
            yield from self._records(inode, block, header, count, first, end, low, high)
            return
        max_records = (self.block_size - header) // 16
        if count == 0 or count > max_records:
            raise CorruptFilesystem(f"inode {inode.number}: extent btree node is damaged")
        node = _Node(block, header, header + max_records * 8, count, level)
        yield from self._btree_node(inode, node, first, end, low, high)

    def _inline_content(self, inode: XfsInode) -> bytes | None:
        if inode.format != FORMAT_LOCAL:
            return None
        if inode.size > len(inode.fork):
            raise CorruptFilesystem(f"inode {inode.number}: local data is larger than the inode")
        return inode.fork[: inode.size]

    def _check_readable(self, inode: XfsInode) -> None:
        if inode.flags & DIFLAG_REALTIME:
            raise UnsupportedFilesystem(
                f"inode {inode.number} keeps its data on a realtime device, which is not supported"
            )

    # --------------------------------------------------------------- directories

    def _dir_entries(self, inode: XfsInode) -> Iterator[tuple[bytes, int]]:
        if inode.format == FORMAT_LOCAL:
            yield from self._shortform_entries(inode)
            return
        if inode.format not in (FORMAT_EXTENTS, FORMAT_BTREE):
            raise CorruptFilesystem(
                f"directory inode {inode.number}: data fork format is not valid"
            )
        per_dir_block = 1 << self.dir_block_log
        data_end = DIR_LEAF_OFFSET >> self.block_log
        what = f"directory inode {inode.number}"
        current = -1  # the directory block being gathered
        parts: list[int] = []  # disk offsets of its blocks so far
        for run in self._data_runs(inode, 0, data_end):
            for i in range(min(run.count, data_end - run.logical)):
                logical = run.logical + i
                dir_block, index = logical >> self.dir_block_log, logical & (per_dir_block - 1)
                if dir_block != current:
                    if parts:
                        break
                    current = dir_block
                if index != len(parts):
                    break
                parts.append(run.disk + (i << self.block_log))
                if len(parts) == per_dir_block:
                    data = b"".join(self.reader.meta(d, self.block_size, what) for d in parts)
                    yield from self._data_block_entries(inode, data, dir_block)
                    parts = []
            else:
                continue
            raise CorruptFilesystem(f"{what}: directory block {current} is incomplete")
        if parts:
            raise CorruptFilesystem(f"{what}: directory block {current} is incomplete")

    def _shortform_entries(self, inode: XfsInode) -> Iterator[tuple[bytes, int]]:
        fork = inode.fork[: inode.size]
        damaged = CorruptFilesystem(
            f"directory inode {inode.number}: short form entries are damaged"
        )
        if len(fork) < 6:
            raise damaged
        count, wide = fork[0], fork[1]
        number_size = 8 if wide else 4
        pos = 2 + number_size  # past the header and the parent inode number
        tail = 1 if self.has_ftype else 0
        for _ in range(count):
            if pos + 3 > len(fork):
                raise damaged
            name_len = fork[pos]
            name_at = pos + 3  # name length, then a two-byte offset hint
            number_at = name_at + name_len + tail
            if name_len == 0 or number_at + number_size > len(fork):
                raise damaged
            number = int.from_bytes(fork[number_at : number_at + number_size], "big")
            yield fork[name_at : name_at + name_len], number
            pos = number_at + number_size

    def _data_block_entries(
        self, inode: XfsInode, data: bytes, dir_block: int
    ) -> Iterator[tuple[bytes, int]]:
        magic = struct.unpack_from(">I", data, 0)[0]
        header = 64 if self.version == 5 else 16
        end = len(data)
        if magic in (DIR_BLOCK_V5, DIR_BLOCK_V4) and magic == (
            DIR_BLOCK_V5 if self.version == 5 else DIR_BLOCK_V4
        ):
            leaf_count = struct.unpack_from(">I", data, end - 8)[0]
            end -= 8 + 8 * leaf_count  # the hash leaf entries and tail follow the data
        elif magic != (DIR_DATA_V5 if self.version == 5 else DIR_DATA_V4):
            raise CorruptFilesystem(
                f"directory inode {inode.number}: block {dir_block} magic is wrong"
            )
        if end < header:
            raise CorruptFilesystem(
                f"directory inode {inode.number}: block {dir_block} leaf count is not valid"
            )
        pos = header
        tail = 1 if self.has_ftype else 0
        while pos + 8 <= end:
            if data[pos] == 0xFF and data[pos + 1] == 0xFF:  # unused space
                length = struct.unpack_from(">H", data, pos + 2)[0]
                if length < 8 or length % 8 or pos + length > end:
                    raise CorruptFilesystem(
                        f"directory inode {inode.number}: free space in block {dir_block} is damaged"
                    )
                pos += length
                continue
            if pos + 12 > end:
                break
            number = struct.unpack_from(">Q", data, pos)[0]
            name_len = data[pos + 8]
            size = (8 + 1 + name_len + tail + 2 + 7) & ~7
            if name_len == 0 or pos + size > end:
                raise CorruptFilesystem(
                    f"directory inode {inode.number}: entry in block {dir_block} at {pos} is damaged"
                )
            name = data[pos + 9 : pos + 9 + name_len]
            if name not in (b".", b".."):
                yield name, number
            pos += size

    # --------------------------------------------------------------- symlinks

    def _symlink_target(self, inode: XfsInode) -> bytes:
        size = inode.size
        if size > MAX_SYMLINK:
            raise CorruptFilesystem(f"inode {inode.number}: symlink of {size} bytes is too long")
        inline = self._inline_content(inode)
        if inline is not None:
            return inline
        # v5 puts one header at the start of each mapped extent, not of each block.
        header = SYMLINK_HEADER_V5 if self.version == 5 else 0
        blocks = -(-size // (self.block_size - header))
        what = f"symlink inode {inode.number}"
        target = bytearray()
        for run in merge_runs(self._data_runs(inode, 0, blocks), self.block_size):
            count = min(run.count, blocks - run.logical)
            if count <= 0:
                break
            data = self.reader.meta(run.disk, count << self.block_log, what)
            if header:
                magic, offset, length = struct.unpack_from(">III", data, 0)
                if magic != SYMLINK_MAGIC or length > len(data) - header or offset != len(target):
                    raise CorruptFilesystem(f"inode {inode.number}: symlink block is damaged")
                target += data[header : header + length]
            else:
                target += data
        if len(target) < size:
            raise CorruptFilesystem(f"inode {inode.number}: symlink blocks are missing")
        return bytes(target[:size])


def log_is_clean(fs: XfsFileSystem) -> bool | None:
    """True when the newest log record is an unmount record, None for an external log.

    The log is circular; the first word of every 512-byte block holds the cycle in which it
    was written, so the head is where the cycle number drops. The record just before the
    head is the newest.
    """
    if fs.log_start == 0:
        return None
    base = fs._disk_offset(fs.log_start, fs.log_blocks, "the xfs log")
    count = fs.log_blocks << (fs.block_log - 9)
    if count < 2:
        raise CorruptFilesystem("the xfs log is too small")

    def sector(index: int) -> bytes:
        return fs.reader.meta(base + index * 512, 512, "the xfs log")

    def cycle(index: int) -> int:
        magic, record_cycle = struct.unpack_from(">II", sector(index), 0)
        return int(record_cycle if magic == LOG_RECORD_MAGIC else magic)

    first, last = cycle(0), cycle(count - 1)
    head = 0
    if first != last:  # blocks [0, head) were written in cycle `first`, the rest before
        low, high = 0, count - 1
        while high - low > 1:
            middle = (low + high) // 2
            if cycle(middle) == first:
                low = middle
            else:
                high = middle
        head = high
    index = head
    for _ in range(min(count, LOG_SEARCH_SECTORS)):
        index = (index - 1) % count
        header = sector(index)
        if struct.unpack_from(">I", header, 0)[0] == LOG_RECORD_MAGIC:
            break
    else:
        raise CorruptFilesystem("no record found before the head of the xfs log")
    version, length = struct.unpack_from(">II", header, 8)
    size = struct.unpack_from(">I", header, 320)[0]
    header_sectors = (
        -(-size // LOG_HEADER_CYCLE_SIZE) if version == 2 and size > LOG_HEADER_CYCLE_SIZE else 1
    )
    if length < 12:
        return False
    data = bytearray(sector((index + header_sectors) % count))
    data[0:4] = header[44:48]  # the first word of each sector was replaced by the cycle
    _tid, _length, client, flags = struct.unpack_from(">IIBB", data, 0)
    return client == LOG_CLIENT and bool(flags & LOG_UNMOUNT)


def _decode_time(raw: bytes, offset: int, bigtime: bool) -> int:
    if bigtime:
        value: int = struct.unpack_from(">Q", raw, offset)[0]
        return value - BIGTIME_EPOCH_OFFSET * BILLION
    seconds, nanoseconds = struct.unpack_from(">iI", raw, offset)
    return int(seconds) * BILLION + min(int(nanoseconds), BILLION - 1)
