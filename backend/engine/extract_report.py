"""What an extraction reports: counts and the paths it skipped.

Apart from ``extract.py`` so that the service and the front ends show reports without
loading the filesystem parsers an extraction needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Skipped:
    path: str  # as in the image, printable
    reason: str


@dataclass
class ExtractReport:
    target: str
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    others: int = 0
    bytes: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.skipped

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "files": self.files,
            "directories": self.directories,
            "symlinks": self.symlinks,
            "others": self.others,
            "bytes": self.bytes,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }
