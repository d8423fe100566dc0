"""Names that become path components: clusters, namespaces, volumes and snapshots.

A volume's cluster, namespace and name are directories of the FUSE view and parts of the
local cluster's folders, so each must be one safe path component. A bad name is refused
when it comes in, with one line, rather than repaired.
"""

from __future__ import annotations

import unicodedata

from .errors import UsageError

MAX_NAME_BYTES = 253  # a Kubernetes object name at most; one path component fits 255


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a name (one path component), or None when it can."""
    if value == "":
        return "it is empty"
    if value in (".", ".."):
        return f"{value!r} names a directory itself"
    if "/" in value:
        return "it contains '/'"
    if "\0" in value:
        return "it contains a NUL character"
    if any(unicodedata.category(c) == "Cc" for c in value):
        return "it contains a control character"
    if len(value.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes"
    if value.strip() != value:
        return "it starts or ends with white space"
    return None


def shown(text: str) -> str:
    """``text`` with control characters escaped, for an error line."""
    from .extract import printable

    return printable(text)


def check_name(value: str, what: str) -> str:
    """``value`` when it is a valid name, else a UsageError naming ``what`` it was for."""
    problem = name_problem(value)
    if problem is not None:
        raise UsageError(f"not a valid {what}: '{shown(value)}' ({problem})")
    return value
