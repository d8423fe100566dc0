"""What front ends need of the job history and request accounting, in one import."""

from __future__ import annotations

import base64
import binascii
import json

from ..catalog import CatalogError, HistoryQuery, JobNotFound, JobRecord
from ..errors import UsageError
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


def history_token(last: JobRecord) -> str:
    """The page token of the page after ``last``: where it stands in the newest-first order."""
    cursor = json.dumps([last.created_at, last.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(cursor.encode()).decode()


def history_cursor(token: str) -> tuple[float, str]:
    """The (created_at, id) a page token of history_token holds; UsageError for any other."""
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        if isinstance(created, (int, float)) and isinstance(job_id, str):
            return float(created), job_id
    except (ValueError, TypeError, binascii.Error):
        pass
    raise UsageError("not a page token of the job history (pass the one the last page gave)")


__all__ = [
    "JOB_KINDS",
    "CatalogError",
    "HistoryQuery",
    "JobNotFound",
    "JobRecord",
    "RequestCounts",
    "Savings",
    "forget_savings",
    "format_cost",
    "history_cursor",
    "history_token",
    "prune_savings",
    "read_history",
]
