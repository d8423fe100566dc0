"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does.

One attempt (``try_acquire_or_renew``) reads the Lease and writes it back with the
resourceVersion it read: a holder renews ``renewTime``; anyone takes a Lease whose
``renewTime + leaseDurationSeconds`` has passed; a 409 (someone wrote it in between) or a
live foreign holder is a lost attempt. A leader that could not renew for a whole lease
duration counts itself as no leader any more, before anyone else may take over.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ...kube.cluster import KubeCluster
from ...kube.errors import KubeConflict, KubeError, KubeNotFound


def _micro(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    text = str(value).replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()


class LeaderElector:
    """Holds (or waits for) one Lease; ``is_leader`` says whether this process may act."""

    def __init__(
        self,
        cluster: KubeCluster,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_period: float = 2.0,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_period = renew_period
        self.clock = clock
        self.on_change = on_change
        self._leader = False
        self._renewed_at = 0.0
        self.transitions = 0

    @property
    def is_leader(self) -> bool:
        # a leader that has not renewed within a lease duration may already have been replaced
        return self._leader and self.clock() - self._renewed_at < self.lease_duration

    def _api(self) -> Any:
        from kubernetes import client as k8s

        return k8s.CoordinationV1Api(self.cluster.api_client)

    def _spec(self, now: float, transitions: int, acquired: float) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration)),
            "acquireTime": _micro(acquired),
            "renewTime": _micro(now),
            "leaseTransitions": transitions,
        }

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this process holds the Lease afterwards."""
        api = self._api()
        now = self.clock()
        timeout = self.cluster.request_timeout
        try:
            lease = self.cluster.request(
                "get",
                "leases",
                lambda: api.read_namespaced_lease(
                    self.name, self.namespace, _request_timeout=timeout
                ),
                namespace=self.namespace,
                name=self.name,
            )
        except KubeNotFound:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, 0, now),
            }
            try:
                self.cluster.request(
                    "create",
                    "leases",
                    lambda: api.create_namespaced_lease(
                        self.namespace, body, _request_timeout=timeout
                    ),
                    namespace=self.namespace,
                    name=self.name,
                )
            except KubeError:
                return self._set(False)  # another candidate created it first (409)
            self._renewed_at = now
            return self._set(True)
        spec = lease.spec
        holder = spec.holder_identity if spec else None
        renewed = _seconds(spec.renew_time) if spec else None
        duration = float(spec.lease_duration_seconds or self.lease_duration) if spec else 0.0
        mine = holder == self.identity
        expired = renewed is None or now > renewed + duration
        if not mine and holder and not expired:
            return self._set(False)
        transitions = int(spec.lease_transitions or 0) if spec else 0
        acquired = (_seconds(spec.acquire_time) or now) if mine and spec else now
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": lease.metadata.resource_version,
            },
            "spec": self._spec(now, transitions if mine else transitions + 1, acquired),
        }
        try:
            self.cluster.request(
                "update",
                "leases",
                lambda: api.replace_namespaced_lease(
                    self.name, self.namespace, body, _request_timeout=timeout
                ),
                namespace=self.namespace,
                name=self.name,
            )
        except KubeConflict:
            return self._set(False)  # written by someone else since we read it
        except KubeError as e:
            if "409" in str(e) or "Conflict" in str(e):
                return self._set(False)
            raise
        self._renewed_at = now
        if not mine:
            self.transitions = transitions + 1
        return self._set(True)

    def _set(self, leader: bool) -> bool:
        if leader != self._leader:
            self._leader = leader
            if self.on_change is not None:
                self.on_change(leader)
        return leader

    def run(self, stop: threading.Event) -> None:
        """Try every renew period until `stop`; errors reaching the API server cost a round."""
        while not stop.is_set():
            try:
                self.try_acquire_or_renew()
            except KubeError:
                if not self.is_leader:
                    self._set(False)
            stop.wait(self.renew_period)

    def release(self) -> None:
        """Give the Lease up on a clean stop, so the next leader need not wait for expiry."""
        if not self._leader:
            return
        self._leader = False
        api = self._api()
        try:
            lease = api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.cluster.request_timeout
            )
            if lease.spec and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                lease.spec.renew_time = None
                api.replace_namespaced_lease(
                    self.name, self.namespace, lease, _request_timeout=self.cluster.request_timeout
                )
        except Exception:  # best effort: the Lease expires by itself
            pass
