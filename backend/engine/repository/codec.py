"""The piece codec: compress (when it pays) and seal a piece; open, decompress and check one."""

from __future__ import annotations

import threading

import zstandard

from ...errors import CorruptObject
from .. import format as fmt
from ..crypto import Sealer
from ..format import PieceEntry

# Random data costs zstd nearly as much time as text and gains nothing: a large piece whose
# samples (spread over it) all stay within 2% of their size is stored raw without trying.
_SAMPLE_SIZE = 32 * 1024
_SAMPLES = 4
_SAMPLED_FROM = 8 * _SAMPLE_SIZE


def looks_incompressible(compressor: zstandard.ZstdCompressor, data: bytes | memoryview) -> bool:
    if len(data) < _SAMPLED_FROM:
        return False
    step = (len(data) - _SAMPLE_SIZE) // (_SAMPLES - 1)
    view = memoryview(data)
    for i in range(_SAMPLES):
        sample = view[i * step : i * step + _SAMPLE_SIZE]
        if len(compressor.compress(sample)) < 0.98 * _SAMPLE_SIZE:
            return False
    return True


class PieceCodec:
    """Turns piece data into stored blobs and back; one zstd context per thread."""

    def __init__(self, sealer: Sealer, zstd_level: int) -> None:
        self.sealer = sealer
        self.zstd_level = zstd_level
        self._tls = threading.local()

    def piece_id(self, data: bytes | memoryview) -> bytes:
        return self.sealer.piece_id(data)

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._tls, "compressor", None)
        if c is None:
            c = self._tls.compressor = zstandard.ZstdCompressor(level=self.zstd_level)
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._tls, "decompressor", None)
        if d is None:
            d = self._tls.decompressor = zstandard.ZstdDecompressor()
        return d

    def encode(self, piece_id: bytes, data: bytes | memoryview) -> tuple[bytes, int]:
        """Compress (when it shrinks) and seal a piece. Returns the blob and its codec."""
        compressor = self._compressor()
        compressed = None if looks_incompressible(compressor, data) else compressor.compress(data)
        if compressed is not None and len(compressed) < len(data):
            payload, codec = compressed, fmt.PIECE_ZSTD
        else:
            payload, codec = bytes(data), fmt.PIECE_RAW
        return self.sealer.seal(payload, fmt.piece_aad(piece_id)), codec

    def decode(self, entry: PieceEntry, blob: bytes) -> bytes:
        what = f"piece {entry.piece_id.hex()[:16]} in pack {entry.pack_id.hex()[:16]}"
        payload = self.sealer.open(blob, fmt.piece_aad(entry.piece_id), what)
        if entry.codec == fmt.PIECE_ZSTD:
            try:
                data = self._decompressor().decompress(payload, max_output_size=entry.raw_size)
            except zstandard.ZstdError:
                raise CorruptObject(f"{what} does not decompress (corrupt)") from None
        else:
            data = payload
        if len(data) != entry.raw_size or self.piece_id(data) != entry.piece_id:
            raise CorruptObject(f"{what} fails its hash check (corrupt)")
        return data
