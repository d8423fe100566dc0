"""The cluster controller on the real API server: real `lamina controller --kubeconfig`
processes, the real Job controller and PV binder, the test node running the data movers'
`lamina backup` as local processes into a real SeaweedFS bucket."""

from __future__ import annotations

import base64
import itertools
import random
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from lamina.backend.catalog import Catalog
from lamina.backend.service import Service
from lamina.backend.service.service import init_repository
from tests.support.kube_cluster import RealKube
from tests.support.kube_controller import (
    controller_process,
    create_lamina,
    events_of,
    install_cluster_basics,
    install_datamover_rbac,
    lamina_objects,
)
from tests.support.kube_crds import install_crds
from tests.support.kube_csi import TEST_STORAGE_CLASS, CsiStandIn
from tests.support.kube_node import KubeNode
from tests.support.kube_objects import block_pv_and_claim, wait_for
from tests.support.seaweedfs import S3Server

PASSWORD = b"controller-test-password"
IMAGE_SIZE = 2 * 1024 * 1024
TERMINAL = ("Succeeded", "Failed")


@pytest.fixture(scope="module")
def api(real_kube_cluster: RealKube) -> Iterator[Any]:
    with real_kube_cluster.api_client() as client:
        install_crds(client)
        install_cluster_basics(client)
        yield client


@dataclass
class Setup:
    api: Any
    kube: RealKube
    namespace: str
    folder: Path
    repo: str
    env: dict[str, str]
    catalog: str
    image: Path
    node: KubeNode

    def controller(
        self, *args: str, name: str = "controller", kubeconfig: Path | None = None
    ) -> Any:
        return controller_process(
            kubeconfig or self.kube.kubeconfig,
            self.namespace,
            self.folder,
            self.env,
            "--catalog",
            self.catalog,
            *args,
            name=name,
        )

    def backups(self) -> list[dict[str, Any]]:
        return lamina_objects(self.api, self.namespace, "backups")

    def phases(self) -> dict[str, str]:
        return {
            b["metadata"]["name"]: (b.get("status") or {}).get("phase", "") for b in self.backups()
        }

    def service(self) -> Service:
        return Service(self.repo, password=PASSWORD, catalog=self.catalog)


def _write_image(path: Path, seed: int) -> None:
    path.write_bytes(random.Random(seed).randbytes(IMAGE_SIZE))


@pytest.fixture
def setup(
    api: Any,
    real_kube_cluster: RealKube,
    kube_namespace: str,
    tmp_path: Path,
    s3_env: S3Server,
) -> Iterator[Setup]:
    import os

    repo = f"s3://{s3_env.create_bucket()}/repo"
    init_repository(repo, password=PASSWORD)
    image = tmp_path / "db.img"
    _write_image(image, 1)
    block_pv_and_claim(api, kube_namespace, "db", image)
    install_datamover_rbac(api, kube_namespace)
    core: Any = kubernetes.client.CoreV1Api(api)
    secret = {"password": PASSWORD.decode(), **s3_env.environment()}
    core.create_namespaced_secret(
        kube_namespace,
        {
            "metadata": {"name": "lamina-repo"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in secret.items()},
        },
    )
    node_env = {
        name: os.environ[name]
        for name in ("XDG_STATE_HOME", "LAMINA_CACHE_DIR")
        if name in os.environ
    }
    with (
        CsiStandIn(real_kube_cluster.kubeconfig, tmp_path / "csi", [kube_namespace]) as standin,
        KubeNode(
            real_kube_cluster.kubeconfig,
            tmp_path / "node",
            name=f"node-{kube_namespace}",
            namespaces=[kube_namespace],
            base_env=node_env,
        ) as node,
    ):
        yield Setup(
            api=api,
            kube=real_kube_cluster,
            namespace=kube_namespace,
            folder=tmp_path,
            repo=repo,
            env=s3_env.environment(),
            catalog=f"sqlite:///{tmp_path}/catalog.sqlite",
            image=image,
            node=node,
        )
    assert standin.errors == []


def _wait(setup: Setup, controller: Any, condition: Any, timeout: float) -> None:
    """wait_for, failing with the Backups' phases and the controller's last lines."""
    try:
        wait_for(condition, timeout=timeout, interval=0.3)
    except AssertionError:
        states = {
            b["metadata"]["name"]: (b.get("status") or {}).get("message") for b in setup.backups()
        }
        tail = "\n".join(controller.output.splitlines()[-30:])
        batch: Any = kubernetes.client.BatchV1Api(setup.api)
        core: Any = kubernetes.client.CoreV1Api(setup.api)
        jobs = {
            j.metadata.name: (j.status.active, j.status.succeeded, j.status.failed)
            for j in batch.list_namespaced_job(setup.namespace).items
        }
        pods = {
            p.metadata.name: p.status.phase for p in core.list_namespaced_pod(setup.namespace).items
        }
        node = f"node errors {setup.node.errors}, watch restarts {setup.node.watch_restarts}"
        raise AssertionError(f"{states}\njobs {jobs}\npods {pods}\n{node}\n{tail}") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _suspend(setup: Setup, name: str) -> None:
    custom: Any = kubernetes.client.CustomObjectsApi(setup.api)
    custom.patch_namespaced_custom_object(
        "lamina.dev",
        "v1alpha1",
        setup.namespace,
        "backupschedules",
        name,
        {"spec": {"suspend": True}},
    )

    # One worker at a time reconciles a schedule: once one has marked it Suspended, no
    # reconcile that read it before the suspension can still be making a Backup.
    def suspended() -> bool:
        schedule = custom.get_namespaced_custom_object(
            "lamina.dev", "v1alpha1", setup.namespace, "backupschedules", name
        )
        return bool(_ready(schedule).get("reason") == "Suspended")

    wait_for(suspended, timeout=60, interval=0.2)


