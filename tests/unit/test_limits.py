"""The request limits of backend/limits.py, which the service applies for every front end."""

from __future__ import annotations

from datetime import timedelta

import pytest

from lamina.backend.errors import UsageError
from lamina.backend.limits import (
    checked_labels,
    checked_name,
    checked_note,
    checked_point_ref,
    parse_keep_within,
    shown,
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a valid volume name: '' (it is empty)"),
        ("v" * 254, "the volume name is 254 bytes long; at most 253: " + "v" * 60 + "…"),
        ("é" * 127, "the volume name is 254 bytes long; at most 253: " + "é" * 60 + "…"),
        ("a\0b", "not a valid volume name: 'a\\x00b' (it contains a NUL character)"),
        ("a\x1b[2Jb", "not a valid volume name: 'a\\x1b[2Jb' (it contains a control character)"),
        ("a\x9bb", "not a valid volume name: 'a\\x9bb' (it contains a control character)"),
        ("..", "not a valid volume name: '..' ('..' names a directory itself)"),
        ("a/b", "not a valid volume name: 'a/b' (it contains '/')"),
    ],
)
def test_names_are_refused_in_one_short_escaped_line(text: str, message: str) -> None:
    with pytest.raises(UsageError) as refused:
        checked_name(text, "volume name")
    assert str(refused.value) == message


def test_a_name_of_253_bytes_is_fine() -> None:
    assert checked_name("v" * 253, "volume name") == "v" * 253


@pytest.mark.parametrize("ref", ["nope", "../../config", "abcd\0", "a" * 65, " "])
def test_point_refs_are_hex_only(ref: str) -> None:
    with pytest.raises(UsageError):
        checked_point_ref(ref)


def test_point_refs_keep_their_hex() -> None:
    assert checked_point_ref(" 5F3A ") == "5f3a"


@pytest.mark.parametrize("text", ["99999999999y", "999999999999999999999999999d", "101y"])
def test_absurd_retention_windows_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="longer than 100 years"):
        parse_keep_within(text)


def test_a_megabyte_duration_is_not_echoed() -> None:
    with pytest.raises(UsageError) as refused:
        parse_keep_within("9" * 1_000_000)
    assert len(str(refused.value)) < 150


def test_reasonable_windows_parse() -> None:
    assert parse_keep_within("1y6m") == timedelta(days=365 + 180)


def test_notes_and_labels_have_limits() -> None:
    assert checked_note("n" * 4096) == "n" * 4096
    with pytest.raises(UsageError, match="the note is 4097 bytes long; at most 4096"):
        checked_note("n" * 4097)
    with pytest.raises(UsageError, match="NUL"):
        checked_note("a\0b")
    assert checked_labels({"app": "db"}) == {"app": "db"}
    with pytest.raises(UsageError, match="65 labels; at most 64"):
        checked_labels({str(i): "v" for i in range(65)})
    with pytest.raises(UsageError, match="has a value over 1024 bytes"):
        checked_labels({"k": "v" * 1025})
    with pytest.raises(UsageError, match="not a label key"):
        checked_labels({"k\0": "v"})


def test_shown_clips_and_escapes() -> None:
    assert shown("x" * 1_000_000) == "x" * 60 + "…"
    assert shown("\x1b]0;title\x07") == "\\x1b]0;title\\x07"


def test_cluster_contexts_may_hold_a_slash_but_volume_parts_may_not() -> None:
    from lamina.backend.limits import checked_context

    eks = "arn:aws:eks:eu-west-1:123456789012:cluster/prod"
    assert checked_context(eks) == eks
    with pytest.raises(UsageError, match="not a cluster name"):
        checked_context("a\0b")
    with pytest.raises(UsageError, match="contains '/'"):
        checked_name(eks, "cluster name")
