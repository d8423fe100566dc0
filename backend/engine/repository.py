"""A lamina repository on any storage backend: config, piece index, packs and restore points.

Object layout (docs/format.md has the details):

    config                      JSON: format version, id, grid size, codec, encryption
    packs/<aa>/<pack-id>        pieces, then a sealed header listing them
    index/<segment-id>          piece id -> (pack, offset, size) for the packs of one backup
    maps/<point-id>             the extents one restore point wrote
    maps/<point-id>.fp          its fingerprints (one short hash per fingerprint block)
    manifests/<point-id>        the restore point itself; written last
"""

from __future__ import annotations

import bisect
import json
import os
import secrets
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import zstandard

from ..errors import (
    CorruptObject,
    LaminaError,
    MissingObject,
    PasswordRequired,
    PointNotFound,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedFormat,
    UsageError,
)
from . import format as fmt
from .crypto import ID_SIZE, Keys, Sealer, new_keys, unwrap_keys, wrap_keys
from .extents import image_digest, resolve_chain
from .fingerprints import (
    DEFAULT_FINGERPRINT_BLOCK,
    MIN_FINGERPRINT_BLOCK,
    Fingerprinter,
    Fingerprints,
    Run,
    fingerprint_key,
    resolve_fingerprints,
    touched_runs,
)
from .fingerprints import decode as decode_fingerprints
from .fingerprints import encode as encode_fingerprints
from .format import Extent, PieceEntry
from .storage import ObjectNotFound, ShortRead, Storage
from .storage.metering import ContextThreadPool
from .storage.wrappers import CountingStorage, RetryingStorage

CONFIG_KEY = "config"
GENERATION_KEY = "generation"  # rewritten by every exclusive lock holder: see revalidate()
DEFAULT_GRID = 4 * 1024 * 1024
MIN_GRID = 64 * 1024
MAX_GRID = 64 * 1024 * 1024
DEFAULT_PACK_SIZE = 16 * 1024 * 1024
DEFAULT_ZSTD_LEVEL = 3
MAP_CACHE_EXTENTS = 500_000  # extent maps kept in memory (about 100 bytes an extent)


def pack_key(pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"packs/{h[:2]}/{h}"


def new_point_id() -> str:
    return secrets.token_hex(8)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PieceIndex:
    """Sorted, compact map of piece id -> location: about 50 bytes a piece in memory."""

    def __init__(self) -> None:
        self._ids = bytearray()
        self._pack_no = array("I")
        self._offset = array("I")
        self._stored = array("I")
        self._raw = array("I")
        self._codec = array("B")
        self._packs: list[bytes] = []
        self._recent: dict[bytes, PieceEntry] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pack_no) + len(self._recent)

    def build(self, entries: Iterable[PieceEntry]) -> None:
        """Replace the table with ``entries`` (which may repeat pieces)."""
        self._ids = bytearray()
        self._pack_no = array("I")
        self._offset = array("I")
        self._stored = array("I")
        self._raw = array("I")
        self._codec = array("B")
        with self._lock:
            self._recent = {}
        pack_numbers: dict[bytes, int] = {}
        rows = sorted(
            (
                e.piece_id,
                pack_numbers.setdefault(e.pack_id, len(pack_numbers)),
                e.offset,
                e.stored_size,
                e.raw_size,
                e.codec,
            )
            for e in entries
        )
        self._packs = [b""] * len(pack_numbers)
        for pack_id, no in pack_numbers.items():
            self._packs[no] = pack_id
        last = b""
        for piece_id, no, offset, stored, raw, codec in rows:
            if piece_id == last:
                continue  # the same piece in two packs: either copy will do
            last = piece_id
            self._ids += piece_id
            self._pack_no.append(no)
            self._offset.append(offset)
            self._stored.append(stored)
            self._raw.append(raw)
            self._codec.append(codec)

    def add(self, entry: PieceEntry) -> None:
        with self._lock:
            self._recent[entry.piece_id] = entry

    def entries(self) -> Iterator[PieceEntry]:
        for i in range(len(self._pack_no)):
            yield self.at(i)
        with self._lock:
            recent = list(self._recent.values())
        yield from recent

    @property
    def recent_count(self) -> int:
        return len(self._recent)

    def get(self, piece_id: bytes) -> PieceEntry | None:
        recent = self._recent.get(piece_id)
        if recent is not None:
            return recent
        i = self.position(piece_id)
        return None if i is None else self.at(i)

    def __contains__(self, piece_id: bytes) -> bool:
        return self.get(piece_id) is not None

    # Positional access to the compact table (prune marks liveness by position).

    @property
    def table_size(self) -> int:
        return len(self._pack_no)

    def position(self, piece_id: bytes) -> int | None:
        n = len(self._pack_no)
        i = bisect.bisect_left(_IdView(self._ids), piece_id, 0, n)
        if i < n and self._ids[i * ID_SIZE : (i + 1) * ID_SIZE] == piece_id:
            return i
        return None

    def at(self, i: int) -> PieceEntry:
        return PieceEntry(
            bytes(self._ids[i * ID_SIZE : (i + 1) * ID_SIZE]),
            self._packs[self._pack_no[i]],
            self._offset[i],
            self._stored[i],
            self._raw[i],
            self._codec[i],
        )

    def pack_number_at(self, i: int) -> int:
        return self._pack_no[i]

    def stored_size_at(self, i: int) -> int:
        return self._stored[i]

    @property
    def packs(self) -> list[bytes]:
        return self._packs

    def pack_ids(self) -> set[bytes]:
        return set(self._packs) | {e.pack_id for e in self._recent.values()}


