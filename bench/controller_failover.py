"""The cluster controller under faults, on the real loopback control plane: failover time and
concurrent data movers (docs/controller.md).

    .venv/bin/python bench/controller_failover.py --rounds 30 --movers 20

Failover: two `lamina controller` processes on one Lease (``--lease-duration``), a schedule
every 2 s. Each round waits for a Backup in flight (Snapshotting or Transferring), kills the
leader with SIGKILL at a random moment of that flight (0 to ``--jitter`` s in), restarts the
killed one as a follower, and ends when that Backup is terminal: the survivor adopts and
finishes it. Measured per round: kill → the survivor holds the Lease, and kill → the survivor's
first reconcile of the in-flight Backup (its
``lamina_controller_unfinished_backup_reconciles_total`` for those phases moves). After the
rounds the checker of tests/support/kube_controller.py must find nothing wrong, and every
round's Backup must have Succeeded.

Movers: N PVCs backed up at once by N data-mover Jobs into one SeaweedFS bucket
(``--concurrency N``); every point is then restored and compared with its image: lost or
corrupted points are counted.

Everything runs on 127.0.0.1; the run is bounded by its rounds and timeouts.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import kubernetes  # noqa: E402

from lamina.backend.catalog import Catalog  # noqa: E402
from lamina.backend.service import Service  # noqa: E402
from lamina.backend.service.service import init_repository  # noqa: E402
from tests.support.kube_cluster import real_kube  # noqa: E402
from tests.support.kube_controller import (  # noqa: E402
    check_invariants,
    controller_process,
    create_lamina,
    install_cluster_basics,
    install_datamover_rbac,
    lamina_objects,
    lease_holder,
)
from tests.support.kube_crds import install_crds  # noqa: E402
from tests.support.kube_csi import CsiStandIn  # noqa: E402
from tests.support.kube_node import KubeNode  # noqa: E402
from tests.support.kube_objects import block_pv_and_claim, wait_for  # noqa: E402
from tests.support.seaweedfs import seaweedfs_s3  # noqa: E402

PASSWORD = b"bench-controller"
TERMINAL = ("Succeeded", "Failed")
IN_FLIGHT = ("Snapshotting", "Transferring")
UNFINISHED = "lamina_controller_unfinished_backup_reconciles_total"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _in_flight_reconciles(port: int) -> float:
    """The controller's reconciles of Backups that were Snapshotting or Transferring, or -1
    while its /metrics does not answer."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return -1.0
    total = 0.0
    for line in text.splitlines():
        for phase in IN_FLIGHT:
            if line.startswith(f'{UNFINISHED}{{phase="{phase}"}} '):
                total += float(line.split()[1])
    return total


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _in_flight(api: Any, namespace: str, seen: dict[str, str]) -> str | None:
    """A Backup that is Snapshotting or Transferring and that no round has used yet."""
    for name, phase in _phases(api, namespace).items():
        if phase in IN_FLIGHT and name not in seen:
            return name
    return None


