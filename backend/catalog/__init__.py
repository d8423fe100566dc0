"""The job-history catalog (docs/catalog.md): SQLite by default, PostgreSQL to share one.

The service records every job here (backend/service/recorder.py); ``lamina history`` and
the metrics read it. The repository stays the source of truth for points.
"""

from .store import (
    CATALOG_ENV,
    FAILED_STATES,
    INTERRUPTED,
    Catalog,
    CatalogError,
    CatalogTooNew,
    HistoryQuery,
    JobEvent,
    JobRecord,
    default_catalog_url,
    head_revision,
    revisions,
    shown_url,
)

__all__ = [
    "CATALOG_ENV",
    "FAILED_STATES",
    "INTERRUPTED",
    "Catalog",
    "CatalogError",
    "CatalogTooNew",
    "HistoryQuery",
    "JobEvent",
    "JobRecord",
    "default_catalog_url",
    "head_revision",
    "revisions",
    "shown_url",
]
