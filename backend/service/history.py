"""What front ends need of the job history and request accounting, in one import."""

from __future__ import annotations

from ..catalog import CatalogError, HistoryQuery, JobRecord
from .accounting import RequestCounts, Savings, forget_savings, format_cost, prune_savings
from .recorder import read_history

#: Every kind of job the service runs (and the catalog records).
JOB_KINDS = (
    "backup",
    "restore",
    "verify",
    "extract",
    "forget",
    "prune",
    "consolidate",
    "delete",
    "copy",
)

__all__ = [
    "JOB_KINDS",
    "CatalogError",
    "HistoryQuery",
    "JobRecord",
    "RequestCounts",
    "Savings",
    "forget_savings",
    "format_cost",
    "prune_savings",
    "read_history",
]
