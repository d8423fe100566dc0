"""What a job's storage requests cost: counts by operation, and a price table.

The built-in table is AWS's list price for S3 Standard in us-east-1 (PRICES_DATE). A small
JSON file overrides any part of it (docs/catalog.md, "Requests and cost"): the file of
$LAMINA_PRICES, else ``$XDG_CONFIG_HOME/lamina/prices.json`` when it exists.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..engine.storage.metering import OPS, RequestMeter, metered
from ..errors import UsageError
from ..units import format_size, plural

if TYPE_CHECKING:
    from .jobs import Job

T = TypeVar("T")

PRICES_ENV = "LAMINA_PRICES"
PRICES_DATE = "2025-01"
GIB = 1024**3

#: US dollars per 1,000 requests: PUT, COPY, POST and LIST in one tier, GET, HEAD and the
#: rest in the other; DELETE is free.
DEFAULT_PER_THOUSAND = {
    "put": 0.005,
    "copy": 0.005,
    "list": 0.005,
    "get": 0.0004,
    "head": 0.0004,
    "delete": 0.0,
}


@dataclass(frozen=True)
class PriceTable:
    date: str = PRICES_DATE
    source: str = "AWS S3 Standard, us-east-1 (built in)"
    per_thousand: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PER_THOUSAND))
    per_gib_month: float = 0.023  # storage, first 50 TB
    per_gib_out: float = 0.0  # transfer out: 0 within the region (0.09 to the internet)
    per_gib_in: float = 0.0

    def cost(self, counts: RequestCounts) -> float:
        requests = sum(self.per_thousand.get(op, 0.0) * n / 1000 for op, n in counts.by_op.items())
        transfer = (counts.bytes_down * self.per_gib_out + counts.bytes_up * self.per_gib_in) / GIB
        return requests + transfer

    def monthly_storage(self, stored_bytes: int) -> float:
        return stored_bytes * self.per_gib_month / GIB


def load_prices(path: str | None = None) -> PriceTable:
    """The built-in table with the override file (``path``, $LAMINA_PRICES or the config
    folder's prices.json) laid over it. A bad file is refused in one line."""
    path = path or os.environ.get(PRICES_ENV)
    if not path:
        config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(
            os.path.expanduser("~"), ".config"
        )
        candidate = Path(config) / "lamina" / "prices.json"
        if not candidate.is_file():
            return PriceTable()
        path = str(candidate)
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"cannot read the price file {path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"the price file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"the price file {path} must hold a JSON object")
    table = PriceTable(source=path)
    per_thousand = dict(table.per_thousand)
    requests = data.get("per_1000_requests", {})
    if not isinstance(requests, dict) or any(op not in OPS for op in requests):
        raise UsageError(f"the price file {path}: per_1000_requests takes only {', '.join(OPS)}")
    for op, price in requests.items():
        per_thousand[op] = _price(path, f"per_1000_requests.{op}", price)
    changes: dict[str, Any] = {"per_thousand": per_thousand}
    for key, name in (
        ("per_gib_month", "per_gib_month"),
        ("per_gib_out", "per_gib_out"),
        ("per_gib_in", "per_gib_in"),
    ):
        if key in data:
            changes[name] = _price(path, key, data[key])
    if "date" in data:
        changes["date"] = str(data["date"])
    unknown = set(data) - {
        "date",
        "per_1000_requests",
        "per_gib_month",
        "per_gib_out",
        "per_gib_in",
    }
    if unknown:
        raise UsageError(f"the price file {path} has unknown keys: {', '.join(sorted(unknown))}")
    return replace(table, **changes)


def _price(path: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise UsageError(f"the price file {path}: {name} must be a number, at least 0")
    return float(value)


@dataclass(frozen=True)
class RequestCounts:
    """A job's requests: by operation, retries, bytes up and down, and what they cost."""

    by_op: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPS, 0))
    retries: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    cost_usd: float = 0.0

    @classmethod
    def of(cls, meter: RequestMeter, prices: PriceTable | None = None) -> RequestCounts:
        snap = meter.snapshot()
        counts = cls(dict(snap.requests), snap.retries, snap.bytes_up, snap.bytes_down)
        return replace(counts, cost_usd=(prices or PriceTable()).cost(counts))

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "by_operation": {op: self.by_op.get(op, 0) for op in OPS},
            "total": self.total,
            "retries": self.retries,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "cost_usd": round(self.cost_usd, 8),
        }

    def summary(self) -> str:
        """'14 requests (9 PUT, 3 GET, 2 LIST; 1 retry), 8.0 MiB up, 0 B down, about $0.000054'"""
        ops = ", ".join(f"{n} {op.upper()}" for op in OPS if (n := self.by_op.get(op, 0)))
        detail = "; ".join(part for part in (ops, plural(self.retries, "retry", "retries")) if part)
        return (
            f"{plural(self.total, 'request')} ({detail}), {format_size(self.bytes_up)} up, "
            f"{format_size(self.bytes_down)} down, about {format_cost(self.cost_usd)}"
        )


