"""Prometheus metrics of a service (`lamina serve --metrics-listen ADDR`, /metrics).

Every value is read at scrape time from the job-history catalog and the service's own
running jobs, so counters survive a restart of the server. Labels stay bounded: job kind
and state, request operation, volume and namespace; never a point or job id.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..catalog import Catalog, CatalogError
from ..engine.storage.metering import OPS
from ..errors import UsageError
from .jobs import JobState

if TYPE_CHECKING:
    from .service import Service

DURATION_BUCKETS = (1.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0)
#: Listing the repository costs requests: its stored size is read at most this often.
STORED_BYTES_EVERY = 300.0


class ServiceCollector(Collector):
    def __init__(self, service: Service) -> None:
        self.service = service
        self._catalog: Catalog | None = None
        self._lock = threading.Lock()
        self._stored: tuple[float, int] | None = None

    def _open(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog.open(self.service.catalog_url)
        return self._catalog

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("lamina_catalog_up", "1 when the job catalog could be read")
        try:
            totals = self._open().totals(self.service.repo_url, DURATION_BUCKETS)
        except CatalogError:
            self.close()
            up.add_metric([], 0)
            yield up
            yield from self._live_only()
            return
        up.add_metric([], 1)
        yield up

        jobs = CounterMetricFamily(
            "lamina_jobs",
            "Jobs recorded in the catalog, by kind and state",
            labels=["kind", "state"],
        )
        for (kind, state), n in sorted(totals.jobs.items()):
            jobs.add_metric([kind, state], n)
        yield jobs

        duration = HistogramMetricFamily(
            "lamina_job_duration_seconds", "How long finished jobs ran", labels=["kind"]
        )
        for kind, (cumulative, count, total) in sorted(totals.durations.items()):
            buckets = [(str(le), n) for le, n in zip(DURATION_BUCKETS, cumulative, strict=True)]
            duration.add_metric([kind], [*buckets, ("+Inf", count)], total)
        yield duration

        yield _counter("lamina_bytes_read", "Bytes read from sources", totals.bytes_read)
        yield _counter("lamina_bytes_stored", "Bytes stored as new pieces", totals.bytes_stored)

        running = [
            self.service.job_requests(j.id)
            for j in self.service.jobs()
            if j.state not in JobState.FINISHED
        ]
        requests = CounterMetricFamily(
            "lamina_s3_requests", "Storage requests by operation (retries included)", labels=["op"]
        )
        for op in OPS:
            live = sum(c.by_op.get(op, 0) for c in running if c is not None)
            requests.add_metric([op], totals.requests.get(op, 0) + live)
        yield requests

        last = GaugeMetricFamily(
            "lamina_last_success_timestamp_seconds",
            "When the newest succeeded backup of a volume ended",
            labels=["volume"],
        )
        for volume, at in sorted(totals.last_success.items()):
            last.add_metric([volume], at)
        yield last
        yield from self._live_only()

    def _live_only(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily(
            "lamina_queue_depth", "Backups waiting for a slot, by namespace", labels=["namespace"]
        )
        depth: dict[str, int] = {}
        for job in self.service.jobs():
            if job.volume is not None:
                depth.setdefault(job.volume.namespace, 0)
                if job.state == JobState.QUEUED:
                    depth[job.volume.namespace] += 1
        for namespace, n in sorted(depth.items()):
            queue.add_metric([namespace], n)
        yield queue
        stored = self._stored_bytes()
        if stored is not None:
            yield GaugeMetricFamily(
                "lamina_repository_stored_bytes",
                "Bytes the repository's points uploaded (new pieces)",
                value=stored,
            )

    def _stored_bytes(self) -> int | None:
        now = time.monotonic()
        if self._stored is None or now - self._stored[0] > STORED_BYTES_EVERY:
            try:
                stored = sum(v.stored_bytes for v in self.service.list_volumes())
            except Exception:  # a repository that does not answer: keep the last value
                return self._stored[1] if self._stored else None
            self._stored = (now, stored)
        return self._stored[1]


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def registry_for(service: Service) -> tuple[CollectorRegistry, ServiceCollector]:
    registry = CollectorRegistry()
    collector = ServiceCollector(service)
    registry.register(collector)
    return registry, collector


def parse_listen(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--metrics-listen takes HOST:PORT, not {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsServer:
    """/metrics over HTTP, in a thread of its own, until ``stop()``."""

    def __init__(self, service: Service, address: str) -> None:
        host, port = parse_listen(address)
        self.registry, self.collector = registry_for(service)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise UsageError(f"cannot serve metrics on {address}: {e.strerror or e}") from None
        self.port = int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.collector.close()


def serve_metrics(service: Service, address: str) -> Any:
    return MetricsServer(service, address)
