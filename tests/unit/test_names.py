"""The rule for names that become path components, and the engine's name check built on it."""

from __future__ import annotations

import pytest

from lamina.backend.errors import UsageError
from lamina.backend.service import VolumeRef


def test_parse_names_the_bad_part() -> None:
    with pytest.raises(UsageError, match=r"not a valid cluster name: '\.\.'"):
        VolumeRef.parse("../ns/db")
    with pytest.raises(UsageError, match=r"not a valid namespace: '\.\.'"):
        VolumeRef.parse("../db")
    with pytest.raises(UsageError, match=r"not a valid volume name: 'db\\x1b\[2J'"):
        VolumeRef.parse("ns/db\x1b[2J")
    assert VolumeRef.parse("ns/db") == VolumeRef("local", "ns", "db")
