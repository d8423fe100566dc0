"""``Repository``: one lamina repository on a storage backend, its parts put together."""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..cache import open_cache
from ..crypto import Keys, Sealer
from ..fingerprints import DEFAULT_FINGERPRINT_BLOCK, Fingerprinter, fingerprint_key
from ..format import Extent
from ..storage import Storage
from ..storage.wrappers import CountingStorage, RetryingStorage
from .codec import PieceCodec
from .config import (
    DEFAULT_GRID,
    DEFAULT_PACK_SIZE,
    DEFAULT_ZSTD_LEVEL,
    create_config,
    read_config,
)
from .index import PieceIndex
from .packs import PackStore, PackWriter
from .points import Point, PointStore


class Repository(PointStore, PackStore):
    """A repository: its config and keys (``config.py``), piece index (``index.py``), packs
    (``packs.py``), points and chains (``points.py``), and the coherence of what it caches
    (``coherence.py``)."""

    def __init__(self, storage: Storage, config: dict[str, Any], keys: Keys | None) -> None:
        self.raw_storage = storage
        self.counter = CountingStorage(RetryingStorage(storage))
        self.storage = self.counter
        self.config = config
        self.sealer = Sealer(keys)
        self.grid_size = int(config["grid_size"])
        self.pack_size = int(config.get("pack_size", DEFAULT_PACK_SIZE))
        self.zstd_level = int(config.get("compression", {}).get("level", DEFAULT_ZSTD_LEVEL))
        self.codec = PieceCodec(self.sealer, self.zstd_level)
        # Repositories from before fingerprints have no such field: none are written there.
        self.fingerprint_block = int(config.get("fingerprint_block") or 0)
        self.fingerprinter = None
        if self.fingerprint_block:
            key = fingerprint_key(keys.id_key) if keys is not None else None
            self.fingerprinter = Fingerprinter(self.fingerprint_block, key)
        self.index = PieceIndex()
        self._segments: set[str] = set()
        self._last_refresh = 0.0
        self._index_loaded = False
        self._points: dict[str, Point] = {}
        self._generation = None
        self._maps: OrderedDict[str, list[Extent]] = OrderedDict()
        self._maps_extents = 0
        self._cache_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self.io_threads = 8
        self.cache = open_cache(self.id, storage.url)
        self._shared_locks = 0

    # ------------------------------------------------------------------ open and init

    @property
    def url(self) -> str:
        return self.raw_storage.url

    @property
    def id(self) -> str:
        return str(self.config["id"])

    @property
    def encrypted(self) -> bool:
        return self.sealer.encrypted

    @classmethod
    def init(
        cls,
        storage: Storage,
        *,
        grid_size: int = DEFAULT_GRID,
        password: bytes | None = None,
        zstd_level: int = DEFAULT_ZSTD_LEVEL,
        pack_size: int = DEFAULT_PACK_SIZE,
        object_lock_days: int = 0,
        fingerprint_block: int = DEFAULT_FINGERPRINT_BLOCK,
    ) -> Repository:
        config, keys = create_config(
            storage,
            grid_size=grid_size,
            password=password,
            zstd_level=zstd_level,
            pack_size=pack_size,
            object_lock_days=object_lock_days,
            fingerprint_block=fingerprint_block,
        )
        return cls(storage, config, keys)

    @classmethod
    def open(cls, storage: Storage, *, password: bytes | None = None) -> Repository:
        config, keys = read_config(storage, password=password)
        return cls(storage, config, keys)

    def close(self) -> None:
        self.raw_storage.close()

    def new_pack_writer(
        self, pool: ThreadPoolExecutor, max_in_flight: int, pack_size: int | None = None
    ) -> PackWriter:
        return PackWriter(self, pool, max_in_flight, pack_size)
