"""Names of the Kubernetes APIs lamina uses, and small helpers for their values."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import KubeInvalid

SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
SNAPSHOT_VERSION = "v1"
CBT_GROUP = "cbt.storage.k8s.io"
CBT_VERSION = "v1beta1"
CBT_PLURAL = "snapshotmetadataservices"
DEFAULT_SNAPSHOT_CLASS_ANNOTATION = "snapshot.storage.kubernetes.io/is-default-class"

_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?)$")


def parse_quantity(value: str | int) -> int:
    """Bytes of a Kubernetes quantity ("10Gi", "500M", "1e9", "1073741824"), rounded up."""
    if isinstance(value, int):
        return value
    match = _QUANTITY.match(value.strip())
    if not match:
        raise KubeInvalid(f"not a Kubernetes quantity: {value!r}")
    number, exponent, suffix = match.groups()
    try:
        amount = Decimal(number)
    except InvalidOperation:
        raise KubeInvalid(f"not a Kubernetes quantity: {value!r}") from None
    if exponent:
        amount *= Decimal(10) ** int(exponent[1:])
    elif suffix == "m":
        amount /= 1000
    else:
        amount *= _SUFFIXES[suffix or ""]
    whole = int(amount)
    return whole + 1 if amount > whole else whole


def dns_label(text: str, limit: int = 63) -> str:
    """`text` made into a DNS-1123 label: lower case, [a-z0-9-], at most `limit` characters."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"
    return label[:limit].rstrip("-")


def meta(obj: dict[str, Any]) -> dict[str, Any]:
    value = obj.get("metadata")
    return value if isinstance(value, dict) else {}


def section(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, dict) else {}
