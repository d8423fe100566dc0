"""The rule for names that become path components, and the engine's name check built on it."""

from __future__ import annotations

import pytest

from lamina.backend.engine.safewrite import unsafe_name_reason
from lamina.backend.errors import UsageError
from lamina.backend.names import component_fault, name_problem
from lamina.backend.service import VolumeRef


def test_parse_names_the_bad_part() -> None:
    with pytest.raises(UsageError, match=r"not a valid cluster name: '\.\.'"):
        VolumeRef.parse("../ns/db")
    with pytest.raises(UsageError, match=r"not a valid namespace: '\.\.'"):
        VolumeRef.parse("../db")
    with pytest.raises(UsageError, match=r"not a valid volume name: 'db\\x1b\[2J'"):
        VolumeRef.parse("ns/db\x1b[2J")
    assert VolumeRef.parse("ns/db") == VolumeRef("local", "ns", "db")


SHARED_FAULTS = ["", ".", "..", "a/b", "/", "nul\0name"]


@pytest.mark.parametrize("value", SHARED_FAULTS)
def test_names_and_the_safe_writer_refuse_the_same_components(value: str) -> None:
    assert component_fault(value) is not None
    assert name_problem(value) is not None
    assert unsafe_name_reason(value) is not None


@pytest.mark.parametrize(
    ("value", "name_line", "writer_line"),
    [
        ("", "it is empty", "empty name"),
        ("..", "'..' names a directory itself", "the name '..' refers to a directory itself"),
        ("a/b", "it contains '/'", "the name contains '/'"),
        ("a\0b", "it contains a NUL character", "the name contains a NUL byte"),
    ],
)
def test_each_module_keeps_its_own_wording(value: str, name_line: str, writer_line: str) -> None:
    assert name_problem(value) == name_line
    assert unsafe_name_reason(value) == writer_line


def test_only_names_refuse_what_a_file_in_a_volume_may_be_called() -> None:
    # A volume's files may carry control characters, spaces at the ends or long names; the
    # writer escapes them when it shows them, but creates them. A volume name may not.
    for value in ["ctl\x1bname", " padded ", "x" * 254]:
        assert component_fault(value) is None
        assert unsafe_name_reason(value) is None
        assert name_problem(value) is not None
