"""A token file holds one visible word: what the server and client send as the bearer."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina.backend.api.auth import read_token_file
from lamina.backend.errors import UsageError


def test_a_token_is_read_without_its_surrounding_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  s3cr3t-Tok_en\n")
    assert read_token_file(str(path)) == "s3cr3t-Tok_en"


@pytest.mark.parametrize(
    "token", ["two words", "esc\x1b[2J", "rtl\u202eoverride", "zero\u200bwidth"]
)
def test_a_token_with_spaces_or_invisible_characters_is_refused(tmp_path: Path, token: str) -> None:
    path = tmp_path / "token"
    path.write_text(token + "\n")
    with pytest.raises(UsageError, match="must hold one token without spaces"):
        read_token_file(str(path))
