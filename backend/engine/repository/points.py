"""Restore points: manifests, extent maps and fingerprints, chains and their resolution."""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import CorruptObject, LaminaError, MissingObject, PointNotFound, UsageError
from .. import format as fmt
from ..extents import image_digest, resolve_chain
from ..fingerprints import Fingerprints, Run, resolve_fingerprints, touched_runs
from ..fingerprints import decode as decode_fingerprints
from ..fingerprints import encode as encode_fingerprints
from ..format import Extent
from ..storage import ObjectNotFound
from .coherence import Coherence

MAP_CACHE_EXTENTS = 500_000  # extent maps kept in memory (about 100 bytes an extent)


def new_point_id() -> str:
    return secrets.token_hex(8)


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


class PointStore(Coherence):
    """Points, their maps and fingerprints, chains and resolution (part of ``Repository``)."""

    def list_points(self) -> list[Point]:
        """Every point, oldest first.

        Cached manifests are kept while the generation is unchanged: only deleters replace
        or remove manifests, and every deleter bumps the generation first.
        """
        self._check_generation()
        # The generation was just read: manifests cached under it are current (and only
        # listed ones are looked up). Fresh ones are cached only under a shared lock.
        with self._cache_lock:
            current = self._generation
        keep = self.manifest_tag() is not None
        ids = [info.key.rsplit("/", 1)[-1] for info in self.storage.list("manifests/")]
        with self._cache_lock:
            missing = [i for i in ids if i not in self._points]

        def fetch(point_id: str) -> dict[str, Any] | None:
            try:
                return self._fetch_manifest(point_id, current, keep=keep)
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

    def listed_manifests(self) -> dict[str, str]:
        """Every point id the repository lists, with its manifest's etag (one LIST)."""
        return {info.key.rsplit("/", 1)[-1]: info.etag for info in self.storage.list("manifests/")}

    def read_manifests(self, point_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The manifests of ``point_ids``, fetched in parallel; ids whose manifest is gone
        (deleted since they were listed) are left out."""
        tag = self.manifest_tag()

        def fetch(point_id: str) -> dict[str, Any] | None:
            try:
                return self._fetch_manifest(point_id, tag, keep=tag is not None)
            except ObjectNotFound:
                return None

        fetched = self._parallel(fetch, list(point_ids))
        return {str(m["id"]): m for m in fetched if m is not None}

    def _fetch_manifest(
        self, point_id: str, tag: str | None, *, keep: bool = True
    ) -> dict[str, Any]:
        """A point's manifest, from the local cache under generation ``tag`` when it holds
        one, else from the repository. Raises ``ObjectNotFound``."""
        what = f"manifest of point {point_id}"

        def decode(blob: bytes) -> dict[str, Any]:
            manifest = fmt.decode_manifest(self.sealer, blob, what)
            if str(manifest["id"]) != point_id:
                raise CorruptObject(f"{what} names another point (tampered?)")
            return manifest

        return self.fetch_checked(f"manifests/{point_id}", decode, tag, keep=keep)

    def load_point(self, point_id: str) -> Point:
        try:
            # The local cache only while a shared lock holds the generation still.
            manifest = self._fetch_manifest(point_id, self.manifest_tag())
        except ObjectNotFound:
            with self._cache_lock:
                self._points.pop(point_id, None)
            raise PointNotFound(f"no restore point {point_id}") from None
        point = Point(manifest)
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
        manifest_blob = fmt.encode_manifest(self.sealer, manifest)
        written = self.put_retained(key, manifest_blob)
        # A retried PUT whose first answer was lost finds our own manifest: that is success.
        if not written and fmt.decode_manifest(self.sealer, self.storage.get(key), key) != manifest:
            raise LaminaError(f"restore point {point_id} already exists")
        self._mark_points_changed()
        for written_key, blob in writes:  # the next incremental starts from these
            self.cache_put(written_key, blob)
        tag = self.manifest_tag()
        if tag is not None:
            self.cache_put(key, manifest_blob, tag)
        return Point(manifest)

    def load_map(self, point: Point) -> list[Extent]:
        """The extents ``point`` holds itself (not resolved through its chain)."""
        key = point.map_key
        with self._cache_lock:
            cached = self._maps.get(key)
            if cached is not None:
                self._maps.move_to_end(key)
                return cached
        what = f"extent map of point {point.id}"
        try:
            # A map never changes, and a current manifest names this one: the local cache
            # may serve it.
            _capacity, extents = self.fetch_checked(
                key, lambda blob: fmt.decode_map(self.sealer, blob, what)
            )
        except ObjectNotFound:
            raise MissingObject(f"the extent map of point {point.id} is missing") from None
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
        self.cache_put(key, blob)
        manifest = {**manifest, "map": key}
        manifest.pop("fingerprints", None)
        if fingerprints is not None and self.fingerprint_block:
            manifest["fingerprints"] = f"{key}.fp"
            self._write_fingerprints(manifest, fingerprints)
        self.put_retained(
            f"manifests/{point_id}", fmt.encode_manifest(self.sealer, manifest), if_absent=False
        )
        self._mark_points_changed()
        self._forget_cached_manifest(point_id)
        point = Point(manifest)
        with self._cache_lock:
            self._points[point_id] = point
        return point

    def remove_point(self, point: Point) -> None:
        """Make a point cease to exist (its manifest goes; prune collects the rest)."""
        self.storage.delete(f"manifests/{point.id}")
        self._mark_points_changed()
        self._forget_cached_manifest(point.id)
        with self._cache_lock:
            self._points.pop(point.id, None)

    def _forget_cached_manifest(self, point_id: str) -> None:
        # Retired by the generation this deleter wrote already; removed for tidiness.
        if self.cache is not None:
            self.cache.discard(f"manifests/{point_id}")

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
        what = f"fingerprints of point {point.id}"
        try:
            # Like the map: never changed, named by a current manifest.
            _capacity, fingerprints = self.fetch_checked(
                key, lambda blob: decode_fingerprints(self.sealer, blob, what)
            )
        except ObjectNotFound:
            return None
        if fingerprints.block_size != self.fingerprint_block:
            return None
        return fingerprints

    def check_stored_map(self, point: Point) -> None:
        """Read the point's own map from the repository, never from the local cache, and
        decode it: verify's proof that it is there and sound. Raises ``MissingObject`` or
        ``CorruptObject``."""
        try:
            blob = self.storage.get(point.map_key)
        except ObjectNotFound:
            raise MissingObject(f"the extent map of point {point.id} is missing") from None
        fmt.decode_map(self.sealer, blob, f"extent map of point {point.id}")

    def check_stored_fingerprints(self, point: Point) -> None:
        """The same for the point's fingerprints (none is no problem: cell hashes serve)."""
        key = point.fingerprints_key
        if key is None or not self.fingerprint_block:
            return
        try:
            blob = self.storage.get(key)
        except ObjectNotFound:
            raise MissingObject(f"the fingerprints of point {point.id} are missing") from None
        decode_fingerprints(self.sealer, blob, f"fingerprints of point {point.id}")

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

    def map_piece_ids(self, point: Point) -> Iterator[bytes]:
        """The piece ids a point's own map references, streamed from the object."""
        key = point.map_key
        try:
            blob = self.storage.get(key)
        except ObjectNotFound:
            raise MissingObject(f"the extent map of point {point.id} is missing") from None
        return fmt.iter_map_piece_ids(self.sealer, blob, f"extent map of point {point.id}")
