"""The reconcilers of lamina's custom resources and the loop that drives them.

Level-triggered: each reconcile reads the object as it is now and takes the next step from
its status (and the VolumeSnapshot and Job it names), so running it twice, or after another
leader's half-done step, is safe. Names are deterministic (the slot's Backup, the Backup's
snapshot, the data mover's PVC and Job), so a repeated create is a 409 that is adopted.

Watches on BackupSchedules, Backups, Restores, VolumeSnapshots and Jobs put keys on one work
queue; a resync re-lists everything. A key whose reconcile raised is retried with exponential
backoff. Backups of one namespace run at most ``concurrency`` at once, one per PVC; the
others stay Pending and are counted in ``lamina_queue_depth{namespace}``.
"""

from __future__ import annotations

import heapq
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from ...catalog import Catalog, JobRecord
from ...catalog.process import current_process
from ...errors import LaminaError, StorageUnavailable, UsageError
from ...kube.cluster import KubeCluster
from ...kube.crds import API_VERSION, BACKUP_TERMINAL, GROUP, MAX_DATAMOVER_RUNS, VERSION
from ...kube.errors import KubeConflict, KubeError, KubeNotFound
from ...kube.objects import SNAPSHOT_GROUP, SNAPSHOT_VERSION, dns_label, meta, section
from ..schedules import policy_of
from .slots import backup_name, due_slot, iso, next_slot_after, parse_iso, parse_when

ORIGIN = "controller"
Obj = dict[str, Any]
Key = tuple[str, str, str]  # (plural, namespace, name)
ACTIVE = ("Snapshotting", "Transferring")
MANAGED_BY = {"app.kubernetes.io/managed-by": "lamina"}
# a point's source mode (engine/pipelines.py) -> the Backup's status.mode
POINT_MODES = {"changed-ranges": "cbt", "scan-incremental": "scan", "full": "full"}


@dataclass(frozen=True)
class ReadPlan:
    """What a Backup's data mover reads: the changed blocks since the base snapshot (cbt),
    every block compared with the parent point (scan), or every allocated block (full)."""

    mode: str
    cbt_address: str | None  # the driver's SnapshotMetadata service, None: no CBT at all
    parent: str | None  # the parent point, None for a full backup
    base: Obj | None  # cbt: {"snapshot", "handle", "pointId"} of the base
    keep: str | None  # the newest point's VolumeSnapshot in the PVC's namespace, if any
    why: str  # for the Event when the mode is not cbt

    @property
    def backup_args(self) -> tuple[str, ...]:
        args: tuple[str, ...] = ("--parent", self.parent or "none")
        if self.base is not None:
            args += ("--base-snapshot-id", str(self.base["handle"]))
        return args


@dataclass
class ControllerOptions:
    concurrency: int = 2  # Backups of one namespace at once, unless its schedule says
    resync: float = 30.0
    workers: int = 4
    cluster_name: str = "cluster"  # the cluster part of lamina's volume names
    image: str = "lamina:latest"
    service_account: str = "lamina-datamover"
    catalog: str | None = None
    job_timeout: float = 3600.0
    backoff_base: float = 0.5
    backoff_max: float = 60.0
    poll: float = 2.0  # how soon an in-flight Backup is looked at again without an event
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    lease_namespace: str | None = None  # set: only the Lease's holder acts
    lease_name: str = "lamina-controller"
    lease_duration: float = 15.0
    renew_period: float = 2.0
    identity: str = field(
        default_factory=lambda: f"{current_process().host}-{uuid.uuid4().hex[:6]}"
    )


