"""Pieces are compressed when that pays, stored raw when their samples show it would not."""

from __future__ import annotations

import random

from lamina.backend.engine.format import PIECE_RAW, PIECE_ZSTD, PieceEntry
from lamina.backend.engine.repository import Repository
from lamina.backend.engine.storage.memory import MemoryStorage

MiB = 1024 * 1024


def _text(rng: random.Random, size: int) -> bytes:
    words = [rng.randbytes(rng.randrange(2, 9)).hex() for _ in range(300)]
    out = bytearray()
    while len(out) < size:
        out += (" ".join(rng.choices(words, k=12)) + "\n").encode()
    return bytes(out[:size])


def _roundtrip(repo: Repository, data: bytes) -> int:
    piece_id = repo.piece_id(data)
    blob, codec = repo.encode_piece(piece_id, data)
    entry = PieceEntry(piece_id, bytes(16), 0, len(blob), len(data), codec)
    assert repo.decode_piece(entry, blob) == data
    return codec


def test_random_pieces_are_stored_raw_and_text_compressed() -> None:
    repo = Repository.init(MemoryStorage())
    rng = random.Random(1)
    assert _roundtrip(repo, rng.randbytes(4 * MiB)) == PIECE_RAW
    assert _roundtrip(repo, _text(rng, 4 * MiB)) == PIECE_ZSTD
    # Random bytes with compressible text in the middle: one sample sees the text.
    mixed = rng.randbytes(MiB) + _text(rng, 2 * MiB) + rng.randbytes(MiB)
    assert _roundtrip(repo, mixed) == PIECE_ZSTD
    # Small pieces are always tried whole.
    assert _roundtrip(repo, _text(rng, 64 * 1024)) == PIECE_ZSTD
    assert _roundtrip(repo, rng.randbytes(64 * 1024)) == PIECE_RAW
