"""Read-only ext2/3/4 and xfs readers that work on a volume image, without mounting it.

``open_filesystem(image)`` detects the filesystem by its superblock and returns a
``FileSystem``: root, lookup, listdir, read and readlink, safe to call from many threads.
"""

from __future__ import annotations

from .api import KINDS, Entry, FileSystem, ImageFile, ReadAt
from .blockcache import BlockReader
from .errors import (
    CorruptFilesystem,
    FileNotFound,
    FsReadError,
    InvalidRange,
    NotADirectory,
    NotARegularFile,
    NotASymlink,
    UnsupportedFilesystem,
)
from .ext4 import Ext4FileSystem, open_ext4
from .xfs import XfsFileSystem

__all__ = [
    "KINDS",
    "CorruptFilesystem",
    "Entry",
    "Ext4FileSystem",
    "FileNotFound",
    "FileSystem",
    "FsReadError",
    "ImageFile",
    "InvalidRange",
    "NotADirectory",
    "NotARegularFile",
    "NotASymlink",
    "ReadAt",
    "UnsupportedFilesystem",
    "XfsFileSystem",
    "open_filesystem",
]

# Other things a volume may hold, named in the error so a user knows what they have.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
    (0x10040, b"_BHRfS_M", "a btrfs filesystem"),
    (512, b"EFI PART", "a GPT partition table (partitions are not supported)"),
    (512, b"LABELONE", "an LVM physical volume"),
    (4086, b"SWAPSPACE2", "swap space"),
    (0x8001, b"CD001", "an ISO 9660 image"),
    (3, b"NTFS    ", "an NTFS filesystem"),
    (0, b"\x00\x00\x00\x00\x00\x00\x00\x00", ""),
)


def open_filesystem(
    image: ReadAt, *, cache_chunks: int | None = None, replay_journal: bool = True
) -> FileSystem:
    """The ext2/3/4 or xfs filesystem in ``image`` (raises UnsupportedFilesystem otherwise).

    An ext3/ext4 journal that needs recovery (a snapshot of a mounted filesystem) is
    replayed in memory unless ``replay_journal`` is False; the image is never written.
    """
    reader = BlockReader(image) if cache_chunks is None else BlockReader(image, chunks=cache_chunks)
    head = reader.meta(0, min(reader.size, 2048), "the first bytes of the image")
    if len(head) >= 4 and head[:4] == b"XFSB":
        return XfsFileSystem(reader, reader.meta(0, 512, "the xfs superblock").ljust(512, b"\0"))
    if len(head) >= 2048 and head[1080:1082] == b"\x53\xef":
        return open_ext4(reader, head[1024:2048], replay_journal=replay_journal)
    raise UnsupportedFilesystem(_not_found_message(reader, head))


def _not_found_message(reader: BlockReader, head: bytes) -> str:
    if reader.size < 2048:
        return f"no ext4 or xfs filesystem found: the image holds only {reader.size} bytes"
    what = ""
    for offset, magic, name in _SIGNATURES:
        if offset + len(magic) <= reader.size and reader.meta(offset, len(magic)) == magic:
            what = name
            break
    if not what and head[510:512] == b"\x55\xaa":
        what = "a partition table or boot sector (partitions are not supported)"
    if not what and not any(head):
        what = "zeros only at the start, no filesystem"
    shown = head[:16].hex(" ")
    reason = f"; it looks like {what}" if what else ""
    return f"no ext4 or xfs filesystem found (first bytes: {shown}){reason}"