def format_cost(usd: float) -> str:
    if usd == 0:
        return "$0"
    if usd >= 0.01:
        return f"${usd:,.2f}"
    return f"${usd:.6f}".rstrip("0")


class JobAccounting:
    """One request meter per job of a service, and one for the whole process (metrics)."""

    def __init__(self, prices: PriceTable | None = None) -> None:
        self.prices = prices or load_prices()
        self.process = RequestMeter()
        self._meters: dict[str, RequestMeter] = {}
        self._lock = threading.Lock()

    def metered(self, job: Job, fn: Callable[[Job], T]) -> Callable[[Job], T]:
        """``fn`` counting every request it makes (in any thread it works through) for ``job``."""
        meter = RequestMeter()
        with self._lock:
            self._meters[job.id] = meter

        def run(j: Job) -> T:
            with metered(meter, self.process):
                return fn(j)

        return run

    def counts(self, job: Job) -> RequestCounts | None:
        with self._lock:
            meter = self._meters.get(job.id)
        return None if meter is None else RequestCounts.of(meter, self.prices)

    def counts_of(self, job_id: str) -> RequestCounts | None:
        with self._lock:
            meter = self._meters.get(job_id)
        return None if meter is None else RequestCounts.of(meter, self.prices)

    def running(self) -> list[RequestMeter]:
        with self._lock:
            return list(self._meters.values())


@dataclass(frozen=True)
class Savings:
    """What a dry run's real run would cost in requests and save in storage."""

    requests: dict[str, int]
    request_cost_usd: float
    bytes_saved: int
    monthly_usd: float
    upper_bound: bool = False  # forget: the bytes are freed by the next prune, at most these

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "request_cost_usd": round(self.request_cost_usd, 8),
            "bytes_saved": self.bytes_saved,
            "bytes_saved_is_upper_bound": self.upper_bound,
            "monthly_usd_saved": round(self.monthly_usd, 8),
        }

    def summary(self) -> str:
        total = sum(self.requests.values())
        ops = ", ".join(f"{n} {op.upper()}" for op, n in self.requests.items() if n)
        saved = ("up to " if self.upper_bound else "") + format_size(self.bytes_saved)
        return (
            f"the real run would make about {plural(total, 'request')}"
            f"{f' ({ops})' if ops else ''}, about {format_cost(self.request_cost_usd)}, "
            f"and save {saved} of storage, about {format_cost(self.monthly_usd)} a month"
        )


def _savings(
    requests: dict[str, int], saved: int, prices: PriceTable, *, upper_bound: bool = False
) -> Savings:
    counts = RequestCounts({op: requests.get(op, 0) for op in OPS})
    return Savings(
        {op: requests.get(op, 0) for op in OPS},
        prices.cost(counts),
        saved,
        prices.monthly_storage(saved),
        upper_bound,
    )


def prune_savings(report: Any, prices: PriceTable | None = None) -> Savings:
    """A prune dry run's report: every pack that goes is one DELETE, a repacked one also a
    ranged GET; rewritten pieces go up in new packs, and each rewritten index segment is a
    PUT and a DELETE."""
    new_packs = -(-int(report.bytes_rewritten) // PACK_TARGET) if report.bytes_rewritten else 0
    requests = {
        "delete": int(report.packs_deleted)
        + int(report.maps_deleted)
        + int(report.segments_rewritten),
        "get": int(report.packs_repacked),
        "put": new_packs + int(report.segments_rewritten),
    }
    return _savings(requests, int(report.bytes_reclaimed), prices or load_prices())


def forget_savings(report: Any, prices: PriceTable | None = None) -> Savings:
    """A forget dry run's report: each removed point's manifest, map and fingerprints are
    deleted; the bytes only it uploaded are freed by the next prune (so: at most these)."""
    gone = [d.point for d in report.decisions if not d.keep]
    saved = sum(
        int(p.stats.get("bytes_uploaded", p.stats.get("bytes_stored", 0)) or 0) for p in gone
    )
    return _savings({"delete": 3 * len(gone)}, saved, prices or load_prices(), upper_bound=True)


PACK_TARGET = 16 * 1024 * 1024  # the size packs are cut at (docs/format.md)
