"""A read-only reader for ext2, ext3 and ext4, written from the kernel's on-disk format docs.

Covered: 32- and 64-bit group descriptors, flex_bg and meta_bg layouts, any inode size,
extent trees of any depth (unwritten extents read as zeros), indirect block maps, inline
data, linear and htree directories (read linearly), fast and slow symlinks, nanosecond
and post-2038 timestamps. Checksums are not verified; every structure is bounds-checked.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

from .base import (
    BILLION,
    MAX_DIRECTORY_SIZE,
    MAX_SYMLINK,
    BaseFileSystem,
    Inode,
    Run,
    check_mode_kind,
)
from .blockcache import BlockReader
from .errors import CorruptFilesystem, FsReadError, UnsupportedFilesystem
from .journal import JournalOverlay, Replay, plan_replay

log = logging.getLogger("lamina.fsread")

SUPERBLOCK_OFFSET = 1024
MAGIC = 0xEF53
ROOT_INODE = 2

# s_feature_compat
COMPAT_HAS_JOURNAL = 0x4
COMPAT_SPARSE_SUPER2 = 0x200
# s_feature_incompat
INCOMPAT_COMPRESSION = 0x1
INCOMPAT_FILETYPE = 0x2
INCOMPAT_RECOVER = 0x4
INCOMPAT_JOURNAL_DEV = 0x8
INCOMPAT_META_BG = 0x10
INCOMPAT_EXTENTS = 0x40
INCOMPAT_64BIT = 0x80
INCOMPAT_MMP = 0x100
INCOMPAT_FLEX_BG = 0x200
INCOMPAT_EA_INODE = 0x400
INCOMPAT_DIRDATA = 0x1000
INCOMPAT_CSUM_SEED = 0x2000
INCOMPAT_LARGEDIR = 0x4000
INCOMPAT_INLINE_DATA = 0x8000
INCOMPAT_ENCRYPT = 0x10000
INCOMPAT_CASEFOLD = 0x20000
INCOMPAT_READABLE = (
    INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_META_BG
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA
    | INCOMPAT_ENCRYPT
    | INCOMPAT_CASEFOLD
)
INCOMPAT_NAMES = {
    INCOMPAT_COMPRESSION: "compression",
    INCOMPAT_JOURNAL_DEV: "journal_dev",
    INCOMPAT_DIRDATA: "dirdata",
}
EXT3_INCOMPAT = INCOMPAT_FILETYPE | INCOMPAT_RECOVER | INCOMPAT_META_BG
# s_feature_ro_compat
RO_COMPAT_SPARSE_SUPER = 0x1
RO_COMPAT_LARGE_FILE = 0x2
RO_COMPAT_BTREE_DIR = 0x4
RO_COMPAT_HUGE_FILE = 0x8
RO_COMPAT_GDT_CSUM = 0x10
RO_COMPAT_BIGALLOC = 0x200
RO_COMPAT_METADATA_CSUM = 0x400
EXT3_RO_COMPAT = RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_BTREE_DIR

# i_flags
FLAG_COMPRESSED = 0x4
FLAG_ENCRYPTED = 0x800
FLAG_HUGE_FILE = 0x40000
FLAG_EXTENTS = 0x80000
FLAG_INLINE_DATA = 0x10000000

BG_INODE_UNINIT = 0x1

EXTENT_MAGIC = 0xF30A
EXTENT_MAX_DEPTH = 5
EXTENT_INIT_MAX = 32768
N_DIRECT = 12
I_BLOCK_SIZE = 60
XATTR_MAGIC = 0xEA020000
XATTR_INDEX_SYSTEM = 7

_TIME = struct.Struct("<I")
_EXTENT_HEADER = struct.Struct("<HHHHI")
_EXTENT_LEAF = struct.Struct("<IHHI")
_EXTENT_INDEX = struct.Struct("<IIHH")
_DIRENT = struct.Struct("<IHBB")
_XATTR_ENTRY = struct.Struct("<BBHIII")


@dataclass(slots=True)
class Ext4Inode(Inode):
    flags: int
    i_block: bytes
    raw: bytes
    extra_isize: int
    file_acl: int
    i_blocks_raw: int


def _signed32(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value


def _decode_time(seconds: int, extra: int | None) -> int:
    """Nanoseconds since the epoch from a 32-bit base and the optional extra field."""
    sec = _signed32(seconds)
    if extra is None:
        return sec * BILLION
    sec += (extra & 3) << 32  # two more bits of seconds: dates beyond 2038
    return sec * BILLION + min(extra >> 2, BILLION - 1)


def _group_has_superblock(group: int, sparse_super: bool, backups: tuple[int, ...] | None) -> bool:
    if group == 0:
        return True
    if backups is not None:
        return group in backups
    if not sparse_super or group == 1:
        return True
    for base in (3, 5, 7):
        power = base
        while power < group:
            power *= base
        if power == group:
            return True
    return False


class Ext4FileSystem(BaseFileSystem[Ext4Inode]):
    """ext2/ext3/ext4 read through a ``BlockReader``."""

    root_inode = ROOT_INODE

    def __init__(self, reader: BlockReader, superblock: bytes) -> None:
        super().__init__(reader)
        sb = superblock

        def u32(offset: int) -> int:
            value: int = struct.unpack_from("<I", sb, offset)[0]
            return value

        def u16(offset: int) -> int:
            value: int = struct.unpack_from("<H", sb, offset)[0]
            return value

        if u16(0x38) != MAGIC:
            raise UnsupportedFilesystem("no ext2/3/4 superblock magic")
        self.compat = u32(0x5C)
        self.incompat = u32(0x60)
        self.ro_compat = u32(0x64)
        unsupported = self.incompat & ~INCOMPAT_READABLE
        if self.incompat & INCOMPAT_JOURNAL_DEV:
            raise UnsupportedFilesystem(
                "this is an external ext4 journal device, not a filesystem with files"
            )
        if unsupported:
            names = [INCOMPAT_NAMES.get(bit, f"{bit:#x}") for bit in _bits(unsupported)]
            raise UnsupportedFilesystem(f"ext4 feature {', '.join(names)} is not supported")
        log_block = u32(0x18)
        if log_block > 6:
            raise CorruptFilesystem(f"ext4 superblock: block size 1024 << {log_block} is not valid")
        self.block_size = 1024 << log_block
        bs = self.block_size
        self.blocks_count = u32(0x4)
        if self.incompat & INCOMPAT_64BIT:
            self.blocks_count |= u32(0x150) << 32
        self.first_data_block = u32(0x14)
        self.blocks_per_group = u32(0x20)
        self.inodes_per_group = u32(0x28)
        self.inodes_count = u32(0x0)
        rev_level = u32(0x4C)
        self.inode_size = u16(0x58) if rev_level >= 1 else 128
        self.first_meta_bg = u32(0x104)
        if self.incompat & INCOMPAT_64BIT:
            self.desc_size = u16(0xFE) or 32
        else:
            self.desc_size = 32
        cluster_ratio = 1
        if self.ro_compat & RO_COMPAT_BIGALLOC:
            log_cluster = u32(0x1C)
            if not log_block <= log_cluster <= log_block + 16:
                raise CorruptFilesystem(f"ext4 superblock: cluster size 1024 << {log_cluster}")
            cluster_ratio = 1 << (log_cluster - log_block)
        if not 0 < self.blocks_per_group <= 8 * bs * cluster_ratio:
            raise CorruptFilesystem(f"ext4 superblock: {self.blocks_per_group} blocks per group")
        if not 0 < self.inodes_per_group <= 8 * bs:
            raise CorruptFilesystem(f"ext4 superblock: {self.inodes_per_group} inodes per group")
        if self.inode_size < 128 or self.inode_size > bs or self.inode_size & (self.inode_size - 1):
            raise CorruptFilesystem(f"ext4 superblock: inode size {self.inode_size} is not valid")
        if self.desc_size < 32 or self.desc_size > 1024 or self.desc_size & (self.desc_size - 1):
            raise CorruptFilesystem(
                f"ext4 superblock: group descriptor size {self.desc_size} is not valid"
            )
        if self.first_data_block >= max(self.blocks_count, 1) or self.blocks_count == 0:
            raise CorruptFilesystem("ext4 superblock: block counts are not valid")
        self.group_count = -(-(self.blocks_count - self.first_data_block) // self.blocks_per_group)
        if self.inodes_count > self.group_count * self.inodes_per_group:
            raise CorruptFilesystem("ext4 superblock: more inodes than the groups can hold")
        self.backup_groups: tuple[int, ...] | None = None
        if self.compat & COMPAT_SPARSE_SUPER2:
            self.backup_groups = (u32(0x24C), u32(0x250))
        self.has_filetype = bool(self.incompat & INCOMPAT_FILETYPE)
        self.uses_group_checksums = bool(
            self.ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM)
        )
        self.needs_recovery = bool(self.incompat & INCOMPAT_RECOVER)
        self.journal_inode = u32(0xE0) if self.compat & COMPAT_HAS_JOURNAL else 0
        self.label = sb[0x78:0x88].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        uuid = sb[0x68:0x78].hex()
        self.uuid = f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:]}"
        if (self.incompat & ~EXT3_INCOMPAT) or (self.ro_compat & ~EXT3_RO_COMPAT):
            self.kind = "ext4"
        elif self.compat & COMPAT_HAS_JOURNAL:
            self.kind = "ext3"
        else:
            self.kind = "ext2"
        self.reader.fs_size = self.blocks_count * bs
        self._inode_tables: dict[int, tuple[int, int]] = {}
        self.journal_transactions = 0  # committed transactions replayed from the journal
        self.journal_note = ""  # why a journal that needed replay was not replayed

    # --------------------------------------------------------------- the journal

    def plan_journal_replay(self) -> Replay:
        """Scan the internal journal for committed transactions not yet written in place."""
        journal = self.inode(self.journal_inode)
        bs = self.block_size
        blocks = journal.size // bs
        last: list[Run] = []  # the run that mapped the previous block: the log is read in order

        def disk(block: int) -> int:
            if not (last and last[0].logical <= block < last[0].logical + last[0].count):
                found = next(
                    (r for r in self._data_runs(journal, block, block + 1) if r.logical <= block),
                    None,
                )
                if block >= blocks or found is None or block >= found.logical + found.count:
                    raise CorruptFilesystem(f"block {block} of the ext4 journal is not mapped")
                last[:] = [found]
            return last[0].disk + (block - last[0].logical) * bs

        def read(block: int) -> bytes:
            return self.reader.meta(disk(block), bs, "the ext4 journal", readahead=16)

        return plan_replay(read, disk, bs, blocks)

    # --------------------------------------------------------------- groups and inodes

    def _block(self, number: int, what: str, readahead: int = 1) -> bytes:
        if number >= self.blocks_count:
            raise CorruptFilesystem(
                f"{what}: block {number} is beyond the end of the filesystem ({self.blocks_count} blocks)"
            )
        return self.reader.meta(
            number * self.block_size, self.block_size, what, readahead=readahead
        )

    def _descriptor_location(self, group: int) -> int:
        """Byte offset of the group descriptor of ``group``."""
        bs = self.block_size
        per_block = bs // self.desc_size
        desc_block = group // per_block
        superblock_block = SUPERBLOCK_OFFSET // bs
        if self.incompat & INCOMPAT_META_BG and desc_block >= self.first_meta_bg:
            # meta_bg: each run of groups keeps its descriptors in its first group.
            first_group = desc_block * per_block
            block = self.first_data_block + first_group * self.blocks_per_group
            if _group_has_superblock(
                first_group, bool(self.ro_compat & RO_COMPAT_SPARSE_SUPER), self.backup_groups
            ):
                block += 1
            if bs == 1024 and desc_block == 0 and self.first_data_block == 0:
                block += 1
        else:
            block = superblock_block + 1 + desc_block
        return block * bs + (group % per_block) * self.desc_size

    def _inode_table(self, group: int) -> tuple[int, int]:
        """(first block of the inode table, descriptor flags) of a block group."""
        cached = self._inode_tables.get(group)
        if cached is not None:
            return cached
        desc = self.reader.meta(
            self._descriptor_location(group), self.desc_size, f"group descriptor {group}"
        )
        table = struct.unpack_from("<I", desc, 0x8)[0]
        if self.desc_size >= 64:
            table |= struct.unpack_from("<I", desc, 0x28)[0] << 32
        flags = struct.unpack_from("<H", desc, 0x12)[0]
        table_blocks = -(-self.inodes_per_group * self.inode_size // self.block_size)
        if table == 0 or table + table_blocks > self.blocks_count:
            raise CorruptFilesystem(
                f"group descriptor {group}: inode table at block {table} is outside the filesystem"
            )
        self._inode_tables[group] = (table, flags)
        return table, flags

    def _load_inode(self, number: int) -> Ext4Inode:
        if not 1 <= number <= self.inodes_count:
            raise CorruptFilesystem(
                f"inode {number} is out of range (the filesystem has {self.inodes_count})"
            )
        group, index = divmod(number - 1, self.inodes_per_group)
        table, flags = self._inode_table(group)
        if flags & BG_INODE_UNINIT and self.uses_group_checksums:
            raise CorruptFilesystem(f"inode {number} is in a group whose inodes are not in use")
        offset = table * self.block_size + index * self.inode_size
        raw = self.reader.meta(offset, self.inode_size, f"inode {number}")
        return self._parse_inode(number, raw)

    def _parse_inode(self, number: int, raw: bytes) -> Ext4Inode:
        (mode, uid_lo, size_lo, atime, ctime, mtime, _dtime, gid_lo, links, blocks_lo, flags) = (
            struct.unpack_from("<HHIIIIIHHII", raw, 0)
        )
        if mode == 0 and links == 0:
            raise CorruptFilesystem(f"inode {number} is not in use (a deleted or damaged entry)")
        kind = check_mode_kind(number, mode)
        i_block = raw[0x28 : 0x28 + I_BLOCK_SIZE]
        file_acl_lo, size_hi = struct.unpack_from("<II", raw, 0x68)
        blocks_hi, file_acl_hi, uid_hi, gid_hi = struct.unpack_from("<HHHH", raw, 0x74)
        extra_isize = 0
        if self.inode_size > 128:
            extra_isize = struct.unpack_from("<H", raw, 0x80)[0]
            if extra_isize % 4 or 128 + extra_isize > self.inode_size:
                extra_isize = 0  # damaged: use the classic 128-byte fields only

        def extra(field_offset: int) -> int | None:
            if 128 + extra_isize >= field_offset + 4:
                value: int = struct.unpack_from("<I", raw, field_offset)[0]
                return value
            return None

        i_blocks = blocks_lo
        if self.ro_compat & RO_COMPAT_HUGE_FILE:
            i_blocks |= blocks_hi << 32
        blocks = i_blocks
        if flags & FLAG_HUGE_FILE:
            blocks *= self.block_size // 512
        rdev = 0
        if kind in ("chardev", "blockdev"):
            old, new = struct.unpack_from("<II", i_block, 0)
            if old:
                rdev = os.makedev((old >> 8) & 0xFF, old & 0xFF)
            else:
                rdev = os.makedev((new & 0xFFF00) >> 8, (new & 0xFF) | ((new >> 12) & 0xFFF00))
        return Ext4Inode(
            number=number,
            mode=mode,
            kind=kind,
            size=size_lo | (size_hi << 32),
            uid=uid_lo | (uid_hi << 16),
            gid=gid_lo | (gid_hi << 16),
            nlink=links,
            atime_ns=_decode_time(atime, extra(0x8C)),
            mtime_ns=_decode_time(mtime, extra(0x88)),
            ctime_ns=_decode_time(ctime, extra(0x84)),
            rdev=rdev,
            blocks=blocks,
            flags=flags,
            i_block=i_block,
            raw=raw,
            extra_isize=extra_isize,
            file_acl=file_acl_lo | (file_acl_hi << 32),
            i_blocks_raw=i_blocks,
        )

    # --------------------------------------------------------------- block mapping

    def _data_runs(self, inode: Ext4Inode, first: int, end: int) -> Iterator[Run]:
        if inode.flags & FLAG_EXTENTS:
            yield from self._extent_runs(inode, inode.i_block, first, end, None)
        else:
            # Block maps address nothing past the end of the file.
            end = min(end, -(-inode.size // self.block_size))
            yield from self._mapped_runs(inode, first, end)

    def _extent_runs(
        self,
        inode: Ext4Inode,
        node: bytes,
        first: int,
        end: int,
        expected_depth: int | None,
        low: int = 0,
        high: int = 1 << 32,
    ) -> Iterator[Run]:
        """Written extents overlapping [first, end), from a node covering [low, high).

        Entries must be sorted and stay inside their parent's key range: that keeps a damaged
        tree from being walked more than once per block (a child shared by many indexes).
        """
        if len(node) < _EXTENT_HEADER.size:
            raise CorruptFilesystem(f"inode {inode.number}: extent node is too small")
        magic, entries, max_entries, depth, _ = _EXTENT_HEADER.unpack_from(node, 0)
        if magic != EXTENT_MAGIC:
            raise CorruptFilesystem(f"inode {inode.number}: extent header magic is wrong")
        if (
            entries > max_entries
            or 12 + 12 * entries > len(node)
            or depth > EXTENT_MAX_DEPTH
            or (expected_depth is not None and depth != expected_depth)
        ):
            raise CorruptFilesystem(
                f"inode {inode.number}: extent node is damaged ({entries} entries, depth {depth})"
            )
        disorder = CorruptFilesystem(f"inode {inode.number}: extents overlap or are out of order")
        bs = self.block_size
        if depth == 0:
            previous_end = low
            for i in range(entries):
                logical, length, start_hi, start_lo = _EXTENT_LEAF.unpack_from(node, 12 + 12 * i)
                unwritten = length > EXTENT_INIT_MAX
                count = length - EXTENT_INIT_MAX if unwritten else length
                if count == 0 or logical < previous_end or logical + count > high:
                    raise disorder
                previous_end = logical + count
                if logical >= end:
                    return
                if logical + count <= first:
                    continue
                start = (start_hi << 32) | start_lo
                if start + count > self.blocks_count:
                    raise CorruptFilesystem(
                        f"inode {inode.number}: extent points beyond the end of the filesystem"
                    )
                if not unwritten:
                    yield Run(logical, count, start * bs)
            return
        keys = [_EXTENT_INDEX.unpack_from(node, 12 + 12 * i) for i in range(entries)]
        starts = [key[0] for key in keys] + [high]
        if (entries and starts[0] < low) or any(b <= a for a, b in pairwise(starts)):
            raise disorder
        for i, (logical, leaf_lo, leaf_hi, _) in enumerate(keys):
            if logical >= end:
                return
            if starts[i + 1] <= first:
                continue
            child = self._block((leaf_hi << 32) | leaf_lo, f"extent tree of inode {inode.number}")
            yield from self._extent_runs(
                inode, child, first, end, depth - 1, logical, starts[i + 1]
            )

    def _mapped_runs(self, inode: Ext4Inode, first: int, end: int) -> Iterator[Run]:
        """Runs from a classic direct/indirect block map (ext2, ext3, ext4 without extents)."""
        pointers = struct.unpack_from("<15I", inode.i_block, 0)
        per_block = self.block_size // 4
        pending: list[int] = []  # [logical, count, physical] of the run being built

        def add(logical: int, physical: int) -> Iterator[Run]:
            if physical >= self.blocks_count:
                raise CorruptFilesystem(
                    f"inode {inode.number}: block map points beyond the end of the filesystem"
                )
            if (
                pending
                and pending[0] + pending[1] == logical
                and pending[2] + pending[1] == physical
            ):
                pending[1] += 1
                return
            if pending:
                yield Run(pending[0], pending[1], pending[2] * self.block_size)
            pending[:] = [logical, 1, physical]

        def walk(block: int, level: int, base: int) -> Iterator[Run]:
            span = per_block**level
            table = struct.unpack_from(
                f"<{per_block}I", self._block(block, f"block map of inode {inode.number}", 16)
            )
            for i, pointer in enumerate(table):
                start = base + i * span
                if start >= end:
                    return
                if pointer == 0 or start + span <= first:
                    continue
                if level == 0:
                    yield from add(start, pointer)
                else:
                    yield from walk(pointer, level - 1, start)

        for i in range(N_DIRECT):
            if i >= end:
                break
            if pointers[i] and i >= first:
                yield from add(i, pointers[i])
        base = N_DIRECT
        for level, pointer in enumerate(pointers[N_DIRECT:]):
            span = per_block ** (level + 1)
            if base >= end:
                break
            if pointer and base + span > first:
                yield from walk(pointer, level, base)
            base += span
        if pending:
            yield Run(pending[0], pending[1], pending[2] * self.block_size)

    # --------------------------------------------------------------- inline data

    def _system_data(self, inode: Ext4Inode) -> bytes:
        """The value of the in-inode ``system.data`` attribute (the tail of inline data)."""
        raw = inode.raw
        start = 128 + inode.extra_isize
        if inode.extra_isize == 0 or start + 4 > len(raw):
            return b""
        if struct.unpack_from("<I", raw, start)[0] != XATTR_MAGIC:
            return b""
        values = start + 4
        pos = values
        while pos + _XATTR_ENTRY.size <= len(raw):
            if struct.unpack_from("<I", raw, pos)[0] == 0:
                break
            name_len, index, value_offset, value_inode, value_size, _ = _XATTR_ENTRY.unpack_from(
                raw, pos
            )
            name = raw[pos + 16 : pos + 16 + name_len]
            if index == XATTR_INDEX_SYSTEM and name == b"data":
                if value_inode or values + value_offset + value_size > len(raw):
                    raise CorruptFilesystem(f"inode {inode.number}: inline data is damaged")
                return raw[values + value_offset : values + value_offset + value_size]
            pos += (16 + name_len + 3) & ~3
        return b""

    def _inline_content(self, inode: Ext4Inode) -> bytes | None:
        if not inode.flags & FLAG_INLINE_DATA:
            return None
        return (inode.i_block + self._system_data(inode))[: inode.size]

    def _check_readable(self, inode: Ext4Inode) -> None:
        if inode.flags & FLAG_ENCRYPTED:
            raise UnsupportedFilesystem(f"inode {inode.number} is encrypted (fscrypt)")
        if inode.flags & FLAG_COMPRESSED and self.incompat & INCOMPAT_COMPRESSION:
            raise UnsupportedFilesystem(f"inode {inode.number} is compressed")

    # --------------------------------------------------------------- directories

    def _dir_entries(self, inode: Ext4Inode) -> Iterator[tuple[bytes, int]]:
        self._check_readable(inode)
        if inode.flags & FLAG_INLINE_DATA:
            # Four bytes of parent inode number, then entries; more in system.data.
            yield from self._parse_dir_block(inode, inode.i_block[4:], "inline")
            extra = self._system_data(inode)
            if extra:
                yield from self._parse_dir_block(inode, extra, "inline attribute")
            return
        if inode.size > MAX_DIRECTORY_SIZE:
            raise CorruptFilesystem(
                f"directory inode {inode.number}: size {inode.size} is not plausible"
            )
        bs = self.block_size
        blocks = -(-inode.size // bs)
        for run in self._data_runs(inode, 0, blocks):
            for i in range(run.count):
                if run.logical + i >= blocks:
                    return
                data = self.reader.meta(run.disk + i * bs, bs, f"directory inode {inode.number}")
                yield from self._parse_dir_block(inode, data, f"block {run.logical + i}")

    def _parse_dir_block(
        self, inode: Ext4Inode, block: bytes, where: str
    ) -> Iterator[tuple[bytes, int]]:
        pos = 0
        size = len(block)
        while pos + 8 <= size:
            number, rec_len, name_len, file_type = _DIRENT.unpack_from(block, pos)
            if not self.has_filetype:
                name_len |= file_type << 8
            if rec_len in (0, 65535) and size >= 65536:
                rec_len = size
            else:
                rec_len = (rec_len & 65532) | ((rec_len & 3) << 16)
            if rec_len < 8 or rec_len % 4 or pos + rec_len > size or 8 + name_len > rec_len:
                raise CorruptFilesystem(
                    f"directory inode {inode.number}: damaged entry in {where} at offset {pos}"
                )
            if number and name_len:
                name = block[pos + 8 : pos + 8 + name_len]
                if name not in (b".", b".."):
                    yield name, number
            pos += rec_len

    # --------------------------------------------------------------- symlinks

    def _symlink_target(self, inode: Ext4Inode) -> bytes:
        self._check_readable(inode)
        size = inode.size
        if size > MAX_SYMLINK or size > self.block_size:
            raise CorruptFilesystem(f"inode {inode.number}: symlink of {size} bytes is too long")
        inline = self._inline_content(inode)
        if inline is not None:
            return inline
        acl_blocks = self.block_size // 512 if inode.file_acl else 0
        if (
            size < I_BLOCK_SIZE
            and not inode.flags & FLAG_EXTENTS
            and inode.i_blocks_raw - acl_blocks <= 0
        ):
            return inode.i_block[:size]  # a fast symlink: the target sits in i_block
        data = bytearray(size)
        for run in self._data_runs(inode, 0, 1):
            if run.logical == 0:
                self.reader.data_into(memoryview(data), run.disk, f"symlink inode {inode.number}")
        return bytes(data)


def open_ext4(
    reader: BlockReader, superblock: bytes, *, replay_journal: bool = True
) -> Ext4FileSystem:
    """An ext2/3/4 reader; a journal that needs recovery is replayed in memory first."""
    fs = Ext4FileSystem(reader, superblock)
    if not (replay_journal and fs.needs_recovery):
        return fs
    if not fs.journal_inode:
        fs.journal_note = "the journal is on another device and was not replayed"
        log.warning("%s: recent changes may be missing", fs.journal_note)
        return fs
    try:
        replay = fs.plan_journal_replay()
    except FsReadError as e:
        fs.journal_note = f"the journal was not replayed: {e}"
        log.warning("%s; reading the filesystem as it is on disk", fs.journal_note)
        return fs
    if not replay.copies:
        return fs
    overlay = JournalOverlay(reader.image, fs.block_size, replay)
    replayed_reader = BlockReader(overlay, chunks=reader.capacity)
    replayed = Ext4FileSystem(
        replayed_reader,
        replayed_reader.meta(SUPERBLOCK_OFFSET, 1024, "the superblock after journal replay"),
    )
    replayed.journal_transactions = replay.transactions
    return replayed


def _bits(value: int) -> Iterator[int]:
    bit = 1
    while bit <= value:
        if value & bit:
            yield bit
        bit <<= 1