def _config_problem(config: dict[str, Any]) -> str | None:
    """What makes a config unusable, or None. It comes from the repository: check every field."""
    if not isinstance(config.get("id"), str):
        return "it has no repository id"
    grid = config.get("grid_size")
    if type(grid) is not int or not MIN_GRID <= grid <= MAX_GRID or grid & (grid - 1):
        return "the grid size is not a power of two between 64 KiB and 64 MiB"
    pack = config.get("pack_size", DEFAULT_PACK_SIZE)
    if type(pack) is not int or pack <= 0:
        return "the pack size is not a positive integer"
    compression = config.get("compression", {})
    if not isinstance(compression, dict) or type(compression.get("level", 0)) is not int:
        return "the compression section holds no zstd level"
    return None


class _IdView:
    def __init__(self, ids: bytearray) -> None:
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids) // ID_SIZE

    def __getitem__(self, i: int) -> bytes:
        return bytes(self._ids[i * ID_SIZE : (i + 1) * ID_SIZE])


@dataclass
class Point:
    """A restore point as its manifest describes it."""

    manifest: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    @property
    def parent(self) -> str | None:
        parent = self.manifest.get("parent")
        return str(parent) if parent else None

    @property
    def created(self) -> str:
        return str(self.manifest["created"])

    @property
    def capacity(self) -> int:
        return int(self.manifest["capacity"])

    @property
    def volume(self) -> dict[str, str]:
        return dict(self.manifest["volume"])

    @property
    def map_key(self) -> str:
        """The object holding this point's extent map (consolidation writes a new one)."""
        return str(self.manifest.get("map") or f"maps/{self.id}")

    @property
    def fingerprints_key(self) -> str | None:
        """The object holding this point's fingerprints; None for points made without."""
        key = self.manifest.get("fingerprints")
        return str(key) if key else None

    @property
    def volume_key(self) -> str:
        v = self.manifest["volume"]
        return f"{v['cluster']}/{v['namespace']}/{v['name']}"