def _succeeded(setup: Setup) -> list[dict[str, Any]]:
    return [b for b in setup.backups() if (b.get("status") or {}).get("phase") == "Succeeded"]


def _data_mover_leftovers(setup: Setup) -> list[str]:
    """The data movers' Jobs, Pods and source PVCs still in the namespace."""
    batch: Any = kubernetes.client.BatchV1Api(setup.api)
    core: Any = kubernetes.client.CoreV1Api(setup.api)
    found = [f"job {j.metadata.name}" for j in batch.list_namespaced_job(setup.namespace).items]
    found += [f"pod {p.metadata.name}" for p in core.list_namespaced_pod(setup.namespace).items]
    found += [
        f"pvc {c.metadata.name}"
        for c in core.list_namespaced_persistent_volume_claim(setup.namespace).items
        if c.metadata.name.startswith("lamina-source-")
    ]
    return found


def _all_terminal(setup: Setup) -> bool:
    phases = setup.phases()
    return bool(phases) and all(p in TERMINAL for p in phases.values())


def test_a_schedule_backs_up_its_pvc_once_per_slot_and_forgets_by_retention(setup: Setup) -> None:
    create_lamina(
        setup.api,
        setup.namespace,
        "backupschedules",
        "BackupSchedule",
        "db-often",
        {
            "selector": {"names": ["db"]},
            "every": "3s",
            "repository": {"url": setup.repo, "secretRef": {"name": "lamina-repo"}},
            "retention": {"keepLast": 1},
        },
    )
    port = _free_port()
    with setup.controller("--metrics-listen", f"127.0.0.1:{port}") as controller:
        _wait(setup, controller, lambda: len(_succeeded(setup)) >= 2, 150)
        metrics = (
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        )
        _suspend(setup, "db-often")
        _wait(setup, controller, lambda: _all_terminal(setup), 90)
        # what each Backup ran on goes once it is terminal: the Job, its Pod, the PVC made
        # from the snapshot (which stays Terminating while a Pod that used it exists)
        _wait(setup, controller, lambda: _data_mover_leftovers(setup) == [], 60)
        assert controller.process.poll() is None, controller.output
    assert "lamina_controller_leader 1.0" in metrics
    assert "# TYPE lamina_queue_depth gauge" in metrics
    assert 'lamina_controller_unfinished_backup_reconciles_total{phase="Transferring"}' in metrics

    backups = setup.backups()
    assert all(b["status"]["phase"] == "Succeeded" for b in backups), [
        (b["metadata"]["name"], b["status"].get("message")) for b in backups
    ]
    names = [b["metadata"]["name"] for b in backups]
    assert all(re.fullmatch(r"db-often-db-\d{8}-\d{6}", n) for n in names), names
    slots = [b["spec"]["slot"] for b in backups]
    assert len(set(slots)) == len(slots), "one Backup per slot"
    # no two backups of the volume overlapped
    spans = sorted((b["status"]["startTime"], b["status"]["completionTime"]) for b in backups)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, spans
    newest = sorted(backups, key=lambda b: b["spec"]["slot"])
    kept = {newest[-1]["status"]["pointId"]}
    service = setup.service()
    try:
        points = service.list_points("test/" + setup.namespace + "/db")
        assert {p.id for p in points} == kept, "retention keepLast 1 after each success"
        target = setup.folder / "restored.img"
        job = service.start_restore(newest[-1]["status"]["pointId"], str(target))
        job.wait()
        assert job.error is None
        assert target.read_bytes() == setup.image.read_bytes()
    finally:
        service.close()
    catalog = Catalog.open(setup.catalog)
    try:
        records = [r for r in catalog.history() if r.origin == "controller" and r.kind == "backup"]
    finally:
        catalog.close()
    done = {r.point for r in records if r.state == "succeeded"}
    assert done == {b["status"]["pointId"] for b in backups}
    schedule = lamina_objects(setup.api, setup.namespace, "backupschedules")[0]
    assert schedule["status"]["lastBackup"] in names and schedule["status"]["nextSlot"]
    # the newest point into a new PVC, by a Restore
    newest_point = newest[-1]["status"]["pointId"]
    create_lamina(
        setup.api,
        setup.namespace,
        "restores",
        "Restore",
        "db-back",
        {
            "point": newest_point[:8],
            "repository": {"url": setup.repo, "secretRef": {"name": "lamina-repo"}},
            "target": {"pvc": "db-restored", "storageClass": TEST_STORAGE_CLASS},
        },
    )
    with setup.controller(name="restorer") as controller:

        def restored() -> bool:
            (restore,) = lamina_objects(setup.api, setup.namespace, "restores")
            return (restore.get("status") or {}).get("phase") in TERMINAL

        _wait(setup, controller, restored, 90)
    (restore,) = lamina_objects(setup.api, setup.namespace, "restores")
    assert restore["status"]["phase"] == "Succeeded", restore["status"]
    core: Any = kubernetes.client.CoreV1Api(setup.api)
    claim = core.read_namespaced_persistent_volume_claim("db-restored", setup.namespace)
    volume = core.read_persistent_volume(claim.spec.volume_name)
    assert Path(volume.spec.csi.volume_handle).read_bytes() == setup.image.read_bytes()
    reasons = {e.reason for e in events_of(setup.api, setup.namespace, "db-often")}
    assert "Scheduled" in reasons
    assert {"Snapshotting", "Transferring", "Succeeded"} <= {
        e.reason for e in events_of(setup.api, setup.namespace, names[0])
    }


