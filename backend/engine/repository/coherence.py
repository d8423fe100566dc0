"""Coherence: whether what a process has cached still describes the repository.

What a ``Repository`` caches (the piece index, manifests, point lists) is valid only for
the repository as it was when it was read. Deleters (prune, forget, delete, consolidate)
run under an exclusive lock and rewrite the ``generation`` object before they change
anything; everyone else calls ``revalidate()`` once a lock is granted, so no process acts
on state read before its lock (docs/format.md, "Coherence").
"""

from __future__ import annotations

import secrets

from ..storage import ObjectNotFound
from .index import IndexStore

GENERATION_KEY = "generation"  # rewritten by every exclusive lock holder: see revalidate()
# Rewritten after every manifest write, replacement or deletion: a point list cached under
# its token is current while it holds it (docs/format.md, "The point list marker").
POINTS_MARKER_KEY = "points-changed"


class Coherence(IndexStore):
    """The generation check and the cache drops it decides (part of ``Repository``)."""

    def read_generation(self) -> str:
        try:
            return self.storage.get(GENERATION_KEY).decode("ascii", "replace").strip()
        except ObjectNotFound:
            return ""

    def read_points_marker(self) -> str:
        """The point list marker's token; "" when no point was ever written or removed."""
        try:
            return self.storage.get(POINTS_MARKER_KEY).decode("ascii", "replace").strip()
        except ObjectNotFound:
            return ""

    def _mark_points_changed(self) -> None:
        """Tell cached point lists that a manifest was written or removed: called after the
        change, so a reader that read the old token re-lists."""
        self.storage.put(POINTS_MARKER_KEY, secrets.token_hex(16).encode() + b"\n")

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
