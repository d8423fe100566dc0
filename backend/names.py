"""Names that become path components: clusters, namespaces, volumes and snapshots.

A volume's cluster, namespace and name are directories of the FUSE view and parts of the
local cluster's folders, so each must be one safe path component. A bad name is refused
when it comes in, with one line, rather than repaired.
"""

from __future__ import annotations

from enum import Enum

from .display import printable
from .errors import UsageError

MAX_NAME_BYTES = 253  # a Kubernetes object name at most; one path component fits 255


def _is_control(char: str) -> bool:
    """A C0 or C1 control or DEL (Unicode category Cc)."""
    code = ord(char)
    return code < 0x20 or 0x7F <= code < 0xA0


class ComponentFault(Enum):
    """Why a string cannot be one path component at all, whatever else a caller allows."""

    EMPTY = "empty"
    DOT = "dot"  # "." or "..": the directory itself or its parent
    SLASH = "slash"
    NUL = "nul"


def component_fault(value: str) -> ComponentFault | None:
    """The rule of one path component that ``value`` breaks, or None. Shared by names
    (here) and by the engine's safe writer, which words its own messages."""
    if value == "":
        return ComponentFault.EMPTY
    if value in (".", ".."):
        return ComponentFault.DOT
    if "/" in value:
        return ComponentFault.SLASH
    if "\0" in value:
        return ComponentFault.NUL
    return None


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a name (one path component), or None when it can."""
    fault = component_fault(value)
    if fault is ComponentFault.EMPTY:
        return "it is empty"
    if fault is ComponentFault.DOT:
        return f"{value!r} names a directory itself"
    if fault is ComponentFault.SLASH:
        return "it contains '/'"
    if fault is ComponentFault.NUL:
        return "it contains a NUL character"
    if any(_is_control(c) for c in value):
        return "it contains a control character"
    if len(value.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes"
    if value.strip() != value:
        return "it starts or ends with white space"
    return None


def shown(text: str) -> str:
    """``text`` with control characters escaped, for an error line."""
    return printable(text)


def check_name(value: str, what: str) -> str:
    """``value`` when it is a valid name, else a UsageError naming ``what`` it was for."""
    problem = name_problem(value)
    if problem is not None:
        raise UsageError(f"not a valid {what}: '{shown(value)}' ({problem})")
    return value