def _ready(obj: dict[str, Any]) -> dict[str, Any]:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition["type"] == "Ready":
            return dict(condition)
    return {}


def test_bad_input_gets_a_condition_an_event_and_a_history_entry_while_good_work_goes_on(
    setup: Setup,
) -> None:
    core: Any = kubernetes.client.CoreV1Api(setup.api)
    repository = {"url": setup.repo, "secretRef": {"name": "lamina-repo"}}
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    unreachable = {
        "url": f"{setup.repo}?endpoint=http://127.0.0.1:{closed.getsockname()[1]}",
        "secretRef": {"name": "lamina-repo"},
    }
    for name, spec in (
        ("bad-cron", {"selector": {}, "cron": "61 * * * *", "repository": repository}),
        ("offline", {"selector": {"names": ["db"]}, "every": "2s", "repository": unreachable}),
        ("nothing", {"selector": {"names": ["nope"]}, "every": "2s", "repository": repository}),
        (
            "no-secret",
            {
                "selector": {},
                "every": "2s",
                "repository": {"url": setup.repo, "secretRef": {"name": "gone"}},
            },
        ),
    ):
        create_lamina(setup.api, setup.namespace, "backupschedules", "BackupSchedule", name, spec)
    folder = setup.folder / "fsvol"
    folder.mkdir()
    block_pv_and_claim(setup.api, setup.namespace, "files", folder, mode="Filesystem")
    core.create_namespaced_secret(
        setup.namespace,
        {
            "metadata": {"name": "wrong-password"},
            "data": {"password": base64.b64encode(b"wrong").decode()},
        },
    )
    backups: list[tuple[str, dict[str, Any]]] = [
        ("fs-mode", {"source": {"pvc": "files"}, "repository": repository}),
        (
            "wrong-pw",
            {
                "source": {"pvc": "db"},
                "repository": {"url": setup.repo, "secretRef": {"name": "wrong-password"}},
            },
        ),
        ("missing-pvc", {"source": {"pvc": "absent"}, "repository": repository}),
        ("good", {"source": {"pvc": "db"}, "repository": repository}),
    ]
    for name, spec in backups:
        create_lamina(setup.api, setup.namespace, "backups", "Backup", name, spec)

    expected = {
        "bad-cron": "InvalidSchedule",
        "nothing": "NothingSelected",
        "no-secret": "SecretMissing",
        "offline": "RepositoryUnreachable",
    }
    with setup.controller() as controller:
        _wait(setup, controller, lambda: _all_terminal(setup), 120)

        def schedules_marked() -> bool:
            found = {
                s["metadata"]["name"]: _ready(s).get("reason")
                for s in lamina_objects(setup.api, setup.namespace, "backupschedules")
            }
            return found == expected

        wait_for(schedules_marked, timeout=30, interval=0.3)
        assert controller.process.poll() is None, controller.output
    closed.close()
    phases = setup.phases()
    assert phases == {
        "fs-mode": "Failed",
        "wrong-pw": "Failed",
        "missing-pvc": "Failed",
        "good": "Succeeded",
    }
    by_name = {b["metadata"]["name"]: b for b in setup.backups()}
    assert "Block" in by_name["fs-mode"]["status"]["message"]
    assert "password" in by_name["wrong-pw"]["status"]["message"].lower()
    assert "absent" in by_name["missing-pvc"]["status"]["message"]
    for name in ("fs-mode", "wrong-pw", "missing-pvc"):
        assert _ready(by_name[name])["status"] == "False"
        assert any(e.type == "Warning" for e in events_of(setup.api, setup.namespace, name)), name
    for name in expected:
        assert any(e.type == "Warning" for e in events_of(setup.api, setup.namespace, name)), name
    catalog = Catalog.open(setup.catalog)
    try:
        failed = [r for r in catalog.history() if r.origin == "controller" and r.state == "failed"]
    finally:
        catalog.close()
    described = " ".join(f"{r.description}: {r.error}" for r in failed)
    for name in ("bad-cron", "nothing", "no-secret", "fs-mode", "wrong-pw", "missing-pvc"):
        assert name in described, (name, described)
    offline = next(
        s for s in lamina_objects(setup.api, setup.namespace, "backupschedules")
        if s["metadata"]["name"] == "offline"
    )  # fmt: skip
    assert "is unreachable" in _ready(offline)["message"], offline["status"]
    assert any(
        "offline" in r.description and "is unreachable" in (r.error or "") for r in failed
    ), described
    # the unreachable schedule made no Backup; the others' snapshots went with their failure
    assert not any(b["spec"].get("schedule") == "offline" for b in setup.backups())
    assert _lamina_snapshots(setup, "db") == ["lamina-good"]


