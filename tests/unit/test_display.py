"""The one rule for showing strings from volumes, repositories and servers."""

from __future__ import annotations

import pytest

from lamina.backend.display import printable, printable_lines, tree_rows

HOSTILE = [
    ("clear\x1b[2Jscreen", "clear\\x1b[2Jscreen"),  # CSI: erase the display
    ("t\x1b]0;owned\x07itle", "t\\x1b]0;owned\\x07itle"),  # OSC 0: window title
    ("c\x1b]52;c;ZXZpbA==\x1b\\lip", "c\\x1b]52;c;ZXZpbA==\\x1b\\lip"),  # OSC 52: clipboard
    ("c1\x9b2J", "c1\\x9b2J"),  # C1 CSI, one byte
    ("osc\x9d0;x\x9c", "osc\\x9d0;x\\x9c"),  # C1 OSC and ST
    ("nul\x00del\x7f", "nul\\x00del\\x7f"),
    ("bell\x07bs\x08", "bell\\x07bs\\x08"),
    ("two\nlines\r", "two\\nlines\\r"),
    ("tab\tstop", "tab\\tstop"),
    ("invoice\u202efdp.exe", "invoice\\u202efdp.exe"),  # right-to-left override
    ("a\u2066b\u2069c\u200ed\u200fe\u061cf", "a\\u2066b\\u2069c\\u200ed\\u200fe\\u061cf"),
    ("\u202a\u202b\u202c\u202d", "\\u202a\\u202b\\u202c\\u202d"),
    ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),  # other format characters
    ("line\u2028para\u2029", "line\\u2028para\\u2029"),
    ("tag\U000e0041", "tag\\U000e0041"),
    ("bad\udcffutf8\udcc3", "bad\\xffutf8\\xc3"),  # surrogateescape bytes
]


@pytest.mark.parametrize(("raw", "shown"), HOSTILE)
def test_hostile_text_is_escaped(raw: str, shown: str) -> None:
    assert printable(raw) == shown


@pytest.mark.parametrize(("raw", "shown"), HOSTILE)
def test_the_rule_is_idempotent(raw: str, shown: str) -> None:
    assert printable(printable(raw)) == printable(raw)


def test_bytes_that_are_not_utf8_are_shown_as_bytes() -> None:
    assert printable(b"caf\xc3\xa9 \xff\xfe\x1b[31m") == "café \\xff\\xfe\\x1b[31m"


def test_ordinary_names_are_unchanged() -> None:
    for name in ["app-data", "lost+found", "C:\\temp", "日本語.txt", "café", "a b", "[bold]x"]:
        assert printable(name) == name
    assert printable(None) == ""


def test_keep_lets_chosen_controls_through() -> None:
    assert printable("a\nb\x1bc", keep="\n") == "a\nb\\x1bc"


def test_a_preview_keeps_its_lines_and_nothing_else() -> None:
    text = b"first\r\n\x1b[31mred\x1b[0m\tend\rover\x0cfeed\n\xff"
    assert printable_lines(text) == "first\n\\x1b[31mred\\x1b[0m      end\\rover\\x0cfeed\n\\xff"


def test_a_long_chain_is_a_staircase_without_recursion() -> None:
    chain = [(f"p{i}", f"p{i - 1}" if i else None) for i in range(5000)]
    rows = tree_rows(
        chain, key=lambda p: p[0], parent=lambda p: p[1], order=lambda p: int(p[0][1:])
    )
    assert [node[0] for node, _ in rows] == [p[0] for p in chain]
    assert rows[0][1] == "" and rows[1][1] == "└─" and rows[3][1] == "    └─"


def test_one_size_format_for_every_front_end() -> None:
    from lamina.backend.units import format_size
    from lamina.tui.formatting import size

    for n, text in [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (3 * 2**30, "3.0 GiB"),
    ]:
        assert format_size(n) == size(n) == text


def test_log_lines_are_escaped_and_keep_their_lines() -> None:
    import logging

    from lamina.backend.display import PrintableFormatter

    record = logging.LogRecord(
        "lamina", logging.INFO, __file__, 1, "read %s", ("a\x1b]0;x\x07",), None
    )
    assert PrintableFormatter("%(message)s").format(record) == "read a\\x1b]0;x\\x07"
    record.exc_text = "Traceback\n  line"
    assert PrintableFormatter("%(message)s").format(record).endswith("\nTraceback\n  line")


def test_the_cli_stdout_lets_only_visible_text_newlines_and_tabs_through() -> None:
    import io

    from lamina.backend.cli.common import PrintableOutput

    sink = io.StringIO()
    out = PrintableOutput(sink)
    assert out.write("name\x1b[2J\u202e\n\tnext\r") == len("name\x1b[2J\u202e\n\tnext\r")
    assert sink.getvalue() == "name\\x1b[2J\\u202e\n\tnext\\r"
    assert out.isatty() is False  # everything else is the stream's


@pytest.mark.parametrize(
    ("raw", "shown"), [*HOSTILE, ("hidden\u3164filler", "hidden\\u3164filler")]
)
def test_error_lines_escape_by_the_same_rule(raw: str, shown: str) -> None:
    """names.py and limits.py quote refused values; extract.py quotes skipped paths: all of
    them through ``printable`` (a Hangul filler is printable to Python, blank on screen)."""
    from lamina.backend import limits, names
    from lamina.backend.engine import extract

    assert names.shown(raw) == shown
    assert limits.shown(raw) == shown
    assert extract.printable(raw) == shown
    assert limits.shown(raw * 40).endswith("…") and len(limits.shown("v" * 200)) == 61


def test_no_second_escaping_rule_in_the_code() -> None:
    """Escaping lives in display.py alone: no other module tests characters for being
    printable or asks unicodedata (a second rule would drift from the first)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sources = [p for d in ("backend", "tui", "fs") for p in (root / d).rglob("*.py")]
    offenders = [
        str(p.relative_to(root))
        for p in sources
        if p.name != "display.py"
        and ("unicodedata" in p.read_text() or ".isprintable()" in p.read_text())
    ]
    assert offenders == []
