"""The job-history catalog (docs/catalog.md): SQLite by default, PostgreSQL to share one.

The service records every job here (backend/service/recorder.py); ``lamina history`` and
the metrics read it. The repository stays the source of truth for points.

The plain values (``records.py``) load with the package; ``Catalog`` and the revisions
(``store.py``, SQLAlchemy and Alembic) on first use, when a catalog is opened.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .records import (
    CATALOG_ENV,
    FAILED_STATES,
    INTERRUPTED,
    CatalogError,
    CatalogTooNew,
    HistoryQuery,
    JobEvent,
    JobNotFound,
    JobRecord,
    default_catalog_url,
)

if TYPE_CHECKING:
    from .store import Catalog, head_revision, revisions, shown_url

_FROM_STORE = ("Catalog", "head_revision", "revisions", "shown_url")


def open_catalog(url: str | None = None) -> Catalog:
    """``Catalog.open(url)``, loading the database layer only now."""
    from .store import Catalog

    return Catalog.open(url)


def __getattr__(name: str) -> Any:
    if name not in _FROM_STORE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(".store", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "CATALOG_ENV",
    "FAILED_STATES",
    "INTERRUPTED",
    "Catalog",
    "CatalogError",
    "CatalogTooNew",
    "HistoryQuery",
    "JobEvent",
    "JobNotFound",
    "JobRecord",
    "default_catalog_url",
    "head_revision",
    "open_catalog",
    "revisions",
    "shown_url",
]
