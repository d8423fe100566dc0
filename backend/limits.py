"""Limits on what a request may carry: names, notes, labels, point ids, durations.

The service layer applies them, so the CLI, the TUI and the API refuse the same input with
the same one line (a UsageError: INVALID_ARGUMENT over the API). A refused value is shown
shortened and escaped: an error never echoes megabytes back.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from datetime import timedelta

from .display import printable
from .errors import UsageError
from .names import name_problem

MAX_NAME_BYTES = 253  # a Kubernetes object name (DNS subdomain) at most
MAX_HANDLE_BYTES = 1024  # a CSI snapshot handle is the driver's id, longer than a name
MAX_NOTE_BYTES = 4096
MAX_LABEL_KEY_BYTES = 317  # a Kubernetes label key: prefix (253) / name (63)
MAX_LABEL_VALUE_BYTES = 1024
MAX_LABELS = 64
MAX_POINT_REF = 64  # point ids are 32 hex digits today; a little room, no megabytes
MAX_DURATION_DAYS = 100 * 366
_SHOWN = 60
_HEX = frozenset(string.hexdigits)


def shown(text: str) -> str:
    """``text`` for an error line: at most about 60 characters, escaped by the one helper
    that escapes untrusted strings (``printable``)."""
    return printable(text if len(text) <= _SHOWN else text[:_SHOWN]) + (
        "…" if len(text) > _SHOWN else ""
    )


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def _controls(text: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text)


def checked_name(text: str, what: str) -> str:
    """A cluster, namespace, volume or snapshot name: at most 253 bytes, and one safe path
    component (backend/names.py: no '/', NUL or control characters, not '.' or '..')."""
    if _size(text) > MAX_NAME_BYTES:
        raise UsageError(
            f"the {what} is {_size(text)} bytes long; at most {MAX_NAME_BYTES}: {shown(text)}"
        )
    problem = name_problem(text)
    if problem is not None:
        raise UsageError(f"not a valid {what}: '{shown(text)}' ({problem})")
    return text


def checked_context(text: str) -> str:
    """A cluster as its kubeconfig context names it: EKS names are ARNs, '/' included."""
    if not text:
        raise UsageError("the cluster name is empty")
    if _size(text) > MAX_NAME_BYTES or _controls(text):
        raise UsageError(
            f"not a cluster name (at most {MAX_NAME_BYTES} bytes, no control characters): "
            f"{shown(text)}"
        )
    return text


def checked_snapshot_handle(text: str) -> str:
    """A CSI snapshot handle: the driver's own id (Azure's are resource paths, '/' included)."""
    if not text or _size(text) > MAX_HANDLE_BYTES or _controls(text):
        raise UsageError(
            f"not a snapshot handle (1 to {MAX_HANDLE_BYTES} bytes, no control characters): "
            f"{shown(text)}"
        )
    return text


def checked_volume_parts(cluster: str, namespace: str, name: str) -> None:
    checked_name(cluster, "cluster name")
    checked_name(namespace, "namespace")
    checked_name(name, "volume name")


def checked_volume_text(text: str) -> str:
    """A volume as typed (NAME, NS/NAME or CLUSTER/NS/NAME), before it is parsed."""
    if _size(text) > 3 * MAX_NAME_BYTES + 2:
        raise UsageError(f"the volume name is {_size(text)} bytes long: {shown(text)}")
    if _controls(text):
        raise UsageError(
            f"not a valid volume name: '{shown(text)}' (it contains a control character)"
        )
    return text


def checked_point_ref(ref: str) -> str:
    """A point id or unique prefix: hex digits only."""
    ref = ref.strip()
    if not ref:
        raise UsageError("give the point (its id or a unique prefix)")
    if len(ref) > MAX_POINT_REF or not all(c in _HEX for c in ref):
        raise UsageError(f"not a point id (hex digits): {shown(ref)}")
    return ref.lower()


def checked_note(note: str) -> str:
    if _size(note) > MAX_NOTE_BYTES:
        raise UsageError(f"the note is {_size(note)} bytes long; at most {MAX_NOTE_BYTES}")
    if "\0" in note:
        raise UsageError("the note must not contain a NUL byte")
    return note


def checked_labels(labels: Mapping[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise UsageError(f"{len(labels)} labels; at most {MAX_LABELS}")
    for key, value in labels.items():
        if not key or _size(key) > MAX_LABEL_KEY_BYTES or _controls(key):
            raise UsageError(
                f"not a label key (1 to {MAX_LABEL_KEY_BYTES} bytes, no control characters): "
                f"{shown(key)}"
            )
        if _size(value) > MAX_LABEL_VALUE_BYTES or "\0" in value:
            raise UsageError(
                f"the label {shown(key)} has a value over {MAX_LABEL_VALUE_BYTES} bytes or a NUL"
            )
    return dict(labels)


def parse_keep_within(text: str) -> timedelta:
    """A retention window ('30d', '12h', '2w', '1y6m'): at most 100 years."""
    from .engine.lifecycle import parse_duration

    if len(text) > 32:
        raise UsageError(f"not a duration: {shown(text)} (examples: 30d, 12h, 2w, 1y6m)")
    try:
        window = parse_duration(text)
    except OverflowError:
        window = timedelta.max
    if window > timedelta(days=MAX_DURATION_DAYS):
        raise UsageError(f"the duration {shown(text)} is longer than 100 years")
    return window