class Repository:
    def __init__(self, storage: Storage, config: dict[str, Any], keys: Keys | None) -> None:
        self.raw_storage = storage
        self.counter = CountingStorage(RetryingStorage(storage))
        self.storage: Storage = self.counter
        self.config = config
        self.sealer = Sealer(keys)
        self.grid_size = int(config["grid_size"])
        self.pack_size = int(config.get("pack_size", DEFAULT_PACK_SIZE))
        self.zstd_level = int(config.get("compression", {}).get("level", DEFAULT_ZSTD_LEVEL))
        # Repositories from before fingerprints have no such field: none are written there.
        self.fingerprint_block = int(config.get("fingerprint_block") or 0)
        self.fingerprinter: Fingerprinter | None = None
        if self.fingerprint_block:
            key = fingerprint_key(keys.id_key) if keys is not None else None
            self.fingerprinter = Fingerprinter(self.fingerprint_block, key)
        self.index = PieceIndex()
        self._segments: set[str] = set()
        self._last_refresh = 0.0
        self._index_loaded = False
        self._points: dict[str, Point] = {}
        self._generation: str | None = None  # the generation the point cache belongs to
        self._maps: OrderedDict[str, list[Extent]] = OrderedDict()
        self._maps_extents = 0
        self._cache_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._tls = threading.local()
        self.io_threads = 8

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
        if fingerprint_block and (
            fingerprint_block < MIN_FINGERPRINT_BLOCK
            or fingerprint_block > grid_size
            or fingerprint_block & (fingerprint_block - 1)
        ):
            raise UsageError(
                f"fingerprint block must be 0 (none) or a power of two between "
                f"{MIN_FINGERPRINT_BLOCK // 1024} KiB and the grid size, not {fingerprint_block}"
            )
        if grid_size < MIN_GRID or grid_size > MAX_GRID or grid_size & (grid_size - 1):
            raise UsageError(
                f"grid size must be a power of two between {MIN_GRID // 1024} KiB and "
                f"{MAX_GRID // 1024 // 1024} MiB, not {grid_size}"
            )
        if not 1 <= zstd_level <= 19:
            raise UsageError("zstd level must be between 1 and 19")
        if object_lock_days:
            enable = getattr(storage, "enable_object_lock", None)
            if enable is None:
                raise UsageError("Object Lock needs an S3 repository (s3://bucket/prefix)")
            if object_lock_days < 1:
                raise UsageError("the Object Lock retention must be at least 1 day")
            enable()
        if storage.head(CONFIG_KEY) is not None:
            raise RepositoryExists(f"a repository already exists at {storage.url}")
        repo_id = secrets.token_hex(16)
        config: dict[str, Any] = {
            "format": "lamina-repository",
            "version": fmt.FORMAT_VERSION,
            "id": repo_id,
            "created": utc_now(),
            "grid_size": grid_size,
            "pack_size": pack_size,
            "hash": "blake3-keyed" if password else "blake3",
            "compression": {"codec": "zstd", "level": zstd_level},
            "fingerprint_block": fingerprint_block or None,
            "encryption": None,
            "object_lock": {"mode": "COMPLIANCE", "days": object_lock_days}
            if object_lock_days
            else None,
        }
        keys = None
        if password is not None:
            if not password:
                raise UsageError("the password is empty")
            keys = new_keys()
            config["encryption"] = wrap_keys(keys, password, repo_id)
        blob = json.dumps(config, indent=2).encode() + b"\n"
        # Through the retrying wrapper: a retry that meets our own config is success.
        if not RetryingStorage(storage).put(CONFIG_KEY, blob, if_absent=True):
            raise RepositoryExists(f"a repository already exists at {storage.url}")
        return cls(storage, config, keys)

    @classmethod
    def open(cls, storage: Storage, *, password: bytes | None = None) -> Repository:
        try:
            blob = storage.get(CONFIG_KEY)
        except ObjectNotFound:
            raise RepositoryNotFound(
                f"no lamina repository at {storage.url} (run 'lamina repo init')"
            ) from None
        try:
            config = json.loads(blob)
        except (ValueError, RecursionError):  # bad UTF-8 or JSON, huge integers, deep nesting
            raise CorruptObject(
                f"the repository config at {storage.url} is not valid JSON"
            ) from None
        if not isinstance(config, dict) or config.get("format") != "lamina-repository":
            raise CorruptObject(f"{storage.url} does not hold a lamina repository config")
        if config.get("version") != fmt.FORMAT_VERSION:
            from ..limits import shown  # here: limits sits above the engine

            version = shown(str(config.get("version")))
            raise UnsupportedFormat(
                f"repository format version {version} is not supported by this lamina "
                f"(it reads version {fmt.FORMAT_VERSION}); upgrade lamina"
            )
        problem = _config_problem(config)
        if problem is not None:
            raise CorruptObject(f"the repository config at {storage.url} is damaged: {problem}")
        keys = None
        if config.get("encryption"):
            if password is None:
                raise PasswordRequired(
                    "this repository is encrypted: give --password-file or set LAMINA_PASSWORD_FILE"
                )
            keys = unwrap_keys(config["encryption"], password, config["id"])
        return cls(storage, config, keys)

    def close(self) -> None:
        self.raw_storage.close()

    # ------------------------------------------------------------------ object lock

    @property
    def retention_days(self) -> int:
        lock = self.config.get("object_lock") or {}
        return int(lock.get("days", 0))

    def retention_of(self, written: float) -> float:
        """Until when an object written at ``written`` is locked (0: never)."""
        days = self.retention_days
        return written + days * 86400 if days else 0.0

    def put_retained(self, key: str, data: bytes | bytearray, *, if_absent: bool = True) -> bool:
        """Write a data or metadata object, under Object Lock retention when configured."""
        days = self.retention_days
        until = time.time() + days * 86400 if days else None
        return self.storage.put(key, data, if_absent=if_absent, retain_until=until)

    # ------------------------------------------------------------------ coherence
    #
    # What this object caches (the piece index, manifests, point lists) is valid only for
    # the repository as it was when it was read. Deleters (prune, forget, delete,
    # consolidate) run under an exclusive lock and rewrite the `generation` object before
    # they change anything; everyone else calls revalidate() once a lock is granted, so no
    # process acts on state read before its lock (docs/format.md, "Coherence").

    def read_generation(self) -> str:
        try:
            return self.storage.get(GENERATION_KEY).decode("ascii", "replace").strip()
        except ObjectNotFound:
            return ""

    def revalidate(self, *, exclusive: bool = False) -> None:
        """Bring every cache up to date with the repository; call once a lock is held.

        With ``exclusive`` the caller is about to change points or delete objects: it bumps
        the generation first (so every other process drops its caches), then reads
        everything afresh. Otherwise one GET of the generation tells whether a deleter ran
        since the caches were filled; if one did, they are revalidated.
        """
        if exclusive:
            token = secrets.token_hex(16)
            self.storage.put(GENERATION_KEY, token.encode() + b"\n")
            self._drop_point_cache(token)
            self._drop_index()
            return
        self._check_generation()

    def _check_generation(self) -> None:
        current = self.read_generation()
        if current == self._generation:
            return
        self._drop_point_cache(current)
        with self._index_lock:
            loaded = self._index_loaded
        if loaded:
            self._revalidate_index()

    def _drop_point_cache(self, generation: str) -> None:
        with self._cache_lock:
            self._points.clear()
            self._generation = generation

    def _drop_index(self) -> None:
        with self._index_lock:
            self.index = PieceIndex()
            self._segments = set()
            self._index_loaded = False

    def _revalidate_index(self) -> None:
        """A segment we loaded is gone (prune rewrote the index): rebuild; else add new ones."""
        with self._index_lock:
            present = {info.key for info in self.storage.list("index/")}
            vanished = bool(self._segments - present)
        if vanished:
            self._drop_index()
        else:
            self.refresh_index()

    # ------------------------------------------------------------------ piece index

    def reload_index(self) -> list[str]:
        """Load every index segment afresh into the compact table. Returns the segment keys."""
        with self._index_lock:
            keys = [info.key for info in self.storage.list("index/")]
            segments = self._parallel(
                lambda k: list(fmt.decode_index(self.sealer, self.storage.get(k), k)), keys
            )
            self.index.build(e for seg in segments for e in seg)
            self._segments = set(keys)
            self._index_loaded = True
            return keys

    def map_piece_ids(self, point: Point) -> Iterator[bytes]:
        """The piece ids a point's own map references, streamed from the object."""
        key = point.map_key
        try:
            blob = self.storage.get(key)
        except ObjectNotFound:
            raise MissingObject(f"the extent map of point {point.id} is missing") from None
        return fmt.iter_map_piece_ids(self.sealer, blob, f"extent map of point {point.id}")

    def load_index(self) -> None:
        with self._index_lock:
            if self._index_loaded:
                return
            keys = [info.key for info in self.storage.list("index/")]
            segments = self._parallel(
                lambda k: list(fmt.decode_index(self.sealer, self.storage.get(k), k)), keys
            )
            self.index.build(e for seg in segments for e in seg)
            self._segments.update(keys)
            self._index_loaded = True

    def refresh_index(self) -> int:
        """Load index segments written since the index was loaded (by other processes).

        Returns how many new segments were found.
        """
        if not self._index_loaded:
            self.load_index()
            return 0
        with self._index_lock:
            keys = [i.key for i in self.storage.list("index/") if i.key not in self._segments]
            segments = self._parallel(
                lambda k: list(fmt.decode_index(self.sealer, self.storage.get(k), k)), keys
            )
            for seg in segments:
                for entry in seg:
                    self.index.add(entry)
            self._segments.update(keys)
            if self.index.recent_count > 100_000:  # fold them into the compact table
                self.index.build(list(self.index.entries()))
            return len(keys)

    def find_piece(self, piece_id: bytes) -> PieceEntry | None:
        """Where a piece lives; looks for index segments newer than this process once if needed."""
        self.load_index()
        entry = self.index.get(piece_id)
        if entry is None and time.monotonic() - self._last_refresh > 2.0:
            self._last_refresh = time.monotonic()
            if self.refresh_index():
                entry = self.index.get(piece_id)
        return entry

    def write_index_segment(self, entries: Sequence[PieceEntry]) -> str | None:
        if not entries:
            return None
        key = f"index/{secrets.token_hex(16)}"
        self.put_retained(key, fmt.encode_index(self.sealer, entries))
        self._segments.add(key)
        return key

    # ------------------------------------------------------------------ pieces

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

    def encode_piece(self, piece_id: bytes, data: bytes | memoryview) -> tuple[bytes, int]:
        """Compress (when it shrinks) and seal a piece. Returns the blob and its codec."""
        compressor = self._compressor()
        compressed = None if _looks_incompressible(compressor, data) else compressor.compress(data)
        if compressed is not None and len(compressed) < len(data):
            payload, codec = compressed, fmt.PIECE_ZSTD
        else:
            payload, codec = bytes(data), fmt.PIECE_RAW
        return self.sealer.seal(payload, fmt.piece_aad(piece_id)), codec

    def decode_piece(self, entry: PieceEntry, blob: bytes) -> bytes:
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

    def read_piece(self, entry: PieceEntry) -> bytes:
        try:
            blob = self.storage.get_range(pack_key(entry.pack_id), entry.offset, entry.stored_size)
        except ObjectNotFound:
            raise MissingObject(f"pack {entry.pack_id.hex()} is missing") from None
        except ShortRead:
            raise CorruptObject(f"pack {entry.pack_id.hex()} is truncated") from None
        return self.decode_piece(entry, blob)

    def read_pack_run(self, entries: Sequence[PieceEntry]) -> list[bytes | LaminaError]:
        """Read pieces that sit back to back in one pack with a single ranged GET."""
        first, last = entries[0], entries[-1]
        start, end = first.offset, last.offset + last.stored_size
        try:
            blob = self.storage.get_range(pack_key(first.pack_id), start, end - start)
        except ObjectNotFound:
            return [MissingObject(f"pack {first.pack_id.hex()} is missing")] * len(entries)
        except ShortRead:
            return [CorruptObject(f"pack {first.pack_id.hex()} is truncated")] * len(entries)
        out: list[bytes | LaminaError] = []
        for entry in entries:
            try:
                piece_start = entry.offset - start
                out.append(
                    self.decode_piece(entry, blob[piece_start : piece_start + entry.stored_size])
                )
            except LaminaError as err:
                out.append(err)
        return out

    def new_pack_writer(self, pool: ThreadPoolExecutor, max_in_flight: int) -> PackWriter:
        return PackWriter(self, pool, max_in_flight)

    def list_packs(self) -> Iterator[tuple[bytes, int]]:
        for info in self.storage.list("packs/"):
            name = info.key.rsplit("/", 1)[-1]
            try:
                yield bytes.fromhex(name), info.size
            except ValueError:
                continue

    def read_pack_header(self, pack_id: bytes) -> list[PieceEntry]:
        key = pack_key(pack_id)
        info = self.storage.head(key)
        if info is None:
            raise MissingObject(f"pack {pack_id.hex()} is missing")
        tail_len = min(info.size, 256 * 1024)
        tail = self.storage.get_range(key, info.size - tail_len, tail_len)
        try:
            return fmt.parse_pack_header(self.sealer, pack_id, tail, f"pack {pack_id.hex()}")
        except CorruptObject:
            if tail_len == info.size:
                raise
            return fmt.parse_pack_header(
                self.sealer, pack_id, self.storage.get(key), f"pack {pack_id.hex()}"
            )

    # ------------------------------------------------------------------ restore points

    def list_points(self) -> list[Point]:
        """Every point, oldest first.

        Cached manifests are kept while the generation is unchanged: only deleters replace
        or remove manifests, and every deleter bumps the generation first.
        """
        self._check_generation()
        ids = [info.key.rsplit("/", 1)[-1] for info in self.storage.list("manifests/")]
        with self._cache_lock:
            missing = [i for i in ids if i not in self._points]

        def fetch(point_id: str) -> dict[str, Any] | None:
            key = f"manifests/{point_id}"
            try:
                blob = self.storage.get(key)
                return fmt.decode_manifest(self.sealer, blob, f"manifest of point {point_id}")
            except ObjectNotFound:
                return None  # deleted since the listing: the point no longer exists

        fetched = self._parallel(fetch, missing)
        with self._cache_lock:
            for m in fetched:
                if m is not None:
                    self._points[str(m["id"])] = Point(m)
            present = set(ids)
            for gone in [i for i in self._points if i not in present]:
                del self._points[gone]
            points = [self._points[i] for i in ids if i in self._points]
        points.sort(key=lambda p: (p.created, p.id))
        return points

    def load_point(self, point_id: str) -> Point:
        key = f"manifests/{point_id}"
        try:
            blob = self.storage.get(key)
        except ObjectNotFound:
            with self._cache_lock:
                self._points.pop(point_id, None)
            raise PointNotFound(f"no restore point {point_id}") from None
        point = Point(fmt.decode_manifest(self.sealer, blob, f"manifest of point {point_id}"))
        with self._cache_lock:
            self._points[point_id] = point
        return point

    def find_point(self, ref: str, points: Sequence[Point] | None = None) -> Point:
        """A point by id or unique id prefix (at least 4 characters)."""
        ref = ref.strip()
        if len(ref) >= 16:
            return self.load_point(ref)
        if len(ref) < 4:
            raise UsageError(f"point reference {ref!r} is too short (give at least 4 characters)")
        candidates = [p for p in (points or self.list_points()) if p.id.startswith(ref)]
        if not candidates:
            raise PointNotFound(f"no restore point matches {ref!r}")
        if len(candidates) > 1:
            raise UsageError(f"{ref!r} matches {len(candidates)} points; give more characters")
        return candidates[0]

    def save_point(
        self,
        manifest: dict[str, Any],
        extents: Sequence[Extent],
        fingerprints: Fingerprints | None = None,
    ) -> Point:
        """Write a point's extent map (and fingerprints), then its manifest. The manifest
        makes the point exist."""
        point_id = str(manifest["id"])
        map_blob = fmt.encode_map(self.sealer, int(manifest["capacity"]), self.grid_size, extents)
        writes = [(f"maps/{point_id}", map_blob)]
        if fingerprints is not None and self.fingerprint_block:
            manifest = {**manifest, "fingerprints": f"maps/{point_id}.fp"}
            blob = encode_fingerprints(self.sealer, fingerprints, int(manifest["capacity"]))
            writes.append((str(manifest["fingerprints"]), blob))
        self._parallel(lambda kv: self.put_retained(*kv), writes)  # both before the manifest
        key = f"manifests/{point_id}"
        written = self.put_retained(key, fmt.encode_manifest(self.sealer, manifest))
        # A retried PUT whose first answer was lost finds our own manifest: that is success.
        if not written and fmt.decode_manifest(self.sealer, self.storage.get(key), key) != manifest:
            raise LaminaError(f"restore point {point_id} already exists")
        return Point(manifest)

    def load_map(self, point: Point) -> list[Extent]:
        """The extents ``point`` holds itself (not resolved through its chain)."""
        key = point.map_key
        with self._cache_lock:
            cached = self._maps.get(key)
            if cached is not None:
                self._maps.move_to_end(key)
                return cached
        try:
            blob = self.storage.get(key)
        except ObjectNotFound:
            raise MissingObject(f"the extent map of point {point.id} is missing") from None
        _capacity, extents = fmt.decode_map(self.sealer, blob, f"extent map of point {point.id}")
        with self._cache_lock:  # map objects never change: keep recent ones, up to a bound
            self._maps[key] = extents
            self._maps_extents += len(extents)
            while self._maps_extents > MAP_CACHE_EXTENTS and len(self._maps) > 1:
                _, old = self._maps.popitem(last=False)
                self._maps_extents -= len(old)
        return extents

    def replace_point(
        self,
        manifest: dict[str, Any],
        extents: Sequence[Extent],
        fingerprints: Fingerprints | None = None,
    ) -> Point:
        """Give an existing point a new extent map and manifest (consolidation).

        The new map (and fingerprints) go to new objects first; then one PUT replaces the
        manifest, so a reader sees either the old point or the new one, both whole. The old
        map stays until prune removes it.
        """
        point_id = str(manifest["id"])
        key = f"maps/{point_id}.{secrets.token_hex(4)}"
        blob = fmt.encode_map(self.sealer, int(manifest["capacity"]), self.grid_size, extents)
        self.put_retained(key, blob)
        manifest = {**manifest, "map": key}
        manifest.pop("fingerprints", None)
        if fingerprints is not None and self.fingerprint_block:
            manifest["fingerprints"] = f"{key}.fp"
            self._write_fingerprints(manifest, fingerprints)
        self.put_retained(
            f"manifests/{point_id}", fmt.encode_manifest(self.sealer, manifest), if_absent=False
        )
        point = Point(manifest)
        with self._cache_lock:
            self._points[point_id] = point
        return point

    def remove_point(self, point: Point) -> None:
        """Make a point cease to exist (its manifest goes; prune collects the rest)."""
        self.storage.delete(f"manifests/{point.id}")
        with self._cache_lock:
            self._points.pop(point.id, None)

    # ------------------------------------------------------------------ fingerprints

    def _write_fingerprints(self, manifest: dict[str, Any], fingerprints: Fingerprints) -> None:
        key = str(manifest["fingerprints"])
        blob = encode_fingerprints(self.sealer, fingerprints, int(manifest["capacity"]))
        self.put_retained(key, blob)

    def load_fingerprints(self, point: Point) -> Fingerprints | None:
        """A point's own fingerprints; None when it has none (made before them, or the object
        is gone, or they use another block size): callers then fall back to cell hashes."""
        key = point.fingerprints_key
        if key is None or not self.fingerprint_block:
            return None
        try:
            blob = self.storage.get(key)
        except ObjectNotFound:
            return None
        _capacity, fingerprints = decode_fingerprints(
            self.sealer, blob, f"fingerprints of point {point.id}"
        )
        if fingerprints.block_size != self.fingerprint_block:
            return None
        return fingerprints

    def fingerprint_layers(self, points: Sequence[Point]) -> list[list[Run]]:
        """Each point's fingerprint runs, newest first; UNKNOWN where a point without
        (readable) fingerprints has extents."""
        block = self.fingerprint_block

        def layer(p: Point) -> list[Run]:
            try:
                own = self.load_fingerprints(p)
            except CorruptObject:  # verify reports it; meanwhile only cell hashes are trusted
                own = None
            return own.runs if own is not None else touched_runs(self.load_map(p), block)

        return self._parallel(layer, list(points))

    def resolve_fingerprints(self, point: Point) -> Fingerprints:
        """The fingerprint of every block as ``point`` reads it (see lamina.backend.engine.fingerprints)."""
        layers = self.fingerprint_layers(self.chain(point))
        return resolve_fingerprints(self.fingerprint_block, layers)

    def chain(self, point: Point) -> list[Point]:
        """The point, its parent, and so on down to the full point, newest first."""
        chain = [point]
        seen = {point.id}
        while chain[-1].parent:
            parent_id = chain[-1].parent
            assert parent_id is not None
            if parent_id in seen:
                raise CorruptObject(f"the chain of point {point.id} loops at {parent_id}")
            try:
                chain.append(self.load_point(parent_id))
            except PointNotFound:
                # The parent may have been folded into its child since we read the child.
                fresh = self.load_point(chain[-1].id)
                if fresh.parent == parent_id:
                    raise MissingObject(
                        f"the chain of point {point.id} is broken: parent {parent_id} is missing"
                    ) from None
                chain[-1] = fresh
                continue
            seen.add(parent_id)
        return chain

    def chain_of(self, point: Point, listed: Sequence[Point]) -> list[Point]:
        """``chain(point)`` taking manifests from ``listed`` (read by this operation, under
        its lock) instead of fetching each one again; falls back to ``chain`` when a link is
        not there."""
        by_id = {p.id: p for p in listed}
        chain = [point]
        while chain[-1].parent:
            parent = by_id.get(str(chain[-1].parent))
            if parent is None or parent.id in {p.id for p in chain}:
                return self.chain(point)
            chain.append(parent)
        return chain

    def load_maps(self, points: Sequence[Point]) -> list[list[Extent]]:
        """The own maps of several points, fetched in parallel."""
        return self._parallel(lambda p: self.load_map(p), list(points))

    def resolve(self, point: Point) -> list[Extent]:
        """The merged extent map of a point: which piece every byte comes from."""
        chain = self.chain(point)
        maps = self._parallel(lambda p: self.load_map(p), chain)
        return resolve_chain(maps)

    def resolve_with(self, parent: Point, newest: Sequence[Extent]) -> list[Extent]:
        """The merged map of a point not yet written: ``newest`` on top of ``parent``'s chain."""
        chain = self.chain(parent)
        maps = self._parallel(lambda p: self.load_map(p), chain)
        return resolve_chain([newest, *maps])

    def image_digest(self, point: Point, resolved: Sequence[Extent] | None = None) -> str:
        return image_digest(
            point.capacity, resolved if resolved is not None else self.resolve(point)
        )

    # ------------------------------------------------------------------ helpers

    def _parallel(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        if len(items) <= 1:
            return [fn(i) for i in items]
        with ContextThreadPool(min(self.io_threads, len(items))) as pool:
            return list(pool.map(fn, items))


# Random data costs zstd nearly as much time as text and gains nothing: a large piece whose
# samples (spread over it) all stay within 2% of their size is stored raw without trying.
_SAMPLE_SIZE = 32 * 1024
_SAMPLES = 4
_SAMPLED_FROM = 8 * _SAMPLE_SIZE


def _looks_incompressible(compressor: zstandard.ZstdCompressor, data: bytes | memoryview) -> bool:
    if len(data) < _SAMPLED_FROM:
        return False
    step = (len(data) - _SAMPLE_SIZE) // (_SAMPLES - 1)
    view = memoryview(data)
    for i in range(_SAMPLES):
        sample = view[i * step : i * step + _SAMPLE_SIZE]
        if len(compressor.compress(sample)) < 0.98 * _SAMPLE_SIZE:
            return False
    return True


def pack_runs(
    entries: Iterable[PieceEntry],
    *,
    max_run: int = 8 * 1024 * 1024,
    max_gap: int = 256 * 1024,
    max_raw: int = 16 * 1024 * 1024,
) -> list[list[PieceEntry]]:
    """Group pieces into runs of neighbours in one pack, each run read with one ranged GET.

    A run spans at most ``max_run`` stored bytes, skips gaps of at most ``max_gap`` bytes,
    and decompresses to at most ``max_raw`` bytes (text can expand fivefold: memory is
    bounded by what a run becomes, not by what it downloads).
    """
    runs: list[list[PieceEntry]] = []
    raw = 0
    for en in sorted(entries, key=lambda en: (en.pack_id, en.offset)):
        if runs:
            last = runs[-1][-1]
            if (
                last.pack_id == en.pack_id
                and en.offset - (last.offset + last.stored_size) <= max_gap
                and en.offset + en.stored_size - runs[-1][0].offset <= max_run
                and raw + en.raw_size <= max_raw
            ):
                runs[-1].append(en)
                raw += en.raw_size
                continue
        runs.append([en])
        raw = en.raw_size
    return runs


class PackWriter:
    """Collects sealed pieces into packs of about ``pack_size`` and uploads them in the background.

    At most ``max_in_flight`` packs are buffered or uploading at once, so memory is bounded.
    """

    def __init__(self, repo: Repository, pool: ThreadPoolExecutor, max_in_flight: int) -> None:
        self.repo = repo
        self.pool = pool
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._buffer = bytearray()
        self._entries: list[PieceEntry] = []
        self._pack_id = os.urandom(16)
        self._futures: list[Future[list[PieceEntry]]] = []
        self.written: list[PieceEntry] = []
        self.packs_written = 0
        self.bytes_written = 0

    def add(self, piece_id: bytes, blob: bytes, raw_size: int, codec: int) -> PieceEntry:
        entry = PieceEntry(piece_id, self._pack_id, len(self._buffer), len(blob), raw_size, codec)
        self._buffer += blob
        self._entries.append(entry)
        if len(self._buffer) >= self.repo.pack_size:
            self._flush()
        return entry

    def _flush(self) -> None:
        if not self._entries:
            return
        self._raise_failures()
        # The header goes onto the buffer itself: a copy of a 16 MiB pack costs 16 MiB more RSS.
        data = self._buffer
        data += fmt.pack_header(self.repo.sealer, self._entries)
        entries, pack_id = self._entries, self._pack_id
        self._buffer = bytearray()
        self._entries = []
        self._pack_id = os.urandom(16)
        self._slots.acquire()
        self._futures.append(self.pool.submit(self._upload, pack_id, data, entries))

    def _upload(
        self, pack_id: bytes, data: bytearray, entries: list[PieceEntry]
    ) -> list[PieceEntry]:
        try:
            self.repo.put_retained(pack_key(pack_id), data)
            self.packs_written += 1
            self.bytes_written += len(data)
            return entries
        finally:
            self._slots.release()

    def _raise_failures(self) -> None:
        pending = []
        for f in self._futures:
            if f.done():
                self.written.extend(f.result())  # re-raises an upload failure
            else:
                pending.append(f)
        self._futures = pending

    def finish(self) -> list[PieceEntry]:
        """Upload what is left and wait for every pack. Returns every entry written."""
        self._flush()
        for f in self._futures:
            self.written.extend(f.result())
        self._futures = []
        return self.written

    def abort(self) -> None:
        for f in self._futures:
            f.cancel()
        for f in self._futures:
            if not f.cancelled():
                try:
                    f.result()
                except Exception:
                    pass
        self._futures = []
