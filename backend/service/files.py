"""``FileEntry``: a file or folder of a point's filesystem, as front ends show it.

An fsread ``Entry`` with its path. Apart from models.py so that only file browsing loads
the filesystem parsers; ``models.FileEntry`` names it all the same.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..fsread import Entry

_ENTRY_FIELDS = [f.name for f in fields(Entry)]


@dataclass(frozen=True)
class FileEntry(Entry):
    """A file or folder inside a point's filesystem, with its path there."""

    path: str = ""  # absolute inside the volume, "/" separated

    @classmethod
    def of(cls, entry: Entry, folder: str) -> FileEntry:
        values = {name: getattr(entry, name) for name in _ENTRY_FIELDS}
        return cls(**values, path=folder.rstrip("/") + "/" + entry.name)

    @classmethod
    def folder(cls, path: str, name: str) -> FileEntry:
        """A folder known only by its path (the root of a browser)."""
        return cls(
            name=name,
            kind="dir",
            inode=0,
            size=0,
            mode=0o40755,
            uid=0,
            gid=0,
            nlink=1,
            mtime_ns=0,
            atime_ns=0,
            ctime_ns=0,
            link_target=None,
            path=path,
        )

    @property
    def mtime(self) -> float:
        """Seconds since the epoch."""
        return self.mtime_ns / 1e9