def test_only_the_lease_holder_acts_and_a_survivor_takes_over_after_kill_9(setup: Setup) -> None:
    """Two controller processes on one Lease; the leader is killed with SIGKILL twice (a new
    process joins after each kill); every slot still yields one point, never two."""
    from tests.support.kube_controller import check_invariants, lease_holder

    create_lamina(
        setup.api,
        setup.namespace,
        "backupschedules",
        "BackupSchedule",
        "db-ha",
        {
            "selector": {"names": ["db"]},
            "every": "2s",
            "repository": {"url": setup.repo, "secretRef": {"name": "lamina-repo"}},
        },
    )

    def start(identity: str) -> Any:
        return setup.controller(
            "--lease-namespace",
            setup.namespace,
            "--lease-duration",
            "3",
            "--identity",
            identity,
            name=identity,
        )

    with ExitStack() as stack:
        running = {name: stack.enter_context(start(name)) for name in ("a", "b")}
        spare = iter(("c", "d"))
        for _round in range(2):
            before = len(_succeeded(setup))
            _wait(
                setup, next(iter(running.values())), lambda b=before: len(_succeeded(setup)) > b, 90
            )
            leader = lease_holder(setup.api, setup.namespace)
            assert leader in running, (leader, list(running))
            running.pop(leader).kill()
            survivor = next(iter(running))

            def taken_over(expected: str = survivor) -> bool:
                return lease_holder(setup.api, setup.namespace) == expected

            wait_for(taken_over, timeout=30)
            newcomer = next(spare)
            running[newcomer] = stack.enter_context(start(newcomer))
        before = len(_succeeded(setup))
        _wait(setup, running[survivor], lambda: len(_succeeded(setup)) > before, 90)
        _suspend(setup, "db-ha")
        _wait(setup, running[survivor], lambda: _all_terminal(setup), 90)
        for process in running.values():
            assert process.process.poll() is None, process.output
    service = setup.service()
    try:
        problems = check_invariants(setup.api, setup.namespace, service, setup.catalog)
    finally:
        service.close()
    assert problems == []
    assert len(_succeeded(setup)) >= 3
    # the checker sees a Backup that no controller finished
    create_lamina(
        setup.api,
        setup.namespace,
        "backups",
        "Backup",
        "left-behind",
        {"source": {"pvc": "db"}, "repository": {"url": setup.repo}},
    )
    service = setup.service()
    try:
        problems = check_invariants(setup.api, setup.namespace, service, setup.catalog)
    finally:
        service.close()
    assert problems == ["Backup left-behind is new"]


def _apply_rbac(api: Any, docs: list[dict[str, Any]]) -> None:
    core: Any = kubernetes.client.CoreV1Api(api)
    rbac: Any = kubernetes.client.RbacAuthorizationV1Api(api)
    for doc in docs:
        kind, ns = doc["kind"], doc["metadata"].get("namespace")
        if kind == "ServiceAccount":
            core.create_namespaced_service_account(ns, doc)
        elif kind == "Role":
            rbac.create_namespaced_role(ns, doc)
        elif kind == "RoleBinding":
            rbac.create_namespaced_role_binding(ns, doc)
        elif kind == "ClusterRoleBinding":
            rbac.create_cluster_role_binding(doc)
        elif kind == "ClusterRole":  # the cluster's, shared by the tests: this version
            try:
                rbac.replace_cluster_role(doc["metadata"]["name"], doc)
            except kubernetes.client.ApiException as error:
                if error.status != 404:
                    raise
                rbac.create_cluster_role(doc)


