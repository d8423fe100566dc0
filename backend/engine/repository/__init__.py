"""A lamina repository on any storage backend: config, piece index, packs and restore points.

Object layout (docs/format.md has the details):

    config                      JSON: format version, id, grid size, codec, encryption
    packs/<aa>/<pack-id>        pieces, then a sealed header listing them
    index/<segment-id>          piece id -> (pack, offset, size) for the packs of one backup
    maps/<point-id>             the extents one restore point wrote
    maps/<point-id>.fp          its fingerprints (one short hash per fingerprint block)
    manifests/<point-id>        the restore point itself; written last
    generation                  rewritten by every deleter (see coherence.py)
    points-changed              rewritten after every manifest write or removal (coherence.py)

The modules, as restic splits its repository: ``config`` (config and keys), ``index``
(the piece index), ``packs`` (pack writing and reading), ``codec`` (piece encode and
decode), ``points`` (points, chains, resolution), ``coherence`` (the generation check),
and ``core`` (``Repository``, which puts them together).
"""

from .codec import PieceCodec
from .coherence import GENERATION_KEY
from .config import (
    CONFIG_KEY,
    DEFAULT_GRID,
    DEFAULT_PACK_SIZE,
    DEFAULT_ZSTD_LEVEL,
    MAX_GRID,
    MIN_GRID,
    utc_now,
)
from .core import Repository
from .index import PieceIndex
from .packs import PackWriter, pack_key, pack_runs, pack_size_for
from .points import MAP_CACHE_EXTENTS, Point, new_point_id

__all__ = [
    "CONFIG_KEY",
    "DEFAULT_GRID",
    "DEFAULT_PACK_SIZE",
    "DEFAULT_ZSTD_LEVEL",
    "GENERATION_KEY",
    "MAP_CACHE_EXTENTS",
    "MAX_GRID",
    "MIN_GRID",
    "PackWriter",
    "PieceCodec",
    "PieceIndex",
    "Point",
    "Repository",
    "new_point_id",
    "pack_key",
    "pack_runs",
    "pack_size_for",
    "utc_now",
]