def _phases(api: Any, namespace: str) -> dict[str, str]:
    return {
        b["metadata"]["name"]: (b.get("status") or {}).get("phase", "")
        for b in lamina_objects(api, namespace, "backups")
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--movers", type=int, default=20)
    parser.add_argument("--lease-duration", type=float, default=3.0)
    parser.add_argument(
        "--jitter", type=float, default=2.0, help="the kill comes 0 to this many s into a Backup"
    )
    parser.add_argument("--image-mib", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results: dict[str, Any] = {"rounds": args.rounds, "movers": args.movers}
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lamina-bench-ctl-")))
        os.environ["XDG_STATE_HOME"] = str(folder / "state")
        os.environ["LAMINA_CACHE_DIR"] = str(folder / "cache")
        s3 = stack.enter_context(seaweedfs_s3(folder / "s3"))
        os.environ.update(s3.environment())
        kube = stack.enter_context(real_kube())
        api = stack.enter_context(kube.api_client())
        install_crds(api)
        install_cluster_basics(api)
        namespace = kube.new_namespace("bench")
        repo = f"s3://{s3.create_bucket()}/repo"
        init_repository(repo, password=PASSWORD)
        install_datamover_rbac(api, namespace)
        core: Any = kubernetes.client.CoreV1Api(api)
        secret = {"password": PASSWORD.decode(), **s3.environment()}
        core.create_namespaced_secret(
            namespace,
            {
                "metadata": {"name": "lamina-repo"},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in secret.items()},
            },
        )
        images = {}
        for index in range(max(1, args.movers)):
            name = f"vol{index:02d}"
            image = folder / f"{name}.img"
            image.write_bytes(random.Random(index).randbytes(args.image_mib * 2**20))
            block_pv_and_claim(api, namespace, name, image)
            images[name] = image
        node_env = {k: os.environ[k] for k in ("XDG_STATE_HOME", "LAMINA_CACHE_DIR")}
        stack.enter_context(CsiStandIn(kube.kubeconfig, folder / "csi", [namespace]))
        stack.enter_context(
            KubeNode(
                kube.kubeconfig,
                folder / "node",
                name=f"node-{namespace}",
                namespaces=[namespace],
                base_env=node_env,
            )
        )
        catalog = f"sqlite:///{folder}/catalog.sqlite"
        repository = {"url": repo, "secretRef": {"name": "lamina-repo"}}

        # ----- failover ------------------------------------------------------------------
        if args.rounds:
            create_lamina(
                api,
                namespace,
                "backupschedules",
                "BackupSchedule",
                "ha",
                {"selector": {"names": ["vol00"]}, "every": "2s", "repository": repository},
            )
            ports: dict[str, int] = {}

            def start(identity: str) -> Any:
                ports[identity] = _free_port()
                return stack.enter_context(
                    controller_process(
                        kube.kubeconfig,
                        namespace,
                        folder,
                        dict(s3.environment()),
                        "--catalog",
                        catalog,
                        "--lease-namespace",
                        namespace,
                        "--lease-duration",
                        str(args.lease_duration),
                        "--identity",
                        identity,
                        "--metrics-listen",
                        f"127.0.0.1:{ports[identity]}",
                        name=identity,
                    )
                )

            running = {name: start(name) for name in ("c0", "c1")}
            taken: list[float] = []
            reconciled: list[float] = []
            outcomes: dict[str, str] = {}  # the Backup each round killed a leader under
            misses = 0  # random moments that fell after the Backup had ended: drawn again
            begun = time.monotonic()
            while len(outcomes) < args.rounds:
                leader = wait_for(
                    lambda: (
                        lease_holder(api, namespace) in running and lease_holder(api, namespace)
                    ),
                    timeout=60,
                )
                assert isinstance(leader, str)
                backup = wait_for(lambda: _in_flight(api, namespace, outcomes), timeout=120)
                assert isinstance(backup, str)
                time.sleep(rng.uniform(0.0, args.jitter))  # a random moment of its flight
                if _phases(api, namespace).get(backup) not in IN_FLIGHT:
                    misses += 1
                    continue
                (survivor,) = [n for n in running if n != leader]
                wait_for(lambda s=survivor: _in_flight_reconciles(ports[s]) >= 0, timeout=60)
                before = _in_flight_reconciles(ports[survivor])
                killed_at = time.monotonic()
                running.pop(leader).kill()
                wait_for(
                    lambda s=survivor: lease_holder(api, namespace) == s, timeout=60, interval=0.02
                )
                taken.append(time.monotonic() - killed_at)
                wait_for(
                    lambda s=survivor, b=before: _in_flight_reconciles(ports[s]) > b,
                    timeout=60,
                    interval=0.02,
                )
                reconciled.append(time.monotonic() - killed_at)
                # the killed one comes back, as a follower
                newcomer = f"c{len(outcomes) + 2}"
                running[newcomer] = start(newcomer)
                ended = wait_for(
                    lambda b=backup: _phases(api, namespace).get(b) in TERMINAL and b,
                    timeout=300,
                    interval=0.1,
                )
                outcomes[backup] = _phases(api, namespace)[str(ended)]
                print(
                    f"round {len(outcomes)}: {backup} {outcomes[backup]}; lease {taken[-1]:.2f} s,"
                    f" reconcile {reconciled[-1]:.2f} s",
                    flush=True,
                )
            rounds_seconds = time.monotonic() - begun
            custom: Any = kubernetes.client.CustomObjectsApi(api)
            custom.patch_namespaced_custom_object(
                "lamina.dev",
                "v1alpha1",
                namespace,
                "backupschedules",
                "ha",
                {"spec": {"suspend": True}},
            )
            wait_for(
                lambda: all(p in TERMINAL for p in _phases(api, namespace).values()),
                timeout=300,
                interval=0.5,
            )
            service = Service(repo, password=PASSWORD, catalog=catalog)
            problems = check_invariants(api, namespace, service, catalog)
            service.close()
            phases = _phases(api, namespace)
            results["failover"] = {
                "lease_duration_s": args.lease_duration,
                "rounds": len(outcomes),
                "rounds_seconds": rounds_seconds,
                "moments_redrawn": misses,
                "lease_taken_p50_s": statistics.median(taken),
                "lease_taken_p95_s": _percentile(taken, 0.95),
                "in_flight_reconcile_p50_s": statistics.median(reconciled),
                "in_flight_reconcile_p95_s": _percentile(reconciled, 0.95),
                "killed_under_succeeded": sum(o == "Succeeded" for o in outcomes.values()),
                "backups": len(phases),
                "succeeded": sum(p == "Succeeded" for p in phases.values()),
                "failed": sum(p == "Failed" for p in phases.values()),
                "checker_problems": problems,
            }
            for process in running.values():
                process.stop()
            for backup in list(phases):
                custom.delete_namespaced_custom_object(
                    "lamina.dev", "v1alpha1", namespace, "backups", backup
                )

        # ----- concurrent data movers ------------------------------------------------------
        if args.movers:
            with controller_process(
                kube.kubeconfig,
                namespace,
                folder,
                dict(s3.environment()),
                "--catalog",
                catalog,
                "--concurrency",
                str(args.movers),
                name="movers",
            ) as controller:
                started = time.monotonic()
                for name in images:
                    create_lamina(
                        api,
                        namespace,
                        "backups",
                        "Backup",
                        f"m-{name}",
                        {"source": {"pvc": name}, "repository": repository},
                    )
                wait_for(
                    lambda: (
                        sum(
                            p in ("Succeeded", "Failed")
                            for n, p in _phases(api, namespace).items()
                            if n.startswith("m-")
                        )
                        == len(images)
                    ),
                    timeout=900,
                    interval=0.5,
                )
                elapsed = time.monotonic() - started
                assert controller.process.poll() is None, controller.output
            backups = {b["metadata"]["name"]: b for b in lamina_objects(api, namespace, "backups")}
            service = Service(repo, password=PASSWORD, catalog=catalog)
            lost = corrupted = 0
            for name, image in images.items():
                status = backups[f"m-{name}"].get("status") or {}
                if status.get("phase") != "Succeeded":
                    lost += 1
                    continue
                target = folder / f"restored-{name}.img"
                job = service.start_restore(status["pointId"], str(target))
                job.wait()
                if job.error or target.read_bytes() != image.read_bytes():
                    corrupted += 1
                target.unlink(missing_ok=True)
            service.close()
            total = len(images) * args.image_mib * 2**20
            results["movers"] = {
                "movers": len(images),
                "image_mib": args.image_mib,
                "seconds": elapsed,
                "throughput_mib_s": total / 2**20 / elapsed,
                "lost": lost,
                "corrupted": corrupted,
            }
        opened = Catalog.open(catalog)
        results["catalog_jobs"] = len(opened.history())
        opened.close()
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    failover = results.get("failover", {})
    movers = results["movers"] if isinstance(results.get("movers"), dict) else {}
    unfinished_rounds = failover and failover["killed_under_succeeded"] < failover["rounds"]
    bad = (
        failover.get("checker_problems")
        or unfinished_rounds
        or movers.get("lost")
        or movers.get("corrupted")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
