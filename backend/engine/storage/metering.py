"""Requests counted per job: by operation, with retries and bytes up and down.

A job runs its work inside ``metered(meter)``; every storage request made in that context
(and in the worker threads it hands work to through ``ContextThreadPool``) is added to its
meter. S3 requests are counted where botocore sends them, one per HTTP attempt, so its own
retries count too; other backends are counted by ``CountingStorage`` per call.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

#: The operations requests are counted by (and priced by, see service/accounting.py).
OPS = ("put", "get", "head", "list", "delete", "copy")

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class RequestMeter:
    """Counts of one job (or of a whole process), safe to add to from many threads."""

    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPS, 0))
    retries: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, op: str, *, up: int = 0, down: int = 0, retry: bool = False) -> None:
        with self._lock:
            if op:
                self.requests[op] = self.requests.get(op, 0) + 1
            self.bytes_up += up
            self.bytes_down += down
            self.retries += int(retry)

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def snapshot(self) -> RequestMeter:
        with self._lock:
            return RequestMeter(dict(self.requests), self.retries, self.bytes_up, self.bytes_down)


_meters: contextvars.ContextVar[tuple[RequestMeter, ...]] = contextvars.ContextVar(
    "lamina_request_meters", default=()
)


@contextmanager
def metered(*meters: RequestMeter) -> Iterator[None]:
    """Count every request made in this context (and its ContextThreadPool workers)."""
    token = _meters.set((*_meters.get(), *meters))
    try:
        yield
    finally:
        _meters.reset(token)


def record(op: str, *, up: int = 0, down: int = 0, retry: bool = False) -> None:
    """One request (``op`` "" adds only bytes or a retry) to every meter of this context."""
    for meter in _meters.get():
        meter.add(op, up=up, down=down, retry=retry)


class ContextThreadPool(ThreadPoolExecutor):
    """A thread pool whose tasks run in the context of whoever submitted them, so the
    requests they make count for the job that asked."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        context = contextvars.copy_context()
        return super().submit(context.run, fn, *args, **kwargs)  # type: ignore[arg-type]


def in_context(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` bound to the current context: for a thread that works for this job."""
    context = contextvars.copy_context()
    return lambda: context.run(fn)


def s3_operation(name: str, method: str) -> str:
    """The counted operation of an S3 API operation (``PutObject``) sent as ``method``."""
    if name in ("CopyObject", "UploadPartCopy"):
        return "copy"
    if name.startswith("List"):
        return "list"
    if name.startswith("Head"):
        return "head"
    if name.startswith("Delete"):
        return "delete"
    if method == "GET":
        return "get"
    return "put"  # PUT and POST: priced alike
