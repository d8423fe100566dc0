"""The point list through the catalog (docs/catalog.md, "The point list").

The repository stays the source of truth. The catalog holds a copy of its point list,
stored with the token of the repository's point list marker (``points-changed``, rewritten
after every manifest write or removal) read before the LIST it was built from. A listing
GETs the marker: while it holds the stored token, and the last full listing is younger than
``RECONCILE_SECONDS``, the rows are current and nothing else is read from the repository.
Otherwise the listing LISTs ``manifests/``, GETs only the manifests that are new or whose
etag changed, and stores the result under the token it read first.

The age bound is for a writer that died between its manifest and its marker write: that
point (or removal) is then picked up by the next full listing, at most ``RECONCILE_SECONDS``
later, never missed for good.
"""

from __future__ import annotations

import time
from typing import Any

from ..catalog import Catalog
from ..catalog import pointlist as rows
from ..engine.repository import Repository

RECONCILE_SECONDS = 300.0


class PointList:
    """One repository's point list, served from a catalog."""

    def __init__(
        self, repo: Repository, catalog: Catalog, *, reconcile_after: float = RECONCILE_SECONDS
    ) -> None:
        self.repo = repo
        self.catalog = catalog
        self.reconcile_after = reconcile_after

    def refresh(self) -> bool:
        """Bring the rows up to date with the repository; True when it was listed in full.
        Raises CatalogError, or the repository's errors."""
        marker = self.repo.read_points_marker()
        state = rows.read_state(self.catalog, self.repo.id)
        if state is not None and state.marker == marker:
            age = time.time() - state.reconciled_at
            if 0 <= age < self.reconcile_after:
                return False
        self._reconcile(marker)
        return True

    def rebuild(self) -> int:
        """Drop the rows and list the repository afresh; the number of points."""
        rows.drop(self.catalog, self.repo.id)
        self._reconcile(self.repo.read_points_marker())
        state = rows.read_state(self.catalog, self.repo.id)
        return state.points if state is not None else 0

    def _reconcile(self, marker: str) -> None:
        # The marker was read before this LIST: a manifest written after the LIST is followed
        # by a marker write, so the next listing sees another token and lists again.
        listed = self.repo.listed_manifests()
        held = rows.held_etags(self.catalog, self.repo.id)
        wanted = [pid for pid, etag in listed.items() if not etag or held.get(pid) != etag]
        fetched = self.repo.read_manifests(wanted)
        rows.store_listing(self.catalog, self.repo.id, marker, listed, fetched)

    def summaries(self) -> list[rows.VolumeRow]:
        return rows.volume_summaries(self.catalog, self.repo.id)

    def manifests(self, volume: tuple[str, str, str] | None = None) -> list[dict[str, Any]]:
        """Manifests, oldest first (by creation time, then id)."""
        found = rows.manifests(self.catalog, self.repo.id, volume)
        found.sort(key=lambda m: (str(m["created"]), str(m["id"])))
        return found


def point_list_status(catalog: str | None = None) -> list[rows.ListStatus]:
    """What the catalog (``catalog``, $LAMINA_CATALOG or the default) holds of each
    repository's point list. Raises CatalogError in one line."""
    opened = Catalog.open(catalog, reap=False)
    try:
        return rows.status(opened)
    finally:
        opened.close()