def test_the_controller_needs_exactly_the_rights_of_deploy_controller_yaml(setup: Setup) -> None:
    """The controller as its ServiceAccount with ONLY deploy/controller.yaml's rights: a
    schedule's Backup, a Backup by hand, a data mover that fails and one that hangs past
    --job-timeout, a Restore, a bad schedule. The API server's audit log shows that nothing was
    refused and that the roles grant nothing unused but the documented rare path."""
    from lamina.backend.kube.controller_deploy import NAME, RARELY_USED, controller_manifests
    from tests.functional.test_kube_real_api import service_account_kubeconfig
    from tests.support.kube_node import Fault
    from tests.support.kube_rbac import Access, accesses, granted, least_privilege

    docs = [d for d in controller_manifests(setup.namespace) if d["kind"] != "Deployment"]
    _apply_rbac(setup.api, docs)
    kubeconfig = service_account_kubeconfig(
        setup.kube, setup.namespace, NAME, setup.folder / "controller-sa.kubeconfig"
    )

    def faults(pod: dict[str, Any], container: dict[str, Any]) -> Fault | None:
        name = pod["metadata"]["name"]
        if "-hangs-" in name:
            return Fault("hang")
        if "-fails-" in name:
            return Fault("fail")
        return None

    setup.node.fault = faults
    repository = {"url": setup.repo, "secretRef": {"name": "lamina-repo"}}
    # the failing and the hanging data mover have volumes of their own, so that they run
    # beside the others (a failing Job is retried once by the Job controller, after ~10 s)
    for pvc in ("db2", "db3"):
        block_pv_and_claim(setup.api, setup.namespace, pvc, setup.image)
    for name, pvc in (("ok", "db"), ("hangs", "db2"), ("fails", "db3")):
        create_lamina(
            setup.api,
            setup.namespace,
            "backups",
            "Backup",
            name,
            {"source": {"pvc": pvc}, "repository": repository},
        )
    create_lamina(
        setup.api,
        setup.namespace,
        "restores",
        "Restore",
        "back",
        {"point": "0123abcd", "repository": repository, "target": {"pvc": "db-copy"}},
    )
    create_lamina(
        setup.api,
        setup.namespace,
        "backupschedules",
        "BackupSchedule",
        "bad",
        {"selector": {}, "cron": "61 * * * *", "repository": repository},
    )
    create_lamina(
        setup.api,
        setup.namespace,
        "backupschedules",
        "BackupSchedule",
        "db-sched",
        {"selector": {"names": ["db"]}, "every": "2s", "repository": repository},
    )
    args = ["--lease-namespace", setup.namespace, "--lease-duration", "5"]
    args += ["--job-timeout", "25", "--concurrency", "3"]
    with setup.controller(*args, kubeconfig=kubeconfig) as controller:

        def scheduled_done() -> bool:
            return any(b["spec"].get("schedule") == "db-sched" for b in _succeeded(setup)) and all(
                setup.phases()[n] in TERMINAL for n in ("ok", "hangs", "fails")
            )

        _wait(setup, controller, scheduled_done, 120)
        _suspend(setup, "db-sched")
        _wait(setup, controller, lambda: _all_terminal(setup), 60)
        assert controller.process.poll() is None, controller.output
        assert controller.stop() == 0
    by_name = {b["metadata"]["name"]: b for b in setup.backups()}
    assert by_name["ok"]["status"]["phase"] == "Succeeded"
    assert _ready(by_name["hangs"])["reason"] == "DataMoverTimeout"
    assert _ready(by_name["fails"])["reason"] == "DataMoverFailed"
    # the newest good point's snapshot stays, as the next base; a failed Backup's goes
    newest_db = max(
        (b for b in _succeeded(setup) if b["spec"]["source"]["pvc"] == "db"),
        key=lambda b: b["status"]["completionTime"],
    )
    assert _lamina_snapshots(setup, "db") == [newest_db["status"]["snapshot"]]
    assert _lamina_snapshots(setup, "db2") == _lamina_snapshots(setup, "db3") == []
    (restore,) = lamina_objects(setup.api, setup.namespace, "restores")
    assert restore["status"]["phase"] == "Failed" and "0123abcd" in restore["status"]["message"]

    user = f"system:serviceaccount:{setup.namespace}:{NAME}"
    used = accesses(setup.kube.audit_events(user))
    assert used, "the controller made no API request"
    refused = {str(a): codes for a, codes in used.items() if any(c == 403 for c in codes)}
    assert refused == {}
    missing, unused = least_privilege(used, granted(docs, setup.namespace, NAME))
    assert sorted(map(str, missing)) == []
    assert unused == {Access(verb, group, resource) for verb, group, resource in RARELY_USED}


