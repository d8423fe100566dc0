"""/metrics of the cluster controller: queue depth per namespace, leadership, reconciles."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ...errors import UsageError
from ..metrics import parse_listen

if TYPE_CHECKING:
    from .controller import ClusterController


class ControllerCollector(Collector):
    def __init__(self, controller: ClusterController) -> None:
        self.controller = controller

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "lamina_queue_depth",
            "Backups waiting (Pending) for a place under their namespace's concurrency cap",
            labels=["namespace"],
        )
        for namespace, count in sorted(self.controller.queue_depth().items()):
            depth.add_metric([namespace], count)
        yield depth
        yield GaugeMetricFamily(
            "lamina_controller_leader",
            "1 while this controller holds the Lease (or runs without one)",
            value=1 if self.controller.is_leader else 0,
        )
        yield CounterMetricFamily(
            "lamina_controller_reconciles",
            "Reconciles this process ran",
            value=self.controller.reconciles,
        )
        # a new leader's first look at the Backup its predecessor left running (the bench's
        # failover time)
        unfinished = CounterMetricFamily(
            "lamina_controller_unfinished_backup_reconciles",
            "Reconciles of Backups that were not terminal yet, by phase",
            labels=["phase"],
        )
        for phase, count in sorted(self.controller.unfinished_backup_counts().items()):
            unfinished.add_metric([phase or "New"], count)
        yield unfinished


class ControllerMetricsServer:
    """/metrics over HTTP in a thread of its own, until ``stop()``."""

    def __init__(self, controller: ClusterController, address: str) -> None:
        host, port = parse_listen(address)
        self.registry = CollectorRegistry()
        self.registry.register(ControllerCollector(controller))
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise UsageError(f"cannot serve metrics on {address}: {e.strerror or e}") from None
        self.port = int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_controller_metrics(controller: ClusterController, address: str) -> Any:
    return ControllerMetricsServer(controller, address)