class WorkQueue:
    """Keys due at a time, each handed to one worker at a time (client-go's workqueue)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, Key]] = []
        self._due: dict[Key, float] = {}
        self._busy: set[Key] = set()
        self._again: dict[Key, float] = {}
        self._cond = threading.Condition()

    def add(self, key: Key, delay: float = 0.0) -> None:
        at = time.monotonic() + max(0.0, delay)
        with self._cond:
            if key in self._busy:
                self._again[key] = min(at, self._again.get(key, at))
                return
            if key in self._due and self._due[key] <= at:
                return
            self._due[key] = at
            heapq.heappush(self._heap, (at, key))
            self._cond.notify()

    def get(self, stop: threading.Event) -> Key | None:
        with self._cond:
            while not stop.is_set():
                while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded entries
                if self._heap:
                    at, key = self._heap[0]
                    wait = at - time.monotonic()
                    if wait <= 0:
                        heapq.heappop(self._heap)
                        del self._due[key]
                        self._busy.add(key)
                        return key
                    self._cond.wait(min(wait, 0.5))
                else:
                    self._cond.wait(0.5)
            return None

    def done(self, key: Key) -> None:
        with self._cond:
            self._busy.discard(key)
            again = self._again.pop(key, None)
        if again is not None:
            self.add(key, again - time.monotonic())

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._due)


def _now_iso() -> str:
    return iso(time.time())


def _set_condition(
    conditions: list[Obj], type_: str, status: str, reason: str, message: str, generation: int
) -> list[Obj]:
    """Conditions with `type_` set; its lastTransitionTime moves only when status changes."""
    out = [dict(c) for c in conditions if c.get("type") != type_]
    old = next((c for c in conditions if c.get("type") == type_), None)
    changed = old is None or old.get("status") != status
    out.append(
        {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message[:1000],
            "lastTransitionTime": _now_iso() if changed else old.get("lastTransitionTime"),  # type: ignore[union-attr]
            "observedGeneration": generation,
        }
    )
    return sorted(out, key=lambda c: str(c["type"]))


def _condition(obj: Obj, type_: str) -> Obj | None:
    for c in section(obj, "status").get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == type_:
            return c
    return None


class ClusterController:
    """Reconciles lamina's CRs in one cluster; ``serve(stop)`` runs until `stop` is set."""

    def __init__(
        self,
        cluster: KubeCluster,
        options: ControllerOptions | None = None,
        *,
        say: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.cluster = cluster
        self.options = options or ControllerOptions()
        self.say = say
        self.queue = WorkQueue()
        self._failures: dict[Key, int] = {}
        self._admission = threading.RLock()  # _fail requeues the namespace while admitting
        self._queued: dict[str, set[str]] = {}
        self._catalog: Catalog | None = None
        self._catalog_lock = threading.Lock()
        self.reconciles = 0
        # reconciles of Backups not yet terminal, by phase ("" before the first status)
        self.unfinished_backup_reconciles: dict[str, int] = {}
        self._counts_lock = threading.Lock()
        self.last_reconcile: float | None = None
        self.elector: Any = None
        if self.options.lease_namespace:
            from .lease import LeaderElector

            self.elector = LeaderElector(
                cluster,
                self.options.lease_namespace,
                self.options.lease_name,
                self.options.identity,
                lease_duration=self.options.lease_duration,
                renew_period=self.options.renew_period,
                on_change=self._leadership,
            )

    # ----- running -----------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.elector is None or bool(self.elector.is_leader)

    def queue_depth(self) -> dict[str, int]:
        """Pending Backups waiting for a place under their namespace's cap."""
        with self._admission:
            return {ns: len(names) for ns, names in self._queued.items()}

    def unfinished_backup_counts(self) -> dict[str, int]:
        """Reconciles of not yet terminal Backups so far, by phase ("" before any status)."""
        with self._counts_lock:
            return dict(self.unfinished_backup_reconciles)

    def _leadership(self, leader: bool) -> None:
        self.say(f"{self.options.identity}: {'leading' if leader else 'not leading'}")
        if leader:
            self.resync()  # adopt whatever the previous leader left half done

    def serve(self, stop: threading.Event) -> None:
        threads = [
            threading.Thread(
                target=self._watch, args=(plural, stop), daemon=True, name=f"watch-{plural}"
            )
            for plural in ("backupschedules", "backups", "restores", "volumesnapshots", "jobs")
        ]
        threads += [
            threading.Thread(target=self._work, args=(stop,), daemon=True, name=f"reconcile-{i}")
            for i in range(self.options.workers)
        ]
        threads.append(threading.Thread(target=self._resync_loop, args=(stop,), daemon=True))
        if self.elector is not None:
            threads.append(threading.Thread(target=self.elector.run, args=(stop,), daemon=True))
        for thread in threads:
            thread.start()
        stop.wait()
        self.queue.wake()
        # workers and the elector see `stop` within a second; a watch may sit in a read for
        # a minute, and is a daemon thread that ends with the process
        for thread in threads:
            if not thread.name.startswith("watch-"):
                thread.join(timeout=self.cluster.timeout + 5)
        if self.elector is not None:
            self.elector.release()

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()

    def _resync_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.options.resync):
            self.resync()

    def resync(self) -> None:
        """Put every lamina object on the queue."""
        for plural in ("backupschedules", "backups", "restores"):
            try:
                for obj in self._list(plural):
                    m = meta(obj)
                    self.queue.add((plural, str(m.get("namespace")), str(m.get("name"))))
            except LaminaError as e:
                self.say(f"resync of {plural} failed: {e}")

    def _list(self, plural: str, namespace: str | None = None) -> list[Obj]:
        if namespace is None and self.options.namespaces:
            out: list[Obj] = []
            for ns in self.options.namespaces:
                out += self.cluster.list_custom(GROUP, VERSION, plural, ns)
            return out
        return self.cluster.list_custom(GROUP, VERSION, plural, namespace)

    def _watch(self, plural: str, stop: threading.Event) -> None:
        """One watch at a time on `plural`, re-listed after every end or error (a dropped
        watch, a 410 Gone, the API server restarting), with backoff while it fails."""
        from kubernetes import watch

        failures = 0
        while not stop.is_set():
            try:
                list_fn, kwargs = self._watch_call(plural)
                initial = list_fn(**kwargs, _request_timeout=self.cluster.request_timeout)
                version = _resource_version(initial)
                for item in _items(initial):
                    self._on_event(plural, item)
                failures = 0
                w: Any = watch.Watch()  # type: ignore[no-untyped-call]
                for event in w.stream(
                    list_fn,
                    **kwargs,
                    resource_version=version,
                    timeout_seconds=60,
                    _request_timeout=(self.cluster.timeout, 90),
                ):
                    if stop.is_set():
                        w.stop()
                        break
                    obj = event.get("object")
                    if isinstance(obj, dict):
                        if event.get("type") == "ERROR":
                            break  # 410 Gone or the like: list again
                        self._on_event(plural, obj)
                    elif obj is not None:
                        self._on_event(plural, _plain(obj))
            except Exception as e:  # a watch must outlive any error
                failures += 1
                if failures in (1, 5) or failures % 50 == 0:
                    self.say(f"watch of {plural} broke ({type(e).__name__}); listing again")
                stop.wait(
                    min(self.options.backoff_max, self.options.backoff_base * 2 ** min(failures, 8))
                )

    def _watch_call(self, plural: str) -> tuple[Callable[..., Any], dict[str, Any]]:
        custom = self.cluster.custom
        if plural == "jobs":
            return self.cluster.batch.list_job_for_all_namespaces, {
                "label_selector": "app.kubernetes.io/managed-by=lamina"
            }
        group, version = (
            (SNAPSHOT_GROUP, SNAPSHOT_VERSION) if plural == "volumesnapshots" else (GROUP, VERSION)
        )
        if len(self.options.namespaces) == 1:
            return custom.list_namespaced_custom_object, {
                "group": group,
                "version": version,
                "namespace": self.options.namespaces[0],
                "plural": plural,
            }
        return custom.list_cluster_custom_object, {
            "group": group,
            "version": version,
            "plural": plural,
        }

    def _on_event(self, plural: str, obj: Obj) -> None:
        m = meta(obj)
        namespace = str(m.get("namespace") or "")
        if self.options.namespaces and namespace not in self.options.namespaces:
            return
        if plural in ("backupschedules", "backups", "restores"):
            self.queue.add((plural, namespace, str(m.get("name"))))
            return
        # a VolumeSnapshot or a Job of the data mover: its Backup is named in a label
        owner = (m.get("labels") or {}).get("lamina.dev/backup")
        owner_ns = (m.get("labels") or {}).get("lamina.dev/backup-namespace") or namespace
        if owner:
            self.queue.add(("backups", owner_ns, owner))
        restore = (m.get("labels") or {}).get("lamina.dev/restore")
        if restore and plural == "jobs":
            self.queue.add(("restores", namespace, restore))

    def _work(self, stop: threading.Event) -> None:
        while not stop.is_set():
            key = self.queue.get(stop)
            if key is None:
                return
            try:
                if not self.is_leader:
                    continue  # the key comes back at the resync after taking the lead
                delay = self.reconcile(key)
                self._failures.pop(key, None)
                if delay is not None:
                    self.queue.add(key, delay)
            except Exception as e:  # one object's trouble never stops the others
                count = self._failures.get(key, 0) + 1
                self._failures[key] = count
                delay = min(self.options.backoff_max, self.options.backoff_base * 2 ** (count - 1))
                self.say(f"{key[0]} {key[1]}/{key[2]}: {e}; again in {delay:g} s")
                self.queue.add(key, delay)
            finally:
                self.queue.done(key)

    def reconcile(self, key: Key) -> float | None:
        """One step for one object; the delay until it should be looked at again, or None."""
        plural, namespace, name = key
        self.reconciles += 1
        self.last_reconcile = time.time()
        if plural == "backupschedules":
            return self.reconcile_schedule(namespace, name)
        if plural == "backups":
            return self.reconcile_backup(namespace, name)
        return self.reconcile_restore(namespace, name)

    # ----- objects, status, events ---------------------------------------------------------

    def _get(self, plural: str, namespace: str, name: str) -> Obj | None:
        try:
            return self.cluster.get_custom(GROUP, VERSION, plural, name, namespace)
        except KubeNotFound:
            return None

    def _patch_status(self, plural: str, obj: Obj, status: Obj) -> Obj:
        """Write status changes under the resourceVersion they were decided on. A 409 whose
        cause left the status as it was (labels, annotations, spec written by someone else)
        is retried on the fresh object; a status that changed meanwhile raises, and the
        reconcile runs again from what is there now."""
        m = meta(obj)
        namespace, name = str(m.get("namespace")), str(m.get("name"))
        for _attempt in range(5):
            body = {
                "metadata": {"resourceVersion": meta(obj).get("resourceVersion")},
                "status": status,
            }
            try:

                def call(body: Obj = body) -> object:
                    return self.cluster.custom.patch_namespaced_custom_object_status(
                        GROUP,
                        VERSION,
                        namespace,
                        plural,
                        name,
                        body,
                        _request_timeout=self.cluster.request_timeout,
                    )

                result = self.cluster.request(
                    "patch", f"{plural}/status", call, namespace=namespace, name=name
                )
                return dict(result) if isinstance(result, dict) else obj
            except KubeConflict:
                fresh = self._get(plural, namespace, name)
                if fresh is None or section(fresh, "status") != section(obj, "status"):
                    raise KubeConflict(
                        f"{plural} {namespace}/{name} changed while it was reconciled; reconciling again"
                    ) from None
                obj = fresh
        raise KubeConflict(f"{plural} {namespace}/{name} keeps changing; reconciling again")

    def event(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        """A Kubernetes Event on `obj`; losing one costs a line, never the reconcile."""
        m = meta(obj)
        namespace = str(m.get("namespace"))
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{dns_label(str(m.get('name')), 200)}.",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": obj.get("kind"),
                "name": m.get("name"),
                "namespace": namespace,
                "uid": m.get("uid"),
                "resourceVersion": m.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1000],
            "type": type_,
            "source": {"component": "lamina-controller"},
            "firstTimestamp": _now_iso(),
            "lastTimestamp": _now_iso(),
            "count": 1,
            "reportingComponent": "lamina-controller",
            "reportingInstance": self.options.identity,
        }
        try:
            self.cluster.request(
                "create",
                "events",
                lambda: self.cluster.core.create_namespaced_event(
                    namespace, cast(Any, body), _request_timeout=self.cluster.request_timeout
                ),
                namespace=namespace,
            )
        except KubeError as e:
            self.say(f"event {reason} on {namespace}/{m.get('name')} not recorded: {e}")

    def _catalog_open(self) -> Catalog:
        with self._catalog_lock:
            if self._catalog is None:
                self._catalog = Catalog.open(self.options.catalog)
            return self._catalog

    def record(
        self,
        job_id: str,
        state: str,
        description: str,
        *,
        repository: str,
        volume: str | None = None,
        point: str | None = None,
        error: str | None = None,
        started: float | None = None,
        bytes_stored: int = 0,
        kind: str = "backup",
    ) -> None:
        """One job in the catalog (kind backup, origin controller); a catalog that is down
        costs a line, never the reconcile."""
        me = current_process()
        now = time.time()
        record = JobRecord(
            id=job_id[:32],
            kind=kind,
            state=state,
            description=description,
            repository=repository,
            volume=volume,
            point=point,
            created_at=started or now,
            started_at=started or now,
            ended_at=None if state == "running" else now,
            bytes_stored=bytes_stored,
            error=error,
            origin=ORIGIN,
            host=me.host,
            pid=me.pid,
            boot_id=me.boot_id,
            process_start=me.start,
        )
        try:
            self._catalog_open().record_job(record, error or state)
        except LaminaError as e:
            self.say(f"{description}: not recorded in the job history: {e}")

    # ----- BackupSchedule ----------------------------------------------------------------

    def reconcile_schedule(self, namespace: str, name: str) -> float | None:
        obj = self._get("backupschedules", namespace, name)
        if obj is None:
            return None
        m, spec, status = meta(obj), section(obj, "spec"), section(obj, "status")
        generation = int(m.get("generation") or 0)
        conditions = list(status.get("conditions") or [])
        repo = str(section(spec, "repository").get("url", ""))
        try:
            cron, every = parse_when(spec.get("cron"), spec.get("every"))
        except UsageError as e:
            self._schedule_problem(obj, "InvalidSchedule", str(e), repo)
            return None  # a change to the spec (a new generation) brings it back
        if spec.get("suspend"):
            if (_condition(obj, "Ready") or {}).get("reason") != "Suspended":
                self._patch_status(
                    "backupschedules",
                    obj,
                    {
                        "conditions": _set_condition(
                            conditions,
                            "Ready",
                            "True",
                            "Suspended",
                            "suspended: no new slots",
                            generation,
                        )
                    },
                )
            return None
        created = parse_iso(str(m.get("creationTimestamp"))) or time.time()
        now = time.time()
        slot = due_slot(cron, every, created, now)
        upcoming = next_slot_after(cron, every, created, now)
        last = parse_iso(status.get("lastSlot"))
        if slot is None or (last is not None and slot <= last):
            if status.get("nextSlot") != iso(upcoming):
                self._patch_status("backupschedules", obj, {"nextSlot": iso(upcoming)})
            return max(0.05, upcoming - now)
        secret = section(section(spec, "repository"), "secretRef").get("name")
        if secret and not self._secret_exists(namespace, str(secret)):
            self._schedule_problem(
                obj,
                "SecretMissing",
                f"Secret {namespace}/{secret} of spec.repository.secretRef does not exist",
                repo,
                slot=slot,
            )
            return max(0.05, upcoming - now)
        pvcs = self.select_pvcs(namespace, section(spec, "selector"))
        if not pvcs:
            self._schedule_problem(
                obj,
                "NothingSelected",
                f"spec.selector matches no PVC (slot {iso(slot)})",
                repo,
                slot=slot,
            )
            return max(0.05, upcoming - now)
        running = {
            self._source(b)
            for b in self._list("backups", namespace)
            if section(b, "spec").get("schedule") == name
            and section(b, "status").get("phase") not in BACKUP_TERMINAL
        }
        if any(volume in running for volume in pvcs):
            # The previous run still goes: this slot folds into the first one after it ends
            # (docs/schedules.md's catch-up rule); its end requeues the schedule.
            return self.options.poll
        try:
            self._check_repository(repo, self._password(namespace, spec))
        except LaminaError as e:
            reason = (
                "RepositoryUnreachable"
                if isinstance(e, StorageUnavailable)
                else "RepositoryRefused"
            )
            self._schedule_problem(
                obj, reason, f"repository {repo}: {e} (slot {iso(slot)})", repo, slot=slot
            )
            return max(0.05, upcoming - now)
        names = []
        for pvc_namespace, pvc in pvcs:
            names.append(self._create_slot_backup(obj, pvc_namespace, pvc, slot))
        missed = 0
        if last is not None and every is not None:
            missed = max(0, round((slot - last) / every) - 1)
        self._patch_status(
            "backupschedules",
            obj,
            {
                "observedGeneration": generation,
                "lastSlot": iso(slot),
                "nextSlot": iso(upcoming),
                "lastBackup": names[-1],
                "conditions": _set_condition(
                    conditions,
                    "Ready",
                    "True",
                    "Scheduled",
                    f"slot {iso(slot)}: {len(names)} Backup(s)",
                    generation,
                ),
            },
        )
        note = f"; {missed} missed slot(s) folded into this one" if missed else ""
        self.event(
            obj, "Normal", "Scheduled", f"slot {iso(slot)}: Backups {', '.join(names)}{note}"
        )
        return max(0.05, upcoming - now)

    def _schedule_problem(
        self, obj: Obj, reason: str, message: str, repo: str, slot: float | None = None
    ) -> None:
        """Bad input on a schedule: a condition, an Event and a history entry, once per
        generation (and slot), never a crash."""
        m, status = meta(obj), section(obj, "status")
        generation = int(m.get("generation") or 0)
        ready = _condition(obj, "Ready") or {}
        seen = (
            ready.get("reason") == reason
            and ready.get("observedGeneration") == generation
            and (slot is None or status.get("lastSlot") == iso(slot))
        )
        if seen:
            return
        patch: Obj = {
            "observedGeneration": generation,
            "conditions": _set_condition(
                list(status.get("conditions") or []), "Ready", "False", reason, message, generation
            ),
        }
        if slot is not None:
            patch["lastSlot"] = iso(slot)  # the slot is spent: the next one tries again
        self._patch_status("backupschedules", obj, patch)
        self.event(obj, "Warning", reason, message)
        where = f"{m.get('namespace')}/{m.get('name')}"
        self.say(f"BackupSchedule {where}: {message}")
        self.record(
            f"k-{str(m.get('uid', ''))[:12]}-{reason[:6]}-{int(slot or generation)}",
            "failed",
            f"BackupSchedule {where}",
            repository=repo,
            error=message,
        )

    def _secret_exists(self, namespace: str, name: str) -> bool:
        try:
            self.cluster.request(
                "get",
                "secrets",
                lambda: self.cluster.core.read_namespaced_secret(
                    name, namespace, _request_timeout=self.cluster.request_timeout
                ),
                namespace=namespace,
                name=name,
            )
        except KubeNotFound:
            return False
        return True

    def select_pvcs(self, namespace: str, selector: Obj) -> list[tuple[str, str]]:
        """(namespace, name) of the PVCs a schedule's selector matches, sorted."""
        namespaces = [str(n) for n in selector.get("namespaces") or []] or [namespace]
        names = {str(n) for n in selector.get("names") or []}
        labels = selector.get("matchLabels") or {}
        label_selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or None
        found = []
        for ns in namespaces:

            def call(ns: str = ns) -> Any:
                return self.cluster.core.list_namespaced_persistent_volume_claim(
                    ns, label_selector=label_selector, _request_timeout=self.cluster.request_timeout
                )

            listing = self.cluster.request("list", "persistentvolumeclaims", call, namespace=ns)
            pvc: Any
            for pvc in listing.items:
                name = str(pvc.metadata.name)
                if (pvc.metadata.labels or {}).get("app.kubernetes.io/managed-by") == "lamina":
                    continue  # the data mover's own PVCs
                if names and name not in names:
                    continue
                found.append((ns, name))
        return sorted(found)

    def _create_slot_backup(self, schedule: Obj, pvc_namespace: str, pvc: str, slot: float) -> str:
        m, spec = meta(schedule), section(schedule, "spec")
        namespace = str(m.get("namespace"))
        name = backup_name(str(m.get("name")), pvc_namespace, pvc, namespace, slot)
        backup_spec: Obj = {
            "source": {"namespace": pvc_namespace, "pvc": pvc},
            "repository": spec.get("repository"),
            "schedule": m.get("name"),
            "slot": iso(slot),
        }
        if spec.get("retention"):
            backup_spec["retention"] = spec["retention"]
        if spec.get("snapshotClass"):
            backup_spec["snapshotClass"] = spec["snapshotClass"]
        body = {
            "apiVersion": API_VERSION,
            "kind": "Backup",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {**MANAGED_BY, "lamina.dev/schedule": dns_label(str(m.get("name")))},
                "ownerReferences": [
                    {
                        "apiVersion": API_VERSION,
                        "kind": "BackupSchedule",
                        "name": m.get("name"),
                        "uid": m.get("uid"),
                    }
                ],
            },
            "spec": backup_spec,
        }
        try:
            self.cluster.create_custom(GROUP, VERSION, "backups", body, namespace)
        except KubeConflict:
            pass  # this slot's Backup exists: made before, by this or another leader
        return name

    # ----- Backup ------------------------------------------------------------------------

    def _cap(self, namespace: str, schedule: str | None) -> int:
        if schedule:
            found = self._get("backupschedules", namespace, schedule)
            value = section(found or {}, "spec").get("concurrency")
            if isinstance(value, int) and value > 0:
                return value
        return self.options.concurrency

    def reconcile_backup(self, namespace: str, name: str) -> float | None:
        obj = self._get("backups", namespace, name)
        if obj is None:
            with self._admission:
                self._queued.get(namespace, set()).discard(name)
            return None
        phase = section(obj, "status").get("phase")
        if phase in BACKUP_TERMINAL:
            return None
        with self._counts_lock:
            counted = str(phase or "")
            self.unfinished_backup_reconciles[counted] = (
                self.unfinished_backup_reconciles.get(counted, 0) + 1
            )
        if not phase:
            status = {
                "phase": "Pending",
                "message": "waiting for a place",
                "conditions": _set_condition(
                    [],
                    "Ready",
                    "False",
                    "Pending",
                    "not started yet",
                    int(meta(obj).get("generation") or 0),
                ),
            }
            self._patch_status("backups", obj, status)
            return 0.0
        if phase == "Pending":
            return self._admit(obj)
        if phase == "Snapshotting":
            return self._snapshotted(obj)
        return self._transferred(obj)

    def _source(self, obj: Obj) -> tuple[str, str]:
        source = section(section(obj, "spec"), "source")
        return str(source.get("namespace") or meta(obj).get("namespace")), str(source.get("pvc"))

    def _admit(self, obj: Obj) -> float | None:
        """Pending → Snapshotting once the namespace's cap and the PVC allow; bad input fails."""
        from ...kube.snapshots import choose_snapshot_class, volume_snapshot_manifest
        from ...kube.volumes import get_volume, require_block_volume

        m, spec = meta(obj), section(obj, "spec")
        namespace, name = str(m.get("namespace")), str(m.get("name"))
        src_ns, pvc = self._source(obj)
        with self._admission:
            backups = self._list("backups", namespace)
            active = [b for b in backups if section(b, "status").get("phase") in ACTIVE]
            cap = self._cap(namespace, spec.get("schedule"))
            same_volume = [b for b in active if self._source(b) == (src_ns, pvc)]
            if len(active) >= cap or same_volume:
                self._queued.setdefault(namespace, set()).add(name)
                why = (
                    f"waiting: a Backup of {src_ns}/{pvc} is running"
                    if same_volume
                    else f"waiting: {len(active)} of {cap} Backups of this namespace running"
                )
                if section(obj, "status").get("message") != why:
                    self._patch_status("backups", obj, {"message": why})
                return self.options.poll
            self._queued.get(namespace, set()).discard(name)
            try:
                password = self._password(namespace, spec)
                volume = get_volume(self.cluster, src_ns, pvc)
                require_block_volume(volume)
                assert volume.driver is not None
                self._check_repository(str(section(spec, "repository").get("url")), password)
                snapshot_class = choose_snapshot_class(
                    self.cluster, volume.driver, spec.get("snapshotClass")
                )
            except LaminaError as e:
                self._fail(obj, type(e).__name__.removesuffix("Error") or "Invalid", str(e))
                return None
            snapshot = dns_label(f"lamina-{name}")
            manifest = volume_snapshot_manifest(src_ns, snapshot, pvc, snapshot_class)
            manifest["metadata"]["labels"].update(
                {"lamina.dev/backup": name, "lamina.dev/backup-namespace": namespace}
            )
            try:
                self.cluster.create_custom(
                    SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshots", manifest, src_ns
                )
            except KubeConflict:
                pass  # taken before: adopted
            generation = int(m.get("generation") or 0)
            self._patch_status(
                "backups",
                obj,
                {
                    "phase": "Snapshotting",
                    "startTime": _now_iso(),
                    "snapshot": snapshot,
                    "volume": f"{self.options.cluster_name}/{src_ns}/{pvc}",
                    "message": f"VolumeSnapshot {src_ns}/{snapshot} requested",
                    "conditions": _set_condition(
                        list(section(obj, "status").get("conditions") or []),
                        "Ready",
                        "False",
                        "Snapshotting",
                        "taking the snapshot",
                        generation,
                    ),
                },
            )
        self.event(
            obj, "Normal", "Snapshotting", f"VolumeSnapshot {src_ns}/{snapshot} of PVC {pvc}"
        )
        return self.options.poll

    def _password(self, namespace: str, spec: Obj) -> bytes | None:
        """The repository password from the Secret (key 'password'), None without one."""
        import base64

        from ...kube.errors import KubeNotFound as Missing

        secret_name = section(section(spec, "repository"), "secretRef").get("name")
        if not secret_name:
            return None
        try:
            secret = self.cluster.request(
                "get",
                "secrets",
                lambda: self.cluster.core.read_namespaced_secret(
                    str(secret_name), namespace, _request_timeout=self.cluster.request_timeout
                ),
                namespace=namespace,
                name=str(secret_name),
            )
        except Missing:
            raise UsageError(
                f"Secret {namespace}/{secret_name} of spec.repository.secretRef does not exist"
            ) from None
        data = secret.data or {}
        if "password" not in data:
            return None
        return base64.b64decode(data["password"])

    def _check_repository(self, url: str, password: bytes | None) -> None:
        """The repository opens with the password (unreachable, wrong password: one line)."""
        from ..service import Service

        service = Service(url, password=password, catalog=self.options.catalog, origin=ORIGIN)
        try:
            service.info()  # opening it is the check
        finally:
            service.close()

    def _datamover(self, obj: Obj, handle: str, size: int, volume: Any, plan: ReadPlan) -> Any:
        from ...kube.datamover import DataMoverSpec

        spec = section(obj, "spec")
        src_ns, pvc = self._source(obj)
        secret = section(section(spec, "repository"), "secretRef").get("name")
        return DataMoverSpec(
            namespace=src_ns,
            pvc=pvc,
            snapshot=str(section(obj, "status").get("snapshot")),
            repo=str(section(spec, "repository").get("url")),
            size=f"{max(1, -(-size // 1024))}Ki",
            volume=f"{self.options.cluster_name}/{src_ns}/{pvc}",
            storage_class=volume.storage_class,
            snapshot_handle=handle,
            image=self.options.image,
            service_account=self.options.service_account,
            env_secret=str(secret) if secret else None,
            password_secret=str(secret) if secret and self._has_password(obj) else None,
            backup_args=plan.backup_args,
            cbt_address=plan.cbt_address,
        )

    def _plan_read(self, obj: Obj, driver: str | None) -> ReadPlan:
        """The base of a Backup: the newest point of the volume and the VolumeSnapshot it was
        made from. CBT needs the driver's SnapshotMetadataService and that snapshot, still
        there with the handle the point recorded; without them the data mover reads every
        block (scan, or full for the first point)."""
        from ...kube.cbt import find_metadata_service
        from ...kube.errors import DriverWithoutCbt
        from ...kube.snapshots import get_snapshot
        from ..service import Service

        spec, status = section(obj, "spec"), section(obj, "status")
        src_ns, pvc = self._source(obj)
        volume = str(status.get("volume") or f"{self.options.cluster_name}/{src_ns}/{pvc}")
        service = Service(
            str(section(spec, "repository").get("url")),
            password=self._password(str(meta(obj).get("namespace")), spec),
            catalog=self.options.catalog,
            origin=ORIGIN,
        )
        own = f"{src_ns}/{status.get('snapshot')}"
        try:
            # a point of this very snapshot (a run an earlier leader started) is no base
            points = [
                p
                for p in service.list_points(volume)
                if (p.manifest.get("labels") or {}).get("kube.snapshot") != own
            ]
        finally:
            service.close()
        address, no_cbt = None, ""
        if driver:
            try:
                address = find_metadata_service(self.cluster, driver).address
            except DriverWithoutCbt as e:
                no_cbt = str(e)
            except KubeError as e:  # a service that lacks its address or CA: no CBT this time
                no_cbt = f"CSI driver {driver!r}: {e}"
        else:
            no_cbt = f"PVC {src_ns}/{pvc} has no CSI driver: no changed-block tracking"
        if not points:
            return ReadPlan(
                "full", address, None, None, None,
                f"first backup of {volume}: every allocated block is read",
            )  # fmt: skip
        newest = points[-1]
        label = str((newest.manifest.get("labels") or {}).get("kube.snapshot") or "")
        base_ns, _, base_name = label.partition("/")
        keep = base_name if base_ns == src_ns and base_name else None
        scan = f"; every block is read and only what differs from point {newest.id} is stored"
        if address is None:
            return ReadPlan("scan", None, newest.id, None, keep, no_cbt + scan)
        handle = newest.snapshot_handle
        problem = ""
        if keep is None or not handle:
            problem = f"point {newest.id} names no VolumeSnapshot of {src_ns}/{pvc} to compare with"
        else:
            try:
                found = get_snapshot(self.cluster, src_ns, keep)
            except KubeNotFound:
                problem = f"VolumeSnapshot {src_ns}/{keep} of point {newest.id} is gone"
            except LaminaError as e:
                problem = f"VolumeSnapshot {src_ns}/{keep} of point {newest.id}: {e}"
            else:
                if found is None:
                    problem = f"VolumeSnapshot {src_ns}/{keep} of point {newest.id} is not ready"
                elif found.handle != handle:
                    problem = (
                        f"VolumeSnapshot {src_ns}/{keep} has handle {found.handle}, not the "
                        f"{handle} that point {newest.id} was made from"
                    )
        if problem:
            return ReadPlan("scan", None, newest.id, None, keep, problem + scan)
        base = {"snapshot": keep, "handle": handle, "pointId": newest.id}
        return ReadPlan("cbt", address, newest.id, base, keep, "")

    def _backup_snapshots(self, namespace: str, pvc: str) -> list[Obj]:
        """The VolumeSnapshots the controller took of a PVC."""
        return [
            s
            for s in self.cluster.list_custom(
                SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshots", namespace
            )
            if (meta(s).get("labels") or {}).get("lamina.dev/backup")
            and section(section(s, "spec"), "source").get("persistentVolumeClaimName") == pvc
        ]

    def _snapshots_in_use(self) -> set[tuple[str, str]]:
        """(namespace, name) of the VolumeSnapshots that unfinished Backups take or compare
        with: never deleted."""
        used: set[tuple[str, str]] = set()
        for b in self._list("backups"):
            status = section(b, "status")
            if status.get("phase") in BACKUP_TERMINAL:
                continue
            src_ns, _pvc = self._source(b)
            # its own snapshot, named before the status says so (created, then written)
            used.add((src_ns, dns_label(f"lamina-{meta(b).get('name')}")))
            base = section(status, "base").get("snapshot")
            if base:
                used.add((src_ns, str(base)))
        return used

    def _prune_snapshots(self, namespace: str, pvc: str, keep: str | None) -> None:
        """Delete the controller's VolumeSnapshots of a PVC but `keep` (the newest point's,
        the next Backup's base) and those unfinished Backups use; losing the race costs a
        line, never the Backup."""
        try:
            used = self._snapshots_in_use()
            for snapshot in self._backup_snapshots(namespace, pvc):
                name = str(meta(snapshot).get("name"))
                if name != keep and (namespace, name) not in used:
                    self._delete_snapshot(namespace, name)
        except KubeError as e:
            self.say(f"VolumeSnapshots of {namespace}/{pvc}: not pruned: {e}")

    def _delete_snapshot(self, namespace: str, name: str) -> None:
        try:
            self.cluster.delete_custom(
                SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshots", name, namespace
            )
            self.say(f"VolumeSnapshot {namespace}/{name} deleted")
        except KubeNotFound:
            pass

    def _has_password(self, obj: Obj) -> bool:
        return self._password(str(meta(obj).get("namespace")), section(obj, "spec")) is not None

    def _snapshotted(self, obj: Obj) -> float | None:
        """Snapshotting → Transferring once the snapshot is ready: the data mover's PVC and Job."""
        from ...kube.datamover import _create, job_manifest, source_pvc_manifest
        from ...kube.snapshots import get_snapshot

        m, status = meta(obj), section(obj, "status")
        namespace, name = str(m.get("namespace")), str(m.get("name"))
        src_ns, _pvc = self._source(obj)
        try:
            info = get_snapshot(self.cluster, src_ns, str(status.get("snapshot")))
        except KubeNotFound:
            self._fail(
                obj, "SnapshotMissing", f"VolumeSnapshot {src_ns}/{status.get('snapshot')} is gone"
            )
            return None
        except LaminaError as e:
            self._fail(obj, "SnapshotFailed", str(e))
            return None
        if info is None:
            return self.options.poll
        from ...kube.volumes import get_volume

        src_pvc = self._source(obj)[1]
        volume = get_volume(self.cluster, src_ns, src_pvc)
        try:
            plan = self._plan_read(obj, volume.driver)
        except KubeError:
            raise  # the API server: tried again
        except LaminaError as e:  # the repository, as the admission's check would
            self._fail(obj, type(e).__name__.removesuffix("Error") or "Invalid", str(e))
            return None
        # what an earlier leader or run left behind goes: only the base stays
        self._prune_snapshots(src_ns, src_pvc, plan.keep)
        spec = self._datamover(obj, info.handle, info.restore_size, volume, plan)
        labels = {"lamina.dev/backup": name, "lamina.dev/backup-namespace": namespace}
        for manifest in (source_pvc_manifest(spec), job_manifest(spec)):
            manifest["metadata"]["labels"].update(labels)
            if manifest["kind"] == "Job":
                manifest["spec"]["template"]["metadata"]["labels"].update(labels)
            try:
                _create(self.cluster, manifest)
            except KubeConflict:
                pass  # made before this reconcile (or by the previous leader): adopted
        if plan.base is not None:
            reads = (
                f"the blocks changed since VolumeSnapshot {src_ns}/{plan.base['snapshot']} "
                f"(point {plan.base['pointId']})"
            )
        else:
            reads = "every block" if plan.mode == "scan" else "every allocated block"
        transferring: Obj = {
            "phase": "Transferring",
            "job": spec.job_name,
            "mode": plan.mode,
            "base": plan.base,  # None clears a base an earlier run chose
            "runs": int(status.get("runs") or 1),
            "message": f"data-mover Job {src_ns}/{spec.job_name} running ({plan.mode})",
        }
        self._patch_status(
            "backups",
            obj,
            {
                **transferring,
                "conditions": _set_condition(
                    list(status.get("conditions") or []),
                    "Ready",
                    "False",
                    "Transferring",
                    "the data mover is running",
                    int(m.get("generation") or 0),
                ),
            },
        )
        if plan.mode != "cbt":
            self.event(obj, "Normal", "WholeVolumeRead", plan.why)
        self.event(
            obj,
            "Normal",
            "Transferring",
            f"data-mover Job {src_ns}/{spec.job_name} started: reads {reads}",
        )
        self.record(
            self._job_id(obj),
            "running",
            f"Backup {namespace}/{name}",
            repository=str(section(section(obj, "spec"), "repository").get("url")),
            volume=str(status.get("volume") or spec.volume),
            started=parse_iso(status.get("startTime")),
        )
        return self.options.poll

    @staticmethod
    def _job_id(obj: Obj) -> str:
        return f"k-{str(meta(obj).get('uid', '')).replace('-', '')[:24]}"

    def _job_and_conditions(self, namespace: str, name: str) -> tuple[Any, dict[str, Any]]:
        """A Job and its conditions that hold (type -> condition); KubeNotFound when gone."""
        job: Any = self.cluster.request(
            "get",
            "jobs",
            lambda: self.cluster.batch.read_namespaced_job(
                name, namespace, _request_timeout=self.cluster.request_timeout
            ),
            namespace=namespace,
            name=name,
        )
        conditions = (job.status.conditions or []) if job.status else []
        return job, {c.type: c for c in conditions if c.status == "True"}

    def _transferred(self, obj: Obj) -> float | None:
        """Transferring → Succeeded (the point found in the repository, retention applied) or
        Failed (the Job failed, vanished or ran past --job-timeout)."""
        status = section(obj, "status")
        src_ns, _pvc = self._source(obj)
        job_name = str(status.get("job"))
        try:
            job, done = self._job_and_conditions(src_ns, job_name)
        except KubeNotFound:
            return self._job_gone(obj)
        if "Failed" in done:
            why = done["Failed"].message or done["Failed"].reason or "no reason given"
            self._fail(obj, "DataMoverFailed", f"data-mover Job {src_ns}/{job_name} failed: {why}")
            return None
        if "Complete" not in done:
            started = (
                job.metadata.creation_timestamp.timestamp()
                if job.metadata.creation_timestamp
                else time.time()
            )
            if time.time() - started > self.options.job_timeout:
                self._delete_job(src_ns, job_name)
                self._fail(
                    obj,
                    "DataMoverTimeout",
                    f"data-mover Job {src_ns}/{job_name} did not finish within {self.options.job_timeout:g} s; deleted",
                )
                return None
            return self.options.poll
        return self._succeed(obj)

    def _job_gone(self, obj: Obj) -> float | None:
        """Someone deleted the data-mover Job of a Transferring Backup. Once none of its Pods
        runs any more: the point it made counts if there is one (never a second point for
        the slot); else the Job runs again, at most MAX_DATAMOVER_RUNS times in all."""
        m, status = meta(obj), section(obj, "status")
        namespace, name = str(m.get("namespace")), str(m.get("name"))
        src_ns, _pvc = self._source(obj)
        job_name = str(status.get("job"))
        pods: Any = self.cluster.request(
            "list",
            "pods",
            lambda: self.cluster.core.list_namespaced_pod(
                src_ns,
                label_selector=f"lamina.dev/backup={name}",
                _request_timeout=self.cluster.request_timeout,
            ),
            namespace=src_ns,
        )
        running = [
            p.metadata.name
            for p in pods.items
            if (p.metadata.labels or {}).get("lamina.dev/backup-namespace", namespace) == namespace
            and (p.status.phase if p.status else None) not in ("Succeeded", "Failed")
        ]
        if running:
            why = f"data-mover Job {src_ns}/{job_name} is gone; waiting for its Pods to end"
            if status.get("message") != why:
                self._patch_status("backups", obj, {"message": why})
            return self.options.poll
        if self._point_of(obj) is not None:
            return self._succeed(obj)
        runs = int(status.get("runs") or 1)
        if runs >= MAX_DATAMOVER_RUNS:
            self._fail(
                obj,
                "JobMissing",
                f"data-mover Job {src_ns}/{job_name} was deleted before it made a point, "
                f"{runs} times; not run again",
            )
            return None
        message = (
            f"data-mover Job {src_ns}/{job_name} was deleted before it made a point; "
            f"running it again (run {runs + 1} of at most {MAX_DATAMOVER_RUNS})"
        )
        self._patch_status(
            "backups",
            obj,
            {
                "phase": "Snapshotting",
                "runs": runs + 1,
                "message": message,
                "conditions": _set_condition(
                    list(status.get("conditions") or []),
                    "Ready",
                    "False",
                    "JobMissing",
                    message,
                    int(m.get("generation") or 0),
                ),
            },
        )
        self.event(obj, "Warning", "JobMissing", message)
        return 0.0

    def _point_of(self, obj: Obj) -> Any:
        """The point the Backup's snapshot made (its label kube.snapshot), None before."""
        from ..service import Service

        status, spec = section(obj, "status"), section(obj, "spec")
        src_ns, _pvc = self._source(obj)
        label = f"{src_ns}/{status.get('snapshot')}"
        service = Service(
            str(section(spec, "repository").get("url")),
            password=self._password(str(meta(obj).get("namespace")), spec),
            catalog=self.options.catalog,
            origin=ORIGIN,
        )
        try:
            points = [
                p
                for p in service.list_points(str(status.get("volume")))
                if (p.manifest.get("labels") or {}).get("kube.snapshot") == label
            ]
        finally:
            service.close()
        return points[-1] if points else None

    def _succeed(self, obj: Obj) -> float | None:
        from ..service import Service

        m, status, spec = meta(obj), section(obj, "status"), section(obj, "spec")
        namespace, name = str(m.get("namespace")), str(m.get("name"))
        src_ns, pvc = self._source(obj)
        url = str(section(spec, "repository").get("url"))
        label = f"{src_ns}/{status.get('snapshot')}"
        volume = str(status.get("volume"))
        service = Service(
            url,
            password=self._password(namespace, spec),
            catalog=self.options.catalog,
            origin=ORIGIN,
        )
        try:
            points = [
                p
                for p in service.list_points(volume)
                if (p.manifest.get("labels") or {}).get("kube.snapshot") == label
            ]
            if not points:
                self._fail(
                    obj,
                    "NoPoint",
                    f"the data mover ended but {url} has no point of {volume} from {label}",
                )
                return None
            point = points[-1]
            retention = section(spec, "retention")
            retained = ""
            if retention:
                retained = self._forget(service, retention, volume)
        finally:
            service.close()
        stats = point.stats
        stored = int(stats.get("bytes_stored") or stats.get("stored_bytes") or 0)
        requests = stats.get("requests")
        source_mode = str(section(point.manifest, "source").get("mode") or "")
        patch: Obj = {
            "phase": "Succeeded",
            "pointId": point.id,
            "bytes": int(stats.get("bytes_read") or point.capacity or 0),
            "bytesRead": int(stats.get("bytes_read") or 0),
            "bytesStored": stored,
            "completionTime": _now_iso(),
            "message": f"point {point.id}" + (f"; {retained}" if retained else ""),
            "conditions": _set_condition(
                list(status.get("conditions") or []),
                "Ready",
                "True",
                "Succeeded",
                f"point {point.id}",
                int(m.get("generation") or 0),
            ),
        }
        if isinstance(requests, dict):
            patch["requests"] = int(sum(int(v) for v in requests.values()))
        elif isinstance(requests, int):
            patch["requests"] = requests
        # The history first: once the status says Succeeded no leader comes back to it, so a
        # leader killed between the two must leave the record, not the status, to redo
        # (recording again is an upsert of the same job).
        self.record(
            self._job_id(obj),
            "succeeded",
            f"Backup {namespace}/{name}",
            repository=url,
            volume=volume,
            point=point.id,
            started=parse_iso(status.get("startTime")),
            bytes_stored=stored,
        )
        if source_mode in POINT_MODES:
            patch["mode"] = POINT_MODES[source_mode]  # what the data mover did, from the point
        self._patch_status("backups", obj, patch)
        self._remove_data_mover(obj)
        # this point's snapshot is the next Backup's base; the older ones are not needed
        self._prune_snapshots(src_ns, pvc, str(status.get("snapshot")))
        self.event(obj, "Normal", "Succeeded", f"point {point.id} of {volume}")
        self._requeue_namespace(namespace)
        self._requeue_schedule(obj)
        return None

    def _forget(self, service: Any, retention: Obj, volume: str) -> str:
        from ...limits import parse_keep_within

        keys = {
            "keepLast": "last",
            "keepHourly": "hourly",
            "keepDaily": "daily",
            "keepWeekly": "weekly",
            "keepMonthly": "monthly",
            "keepYearly": "yearly",
        }
        values: Obj = {keys[k]: int(v) for k, v in retention.items() if k in keys}
        if retention.get("keepWithin"):
            values["within_seconds"] = parse_keep_within(
                str(retention["keepWithin"])
            ).total_seconds()
        policy = policy_of(values)
        if policy.empty:
            return ""
        job = service.start_forget(policy, volume=volume)
        job.wait()
        if job.error:
            return f"forget failed: {job.error}"
        removed = [d for d in job.result.decisions if not d.keep]
        return f"forgot {len(removed)} point(s)"

    def _fail(self, obj: Obj, reason: str, message: str) -> None:
        """Failed, with a condition, a Warning Event and a history entry."""
        m, status, spec = meta(obj), section(obj, "status"), section(obj, "spec")
        namespace, name = str(m.get("namespace")), str(m.get("name"))
        self._patch_status(
            "backups",
            obj,
            {
                "phase": "Failed",
                "message": message[:1000],
                "completionTime": _now_iso(),
                "conditions": _set_condition(
                    list(status.get("conditions") or []),
                    "Ready",
                    "False",
                    reason,
                    message,
                    int(m.get("generation") or 0),
                ),
            },
        )
        self._remove_data_mover(obj)
        self.event(obj, "Warning", reason, message)
        self.say(f"Backup {namespace}/{name} failed: {message}")
        src_ns, pvc = self._source(obj)
        self.record(
            self._job_id(obj),
            "failed",
            f"Backup {namespace}/{name}",
            repository=str(section(spec, "repository").get("url")),
            volume=str(status.get("volume") or f"{self.options.cluster_name}/{src_ns}/{pvc}"),
            error=message,
            started=parse_iso(status.get("startTime")),
        )
        try:
            self._delete_source_pvc(obj)
        except KubeError:
            pass
        snapshot = status.get("snapshot")
        if snapshot:
            # no point came of it, so it is no Backup's base; unless one still takes it
            try:
                if (src_ns, str(snapshot)) not in self._snapshots_in_use():
                    self._delete_snapshot(src_ns, str(snapshot))
            except KubeError as e:
                self.say(f"Backup {namespace}/{name}: VolumeSnapshot not deleted: {e}")
        self._requeue_namespace(namespace)
        self._requeue_schedule(obj)

    def _requeue_schedule(self, obj: Obj) -> None:
        schedule = section(obj, "spec").get("schedule")
        if schedule:
            self.queue.add(("backupschedules", str(meta(obj).get("namespace")), str(schedule)))

    def _requeue_namespace(self, namespace: str) -> None:
        """A place under the cap is free: the queued Backups of the namespace look again."""
        with self._admission:
            waiting = sorted(self._queued.get(namespace, set()))
        for name in waiting:
            self.queue.add(("backups", namespace, name))

    def _remove_data_mover(self, obj: Obj) -> None:
        """Once the Backup is terminal (written first, so that a leader killed in between
        leaves a Job behind, never a Transferring Backup without one): its data-mover Job
        with its Pods, and the PVC made from the snapshot, which v1.20 keeps Terminating
        while a Pod that used it exists."""
        job = section(obj, "status").get("job")
        try:
            if job:
                src_ns, _pvc = self._source(obj)
                self._delete_job(src_ns, str(job))
            self._delete_source_pvc(obj)
        except KubeError as e:  # the Backup's outcome stands; the next one is unaffected
            self.say(
                f"Backup {meta(obj).get('namespace')}/{meta(obj).get('name')}: cleaning up: {e}"
            )

    def _delete_source_pvc(self, obj: Obj) -> None:
        from ...kube.datamover import _bounded_name

        snapshot = section(obj, "status").get("snapshot")
        if not snapshot:
            return
        src_ns, _pvc = self._source(obj)
        name = _bounded_name("lamina-source-", str(snapshot))
        try:
            self.cluster.request(
                "delete",
                "persistentvolumeclaims",
                lambda: self.cluster.core.delete_namespaced_persistent_volume_claim(
                    name, src_ns, _request_timeout=self.cluster.request_timeout
                ),
                namespace=src_ns,
                name=name,
            )
        except KubeNotFound:
            pass

    def _delete_job(self, namespace: str, name: str) -> None:
        try:
            self.cluster.request(
                "delete",
                "jobs",
                lambda: self.cluster.batch.delete_namespaced_job(
                    name,
                    namespace,
                    propagation_policy="Background",
                    _request_timeout=self.cluster.request_timeout,
                ),
                namespace=namespace,
                name=name,
            )
        except KubeNotFound:
            pass

    # ----- Restore -------------------------------------------------------------------------

    def reconcile_restore(self, namespace: str, name: str) -> float | None:
        """A point into a NEW PVC by a restore data-mover Job (backend/kube/datamover.py):
        no phase → Restoring (the point resolved, the target checked, the PVC and the Job
        made, both labelled with the Restore so that a new leader adopts them) → Succeeded or
        Failed (the Job and the half-written PVC deleted)."""
        obj = self._get("restores", namespace, name)
        if obj is None:
            return None
        phase = section(obj, "status").get("phase")
        if phase in ("Succeeded", "Failed"):
            return None
        if phase == "Restoring":
            return self._restoring(obj)
        return self._start_restore(obj)

    def _restore_spec(self, obj: Obj, point: str, size: str) -> Any:
        from ...kube.datamover import RestoreSpec

        spec = section(obj, "spec")
        target = section(spec, "target")
        secret = section(section(spec, "repository"), "secretRef").get("name")
        return RestoreSpec(
            namespace=str(meta(obj).get("namespace")),
            pvc=str(target.get("pvc")),
            point=point,
            repo=str(section(spec, "repository").get("url")),
            size=size,
            mode=str(spec.get("mode") or "block"),
            storage_class=target.get("storageClass"),
            image=self.options.image,
            env_secret=str(secret) if secret else None,
            password_secret=str(secret) if secret and self._has_password(obj) else None,
        )

    def _start_restore(self, obj: Obj) -> float | None:
        from ...kube.datamover import (
            _create,
            check_restore_target,
            restore_job_manifest,
            restore_pvc_manifest,
            restore_size,
        )
        from ..service import Service

        m, spec = meta(obj), section(obj, "spec")
        namespace, name = str(m.get("namespace")), str(m.get("name"))
        target = section(spec, "target")
        url = str(section(spec, "repository").get("url"))
        labels = {"lamina.dev/restore": dns_label(name)}
        try:
            password = self._password(namespace, spec)
            service = Service(url, password=password, catalog=self.options.catalog, origin=ORIGIN)
            try:
                point = service.get_point(str(spec.get("point")))
            finally:
                service.close()
            size = restore_size(
                point.capacity, str(spec.get("mode") or "block"), target.get("size")
            )
            restore = self._restore_spec(obj, point.id, size)
            if not self._ours(namespace, restore.pvc, name):
                check_restore_target(self.cluster, restore)
        except LaminaError as e:
            self._fail_restore(obj, type(e).__name__.removesuffix("Error") or "Invalid", str(e))
            return None
        for manifest in (restore_pvc_manifest(restore), restore_job_manifest(restore)):
            manifest["metadata"]["labels"].update(labels)
            if manifest["kind"] == "Job":
                manifest["spec"]["template"]["metadata"]["labels"].update(labels)
            try:
                _create(self.cluster, manifest)
            except KubeConflict:
                pass  # made before this reconcile (or by the previous leader): adopted
        self._patch_status(
            "restores",
            obj,
            {
                "phase": "Restoring",
                "job": restore.job_name,
                "startTime": _now_iso(),
                "message": f"point {point.id} into PVC {namespace}/{restore.pvc} ({size})",
                "conditions": _set_condition(
                    list(section(obj, "status").get("conditions") or []),
                    "Ready",
                    "False",
                    "Restoring",
                    "the restore data mover is running",
                    int(m.get("generation") or 0),
                ),
            },
        )
        self.event(
            obj, "Normal", "Restoring", f"restore Job {namespace}/{restore.job_name} started"
        )
        self.record(
            self._job_id(obj),
            "running",
            f"Restore {namespace}/{name}",
            repository=url,
            point=point.id,
            kind="restore",
        )
        return self.options.poll

    def _ours(self, namespace: str, pvc: str, restore: str) -> bool:
        """The target PVC exists and was made for this Restore (a leader died after making it)."""
        try:
            found: Any = self.cluster.request(
                "get",
                "persistentvolumeclaims",
                lambda: self.cluster.core.read_namespaced_persistent_volume_claim(
                    pvc, namespace, _request_timeout=self.cluster.request_timeout
                ),
                namespace=namespace,
                name=pvc,
            )
        except KubeNotFound:
            return False
        labels = (found.metadata.labels if found.metadata else None) or {}
        return bool(labels.get("lamina.dev/restore") == dns_label(restore))

    def _restoring(self, obj: Obj) -> float | None:
        from ...kube.datamover import _delete

        m, status, spec = meta(obj), section(obj, "status"), section(obj, "spec")
        namespace, name = str(m.get("namespace")), str(m.get("name"))
        job_name = str(status.get("job"))
        try:
            job, done = self._job_and_conditions(namespace, job_name)
        except KubeNotFound:
            self._fail_restore(obj, "JobMissing", f"restore Job {namespace}/{job_name} is gone")
            return None
        if "Failed" in done:
            why = done["Failed"].message or done["Failed"].reason or "no reason given"
            self._fail_restore(
                obj, "DataMoverFailed", f"restore Job {namespace}/{job_name} failed: {why}"
            )
            return None
        if "Complete" not in done:
            created = job.metadata.creation_timestamp if job.metadata else None
            if created is not None and time.time() - created.timestamp() > self.options.job_timeout:
                self._fail_restore(
                    obj,
                    "DataMoverTimeout",
                    f"restore Job {namespace}/{job_name} did not finish within {self.options.job_timeout:g} s",
                )
                return None
            return self.options.poll
        _delete(self.cluster, "jobs", namespace, job_name)
        target = str(section(spec, "target").get("pvc"))
        message = f"PVC {namespace}/{target} holds point {spec.get('point')}"
        self._patch_status(
            "restores",
            obj,
            {
                "phase": "Succeeded",
                "completionTime": _now_iso(),
                "message": message,
                "conditions": _set_condition(
                    list(status.get("conditions") or []),
                    "Ready",
                    "True",
                    "Succeeded",
                    message,
                    int(m.get("generation") or 0),
                ),
            },
        )
        self.event(obj, "Normal", "Succeeded", message)
        self.record(
            self._job_id(obj),
            "succeeded",
            f"Restore {namespace}/{name}",
            repository=str(section(spec, "repository").get("url")),
            started=parse_iso(status.get("startTime")),
            kind="restore",
        )
        return None

    def _fail_restore(self, obj: Obj, reason: str, message: str) -> None:
        from ...kube.datamover import _delete

        m, status, spec = meta(obj), section(obj, "status"), section(obj, "spec")
        namespace, name = str(m.get("namespace")), str(m.get("name"))
        if status.get("phase") == "Restoring":
            # the half-written PVC is no restore: it goes with its Job
            try:
                _delete(self.cluster, "jobs", namespace, str(status.get("job")))
                _delete(
                    self.cluster,
                    "persistentvolumeclaims",
                    namespace,
                    str(section(spec, "target").get("pvc")),
                )
            except KubeError as e:
                self.say(f"Restore {namespace}/{name}: cleaning up: {e}")
        self._patch_status(
            "restores",
            obj,
            {
                "phase": "Failed",
                "completionTime": _now_iso(),
                "message": message[:1000],
                "conditions": _set_condition(
                    list(status.get("conditions") or []),
                    "Ready",
                    "False",
                    reason,
                    message,
                    int(m.get("generation") or 0),
                ),
            },
        )
        self.event(obj, "Warning", reason, message)
        self.say(f"Restore {namespace}/{name} failed: {message}")
        self.record(
            self._job_id(obj),
            "failed",
            f"Restore {namespace}/{name}",
            repository=str(section(spec, "repository").get("url")),
            error=message,
            started=parse_iso(status.get("startTime")),
            kind="restore",
        )


def _resource_version(listing: Any) -> str | None:
    if isinstance(listing, dict):
        return meta(listing).get("resourceVersion")
    return getattr(getattr(listing, "metadata", None), "resource_version", None)


def _items(listing: Any) -> Iterator[Obj]:
    if isinstance(listing, dict):
        yield from (i for i in listing.get("items") or [] if isinstance(i, dict))
        return
    for item in getattr(listing, "items", None) or []:
        yield _plain(item)


__all__ = ["ClusterController", "ControllerOptions", "WorkQueue"]


def _plain(obj: Any) -> Obj:
    """A client model as the plain dict the API server sent."""
    from kubernetes import client as k8s

    plain = k8s.ApiClient().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return plain if isinstance(plain, dict) else {}
