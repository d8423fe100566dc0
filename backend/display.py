"""How front ends show things: strings from elsewhere made safe, and trees of points.

A file name, a symlink target, a point's note, a Kubernetes label or a server's reply is
data someone else wrote. Printed raw, it can move the cursor, clear the screen, set the
window title, write the clipboard (OSC 52), reorder the text around it (bidirectional
overrides) or break a line. ``printable`` is the one rule every front end applies before
such a string reaches a terminal: it returns a single line in which every character that
is not plainly visible is written as a Python-style escape (``\\x1b``, ``\\u202e``).

The rule is idempotent (its output contains only visible characters, and a backslash is
kept as it is), so a front end may apply it again where it draws, without doubling escapes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["PrintableFormatter", "printable", "printable_lines", "tree_rows"]

T = TypeVar("T")

# Characters that ``str.isprintable`` accepts but that still change how the text around
# them reads. (Every Cc, Cf, Cs, Co, Cn, Zl, Zp and Zs except the space is refused anyway.)
_ALSO_ESCAPED = frozenset(
    {
        "\u034f",  # combining grapheme joiner: invisible
        "\u115f",  # Hangul fillers: blank, often used to hide text
        "\u1160",
        "\u3164",
        "\uffa0",
    }
)
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(char: str) -> str:
    code = ord(char)
    if char in _SHORT:
        return _SHORT[char]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _visible(char: str) -> bool:
    if char.isprintable():
        return char not in _ALSO_ESCAPED
    return False


def printable(value: str | bytes | None, *, keep: str = "") -> str:
    """``value`` as one safe line: controls, format characters and bad bytes escaped.

    C0 and C1 controls and DEL (so every ESC, CSI and OSC sequence), line and paragraph
    separators, bidirectional marks, overrides and isolates, other format characters,
    unassigned and private-use code points, and bytes that are not UTF-8 (as bytes, or as
    the surrogates ``surrogateescape`` decodes them to) come out as ``\\xNN``, ``\\uNNNN``
    or ``\\UNNNNNNNN``. ``None`` is the empty string. Characters in ``keep`` (say ``"\\n"``
    for a text of several lines) pass through.
    """
    if value is None:
        return ""
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)
    if text.isascii():  # the common case, quickly
        rest = text
        for char in keep:
            rest = rest.replace(char, "")
        if rest.isprintable():
            return text
    return "".join(c if c in keep or _visible(c) else _escape(c) for c in text)


def printable_lines(value: str | bytes, *, tab_size: int = 8) -> str:
    """A text shown as several lines (a file preview): each line made ``printable``.

    Only ``\\n`` (and a ``\\r`` before it) ends a line; tabs are expanded. Every other
    control, including a lone ``\\r``, form feed or U+2028, is escaped as ``printable`` does.
    """
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    lines = []
    for line in text.split("\n"):
        if line.endswith("\r"):
            line = line[:-1]
        lines.append(printable(line, keep="\t").expandtabs(tab_size))  # tabs stop as shown
    return "\n".join(lines)


def tree_rows(
    nodes: Sequence[T],
    *,
    key: Callable[[T], str],
    parent: Callable[[T], str | None],
    order: Callable[[T], Any],
) -> list[tuple[T, str]]:
    """Nodes in tree order, each with the connector that draws it under its own parent.

    Roots (no parent among ``nodes``) newest first; under each node its children oldest
    first, one level deeper: a chain where each point is the parent of the next is drawn
    as a staircase, never as siblings. The connector of a root is empty.
    """
    present = {key(n) for n in nodes}
    children: dict[str | None, list[T]] = {}
    for node in sorted(nodes, key=order):
        up = parent(node)
        children.setdefault(up if up in present else None, []).append(node)
    rows: list[tuple[T, str]] = []
    # Depth first without recursion: a chain may be thousands of points long.
    stack: list[tuple[T, str, str]] = [(r, "", "") for r in children.get(None, [])]
    while stack:
        node, connector, indent = stack.pop()
        rows.append((node, connector))
        kids = children.get(key(node), [])
        for i, child in reversed(list(enumerate(kids))):
            last = i == len(kids) - 1
            stack.append(
                (child, indent + ("└─" if last else "├─"), indent + ("  " if last else "│ "))
            )
    return rows


class PrintableFormatter(logging.Formatter):
    """Log lines quote paths, names and requests: escaped like everything else shown
    (a traceback keeps its lines)."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record), keep="\n")