def test_dropped_connections_and_write_conflicts_cost_retries_never_a_slot(setup: Setup) -> None:
    """The controller reaches the API server through a forwarder that cuts every connection
    (its watches and requests in flight) again and again, while another client keeps changing
    the Backups under it, so that its status writes meet 409s. It recovers, and the checker
    finds every slot run once."""
    import json
    import threading

    import yaml

    from lamina.backend.kube.controller_deploy import NAME, controller_manifests
    from tests.functional.test_kube_real_api import service_account_kubeconfig
    from tests.support.kube_controller import check_invariants
    from tests.support.tcp_cutter import tcp_cutter

    rbac = [d for d in controller_manifests(setup.namespace) if d["kind"] != "Deployment"]

    create_lamina(
        setup.api,
        setup.namespace,
        "backupschedules",
        "BackupSchedule",
        "db-faults",
        {
            "selector": {"names": ["db"]},
            "every": "2s",
            "repository": {"url": setup.repo, "secretRef": {"name": "lamina-repo"}},
        },
    )
    custom: Any = kubernetes.client.CustomObjectsApi(setup.api)
    stop = threading.Event()
    bumps = [0]

    def conflicts() -> None:
        """Touch every unfinished Backup, so a status write from an older read gets a 409."""
        while not stop.wait(0.2):
            for backup in setup.backups():
                if (backup.get("status") or {}).get("phase") in TERMINAL:
                    continue
                try:
                    custom.patch_namespaced_custom_object(
                        "lamina.dev",
                        "v1alpha1",
                        setup.namespace,
                        "backups",
                        backup["metadata"]["name"],
                        {"metadata": {"annotations": {"lamina.test/bump": str(bumps[0])}}},
                    )
                    bumps[0] += 1
                except kubernetes.client.ApiException:
                    pass

    port = int(setup.kube.env["API_PORT"])
    with tcp_cutter("127.0.0.1", port) as cutter:
        # as its ServiceAccount, so that the audit log shows its requests
        _apply_rbac(setup.api, rbac)
        account = service_account_kubeconfig(
            setup.kube, setup.namespace, NAME, setup.folder / "sa.kubeconfig"
        )
        config = yaml.safe_load(account.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{cutter.port}"
        proxied = setup.folder / "proxied.kubeconfig"
        proxied.write_text(json.dumps(config))
        bumper = threading.Thread(target=conflicts, daemon=True)
        bumper.start()
        try:
            with setup.controller("--resync", "3", kubeconfig=proxied) as controller:
                for _round in range(2):
                    before = len(_succeeded(setup))
                    deadline = time.monotonic() + 90
                    while len(_succeeded(setup)) <= before:
                        assert time.monotonic() < deadline, controller.output[-3000:]
                        stop.wait(1.0)
                        cutter.cut()
                stop.set()
                bumper.join(10)
                _suspend(setup, "db-faults")
                _wait(setup, controller, lambda: _all_terminal(setup), 90)
                assert controller.process.poll() is None, controller.output
        finally:
            stop.set()
        assert cutter.cuts >= 2
    service = setup.service()
    try:
        assert check_invariants(setup.api, setup.namespace, service, setup.catalog) == []
    finally:
        service.close()
    conflicted = [
        e
        for e in setup.kube.audit_events(f"system:serviceaccount:{setup.namespace}:{NAME}")
        if e.get("verb") == "patch"
        and (e.get("objectRef") or {}).get("subresource") == "status"
        and (e.get("responseStatus") or {}).get("code") == 409
    ]
    assert conflicted, "no status write met a conflict: the fault was not injected"
    assert bumps[0] > 0


def test_an_api_server_restart_mid_backup_costs_retries_never_a_slot(setup: Setup) -> None:
    """The kube-apiserver is killed and started again (same flags, same etcd) twice, each time
    while a schedule's Backup is Snapshotting or Transferring: the controller's watches and
    requests in flight are cut and its Lease cannot be renewed for a while. Each of those
    Backups still ends Succeeded, and the checker finds every slot run once."""
    from tests.support.kube_controller import check_invariants

    create_lamina(
        setup.api,
        setup.namespace,
        "backupschedules",
        "BackupSchedule",
        "db-restarts",
        {
            "selector": {"names": ["db"]},
            "every": "2s",
            "repository": {"url": setup.repo, "secretRef": {"name": "lamina-repo"}},
        },
    )
    in_flight: list[str] = []
    first_pid = int(setup.kube.env["APISERVER_PID"])

    def busy_backup() -> str | None:
        for name, phase in setup.phases().items():
            if phase in ("Snapshotting", "Transferring") and name not in in_flight:
                return name
        return None

    args = ["--lease-namespace", setup.namespace, "--lease-duration", "3", "--resync", "3"]
    with setup.controller(*args) as controller:
        for _round in range(2):
            found: list[str] = []

            def caught(found: list[str] = found) -> bool:
                name = busy_backup()
                if name is not None:
                    found.append(name)
                return bool(found)

            _wait(setup, controller, caught, 60)
            in_flight.append(found[0])
            setup.kube.restart_api_server()

            def ended(name: str = found[0]) -> bool:
                return setup.phases().get(name) in TERMINAL

            _wait(setup, controller, ended, 60)
        _suspend(setup, "db-restarts")
        _wait(setup, controller, lambda: _all_terminal(setup), 60)
        assert controller.process.poll() is None, controller.output
        broken_watches = controller.output.count("watch of backups broke")
    phases = setup.phases()
    assert [phases[name] for name in in_flight] == ["Succeeded", "Succeeded"], {
        b["metadata"]["name"]: (b.get("status") or {}).get("message") for b in setup.backups()
    }
    # the faults reached the controller: each restart broke its watches
    assert broken_watches >= 2, broken_watches
    service = setup.service()
    try:
        assert check_invariants(setup.api, setup.namespace, service, setup.catalog) == []
    finally:
        service.close()
    # the control plane came back whole for the tests after this one, its env file updated
    pid = int(setup.kube.env["APISERVER_PID"])
    assert pid != first_pid
    assert b"kube-apiserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    core: Any = kubernetes.client.CoreV1Api(setup.api)
    assert core.read_namespace(setup.namespace).status.phase == "Active"


CBT_DRIVER = "cbt.controller.csi.lamina.test"
MiB = 1 << 20
CBT_VOLUME_SIZE = 16 * MiB


def _lamina_snapshots(setup: Setup, pvc: str) -> list[str]:
    """Names of the VolumeSnapshots of `pvc` in the namespace (the controller makes them all)."""
    custom: Any = kubernetes.client.CustomObjectsApi(setup.api)
    listed = custom.list_namespaced_custom_object(
        "snapshot.storage.k8s.io", "v1", setup.namespace, "volumesnapshots"
    )
    return sorted(
        s["metadata"]["name"]
        for s in listed["items"]
        if s["spec"]["source"].get("persistentVolumeClaimName") == pvc
    )


def _set_suspend(setup: Setup, name: str, suspend: bool) -> None:
    custom: Any = kubernetes.client.CustomObjectsApi(setup.api)
    custom.patch_namespaced_custom_object(
        "lamina.dev", "v1alpha1", setup.namespace, "backupschedules", name,
        {"spec": {"suspend": suspend}},
    )  # fmt: skip


@contextmanager
def _cbt_driver(setup: Setup) -> Iterator[CsiStandIn]:
    """A second CSI driver in the namespace whose SnapshotMetadataService is lamina's own
    SnapshotMetadata server (TLS) over the stand-in's frozen copies, as a driver's sidecar."""
    from lamina.backend.cbt.server import start_server
    from tests.support.fake_kube import make_tls_files
    from tests.support.kube_csi import ensure_classes
    from tests.support.kube_stack import classes_of

    ensure_classes(setup.api, CBT_DRIVER, *classes_of(CBT_DRIVER))
    tls = make_tls_files(setup.folder / "cbt-tls", "cbt")
    with (
        CsiStandIn(setup.kube.kubeconfig, setup.folder / "csi-cbt", [setup.namespace],
                   driver=CBT_DRIVER) as standin,
        start_server(
            standin.local.root,
            tls_cert_pem=tls.cert_path.read_bytes(),
            tls_key_pem=tls.key_path.read_bytes(),
        ) as server,
    ):  # fmt: skip
        custom: Any = kubernetes.client.CustomObjectsApi(setup.api)
        where = ("cbt.storage.k8s.io", "v1beta1", "snapshotmetadataservices")
        body: dict[str, Any] = {
            "apiVersion": "cbt.storage.k8s.io/v1beta1",
            "kind": "SnapshotMetadataService",
            "metadata": {"name": CBT_DRIVER},
            "spec": {
                "address": server.address,
                "audience": "lamina-controller-cbt",
                "caCert": base64.b64encode(tls.ca_pem).decode(),
            },
        }
        try:
            custom.create_cluster_custom_object(*where, body)
        except kubernetes.client.ApiException as error:
            assert error.status == 409
            current = custom.get_cluster_custom_object(*where, CBT_DRIVER)
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            custom.replace_cluster_custom_object(*where, CBT_DRIVER, body)
        yield standin
    assert standin.errors == []


def _digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_cbt_incrementals_read_what_changed_and_one_snapshot_per_pvc_remains(
    setup: Setup,
) -> None:
    """A volume of a driver with a SnapshotMetadataService: the schedule's first Backup is
    full, the second (3 MiB changed) asks CBT for the changed blocks and reads and stores
    about those; the older snapshot goes once it succeeds. A base deleted by someone falls
    back to a scan with a Normal Event; a data-mover Job deleted mid-flight runs again, once,
    and makes one point. Every point restores byte-identically; one snapshot remains."""
    from tests.support.kube_controller import check_invariants
    from tests.support.kube_node import Fault
    from tests.support.kube_stack import classes_of

    storage_class, _ = classes_of(CBT_DRIVER)
    image = setup.folder / "data.img"
    volume = bytearray(random.Random(7).randbytes(CBT_VOLUME_SIZE))
    image.write_bytes(volume)
    repository = {"url": setup.repo, "secretRef": {"name": "lamina-repo"}}
    expected: dict[str, str] = {}  # Backup -> digest of the volume it saw

    def change(offset: int, length: int, seed: int) -> None:
        volume[offset : offset + length] = random.Random(seed).randbytes(length)
        with image.open("r+b") as out:
            out.seek(offset)
            out.write(volume[offset : offset + length])

    hung: list[str] = []

    def faults(pod: dict[str, Any], container: dict[str, Any]) -> Fault | None:
        # the first data mover of "data-rerun" hangs, until its Job is deleted
        name = pod["metadata"]["name"]
        if "data-rerun" in name and container["name"] == "lamina" and not hung:
            hung.append(name)
            return Fault("hang")
        return None

    setup.node.fault = faults
    with _cbt_driver(setup) as standin, setup.controller() as controller:
        block_pv_and_claim(
            setup.api, setup.namespace, "data", image, storage_class=storage_class,
            driver=CBT_DRIVER,
        )  # fmt: skip
        create_lamina(
            setup.api, setup.namespace, "backupschedules", "BackupSchedule", "data-cbt",
            {"selector": {"names": ["data"]}, "every": "2s", "repository": repository},
        )  # fmt: skip
        first: list[str] = []
        for round_ in range(2):
            _wait(setup, controller, lambda n=round_ + 1: len(setup.backups()) >= n, 60)
            _suspend(setup, "data-cbt")  # exactly one Backup per round
            (name,) = [
                b["metadata"]["name"] for b in setup.backups() if b["metadata"]["name"] not in first
            ]
            first.append(name)
            expected[name] = _digest(bytes(volume))
            _wait(setup, controller, lambda: _all_terminal(setup), 60)
            if round_ == 0:
                change(4 * MiB, 2 * MiB, 1)  # 3 MiB in two places
                change(12 * MiB, MiB, 2)
                _set_suspend(setup, "data-cbt", False)
        by_name = {b["metadata"]["name"]: b for b in setup.backups()}
        full, cbt = (by_name[n]["status"] for n in first)
        assert (full["phase"], full["mode"]) == ("Succeeded", "full"), full
        assert (cbt["phase"], cbt["mode"]) == ("Succeeded", "cbt"), cbt
        assert cbt["base"] == {
            "snapshot": full["snapshot"],
            "handle": cbt["base"]["handle"],
            "pointId": full["pointId"],
        }
        # the changed 4 KiB blocks, not the volume: random data, so every one of them differs
        assert cbt["bytesRead"] == 3 * MiB, cbt
        assert 3 * MiB <= cbt["bytesStored"] < 3 * MiB + MiB // 4, cbt
        assert full["bytesRead"] == CBT_VOLUME_SIZE, full
        # the first snapshot went once the second point was made: one base per PVC
        wait_for(lambda: _lamina_snapshots(setup, "data") == [cbt["snapshot"]], timeout=30)
        # and the driver's snapshot with it (the stand-in acts on its next round)
        gone = f"{setup.namespace}/{full['snapshot']}"
        wait_for(lambda: gone in standin.deleted_snapshots, timeout=10)

        # someone deletes the base, and the data mover's Job while it runs: the Backup reads
        # the whole volume (scan) and says why, and runs again once its Pods are gone
        custom: Any = kubernetes.client.CustomObjectsApi(setup.api)
        custom.delete_namespaced_custom_object(
            "snapshot.storage.k8s.io", "v1", setup.namespace, "volumesnapshots", cbt["snapshot"]
        )
        change(0, MiB, 3)
        expected["data-rerun"] = _digest(bytes(volume))
        create_lamina(
            setup.api, setup.namespace, "backups", "Backup", "data-rerun",
            {"source": {"pvc": "data"}, "repository": repository},
        )  # fmt: skip
        core: Any = kubernetes.client.CoreV1Api(setup.api)

        def hanging() -> bool:
            pods = core.list_namespaced_pod(
                setup.namespace, label_selector="lamina.dev/backup=data-rerun"
            ).items
            return any(p.status.phase == "Running" for p in pods) and bool(hung)

        _wait(setup, controller, hanging, 60)
        job = next(b for b in setup.backups() if b["metadata"]["name"] == "data-rerun")
        batch: Any = kubernetes.client.BatchV1Api(setup.api)
        batch.delete_namespaced_job(
            job["status"]["job"], setup.namespace, propagation_policy="Background"
        )
        _wait(setup, controller, lambda: _all_terminal(setup), 90)
        rerun = next(b for b in setup.backups() if b["metadata"]["name"] == "data-rerun")
        status = rerun["status"]
        assert (status["phase"], status["runs"], status["mode"]) == ("Succeeded", 2, "scan")
        assert status["bytesRead"] == CBT_VOLUME_SIZE and "base" not in status, status
        events = events_of(setup.api, setup.namespace, "data-rerun")
        fallback = [e for e in events if e.reason == "WholeVolumeRead"]
        assert fallback and {e.type for e in fallback} == {"Normal"}, fallback
        assert f"{cbt['snapshot']} of point {cbt['pointId']} is gone" in fallback[0].message
        warned = [e for e in events if e.type == "Warning"]
        assert [e.reason for e in warned] == ["JobMissing"], warned
        wait_for(lambda: _lamina_snapshots(setup, "data") == [status["snapshot"]], timeout=30)
        assert controller.process.poll() is None, controller.output

    service = setup.service()
    try:
        assert check_invariants(setup.api, setup.namespace, service, setup.catalog) == []
        points = {p.id: p for p in service.list_points(f"test/{setup.namespace}/data")}
        by_name = {b["metadata"]["name"]: b for b in setup.backups()}
        assert len(points) == len(expected) == 3
        for name, digest in expected.items():
            point = by_name[name]["status"]["pointId"]
            target = setup.folder / f"restored-{name}.img"
            restore = service.start_restore(point, str(target))
            restore.wait()
            assert restore.error is None, (name, restore.error)
            assert _digest(target.read_bytes()) == digest, name
    finally:
        service.close()
