"""Parsing and printing of sizes for humans."""

from __future__ import annotations

import re

import humanize

from .errors import UsageError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}


def parse_size(text: str) -> int:
    """'4MiB' -> 4194304. Decimal units (MB) are powers of 1000, binary (MiB) of 1024."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise UsageError(f"not a size: {text!r} (examples: 4MiB, 512MiB, 2GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(n: int | float) -> str:
    return str(humanize.naturalsize(n, binary=True, format="%.1f"))


def format_rate(bytes_per_second: float) -> str:
    return format_size(bytes_per_second) + "/s"


def plural(count: int, word: str, many: str | None = None) -> str:
    """'1 point', '2 points', '0 points' ('1 directory', '2 directories' with ``many``)."""
    return f"{count} {word if count == 1 else (many or word + 's')}"
