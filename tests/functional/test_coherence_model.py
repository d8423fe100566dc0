"""Model-based test of the coherence protocol: long-lived processes beside short ones.

Two long-lived in-process `Service`s, a real `lamina serve` process and short `lamina` CLI
processes back up, forget, delete, consolidate, prune and list, in orders hypothesis
chooses, all on one repository. After every step a fresh process checks that every point
restores byte-identically and that `verify --deep` is clean.

Volumes are built from a few cell patterns, so new backups keep meeting pieces that an
earlier prune deleted: the case a stale piece index gets wrong.

CI runs a bounded number of examples; LAMINA_MODEL_EXAMPLES=50 (and LAMINA_MODEL_STEPS)
run it longer.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from lamina.backend.engine.lifecycle import Policy
from lamina.backend.service import JobState, Service, init_repository
from lamina.backend.service.remote import ApiClient, RemoteService

KiB = 1024
GRID = 64 * KiB
CELLS = 3
PATTERNS = 2
VOLUMES = ("ns/v1", "ns/v1", "ns/v2")  # mostly one volume: its points meet each other
ACTORS = ("server", "service-a", "service-b", "cli")
LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]
EXAMPLES = int(os.environ.get("LAMINA_MODEL_EXAMPLES", "5"))
STEPS = int(os.environ.get("LAMINA_MODEL_STEPS", "20"))


def cell(volume: str, index: int, tag: int) -> bytes:
    """A piece of its own for each volume, cell and pattern: it dies when no point has it."""
    return (f"{volume} cell {index} pattern {tag} ".encode() * GRID)[:GRID]


class LaminaServe:
    """A real `lamina serve` process on loopback, reached through the typed client."""

    def __init__(self, url: str, workdir: Path, env: dict[str, str]) -> None:
        token = secrets.token_hex(16)
        token_file = workdir / "token"
        token_file.write_text(token)
        command = [*LAMINA, "serve", "--repo", url, "--listen", "127.0.0.1:0"]
        command += ["--token-file", str(token_file), "--grace", "1s"]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        stream = self.proc.stderr
        threading.Thread(target=lambda: self.lines.extend(stream), daemon=True).start()
        deadline = time.monotonic() + 60
        address = None
        while address is None:
            assert self.proc.poll() is None, f"lamina serve exited: {''.join(self.lines)}"
            assert time.monotonic() < deadline, f"lamina serve did not start: {self.lines}"
            for line in list(self.lines):
                match = re.search(r"listening on (\S+) ", line)
                if match:
                    address = match.group(1)
            time.sleep(0.05)
        self.service = RemoteService(ApiClient(address, token=token))

    def stop(self) -> None:
        self.service.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def finished(job: object) -> object:
    assert job.wait(300)  # type: ignore[attr-defined]
    assert job.state == JobState.SUCCEEDED, job.error  # type: ignore[attr-defined]
    return job.result  # type: ignore[attr-defined]


def machine_for(make_url: object, env: dict[str, str]) -> type[RuleBasedStateMachine]:
    class Coherence(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.workdir = Path(tempfile.mkdtemp(prefix="lamina-model-"))
            self.url: str = make_url(self.workdir)  # type: ignore[operator]
            # Fingerprint blocks as large as the grid: a scan incremental stores whole cells,
            # so a forgotten pattern's piece dies whole and prune deletes it.
            init_repository(self.url, grid_size=GRID, fingerprint_block=GRID)
            self.server = LaminaServe(self.url, self.workdir, env)
            self.services = {
                "server": self.server.service,
                "service-a": Service(self.url),
                "service-b": Service(self.url),
            }
            self.expected: dict[str, bytes] = {}
            self.cells = {v: [0] * CELLS for v in VOLUMES}
            self.log: list[str] = []

        def teardown(self) -> None:
            if os.environ.get("LAMINA_MODEL_VERBOSE"):
                print("\n".join(["--- example", *self.log]))
            self.server.stop()
            for name, service in self.services.items():
                if name != "server":
                    service.close()

        # -------------------------------------------------------------- actions

        def cli(self, *args: str) -> str:
            result = subprocess.run(
                [*LAMINA, *args, "--repo", self.url],
                capture_output=True,
                text=True,
                env=env,
                timeout=300,
            )
            assert result.returncode == 0, f"lamina {' '.join(args)}: {result.stderr}"
            return result.stdout

        def ids_of(self, volume: str, *, incremental: bool = False) -> list[str]:
            probe = Service(self.url)
            try:
                points = probe.list_points(volume)
                return [p.id for p in points if p.parent or not incremental]
            finally:
                probe.close()

        @rule(
            actor=st.sampled_from(ACTORS),
            volume=st.sampled_from(VOLUMES),
            changes=st.lists(
                st.tuples(st.integers(0, CELLS - 1), st.integers(0, PATTERNS - 1)),
                min_size=1,
                max_size=3,
            ),
        )
        def backup(self, actor: str, volume: str, changes: list[tuple[int, int]]) -> None:
            tags = self.cells[volume]
            for index, tag in changes:
                tags[index] = tag
            data = b"".join(cell(volume, i, t) for i, t in enumerate(tags))
            source = self.workdir / f"{volume.replace('/', '-')}.img"
            source.write_bytes(data)
            self.log.append(f"{actor}: backup {volume} {tags}")
            if actor == "cli":
                out = self.cli("backup", str(source), "--volume", volume, "--json", "-q")
                point_id = str(json.loads(out)["id"])
            else:
                point = finished(self.services[actor].start_backup(str(source), volume))
                point_id = point.id  # type: ignore[attr-defined]
            self.expected[point_id] = data

        @rule(actor=st.sampled_from(ACTORS), keep=st.integers(1, 2), then_prune=st.booleans())
        def forget(self, actor: str, keep: int, then_prune: bool) -> None:
            self.log.append(f"{actor}: forget --keep-last {keep}{' --prune' if then_prune else ''}")
            if actor == "cli":
                self.cli("forget", "--keep-last", str(keep), *(["--prune"] if then_prune else []))
            else:
                finished(self.services[actor].start_forget(Policy(last=keep)))
                if then_prune:
                    finished(self.services[actor].start_prune())

        @rule(
            actor=st.sampled_from(ACTORS), volume=st.sampled_from(VOLUMES), pick=st.integers(0, 9)
        )
        def delete(self, actor: str, volume: str, pick: int) -> None:
            ids = self.ids_of(volume)
            if not ids:
                return
            victim = ids[pick % len(ids)]
            self.log.append(f"{actor}: delete {victim}")
            if actor == "cli":
                self.cli("delete", victim)
            else:
                finished(self.services[actor].start_delete(victim))

        @rule(actor=st.sampled_from(ACTORS), volume=st.sampled_from(VOLUMES))
        def consolidate(self, actor: str, volume: str) -> None:
            ids = self.ids_of(volume, incremental=True)
            if not ids:
                return
            self.log.append(f"{actor}: consolidate {ids[-1]}")
            if actor == "cli":
                self.cli("consolidate", ids[-1])
            else:
                finished(self.services[actor].start_consolidate(ids[-1]))

        @rule(actor=st.sampled_from(ACTORS))
        def prune(self, actor: str) -> None:
            self.log.append(f"{actor}: prune")
            if actor == "cli":
                self.cli("prune")
            else:
                finished(self.services[actor].start_prune())

        @rule(actor=st.sampled_from(("server", "service-a", "service-b")))
        def browse(self, actor: str) -> None:
            """What a TUI or API client does between jobs: it fills the caches."""
            service = self.services[actor]
            for point in service.list_points():
                service.chain(point.id)

        # -------------------------------------------------------------- the invariant

        @invariant()
        def every_point_restores_and_verifies(self) -> None:
            fresh = Service(self.url)
            try:
                points = fresh.list_points()
                history = "\n".join(self.log)
                for p in points:
                    assert p.id in self.expected, f"unknown point {p.id} after:\n{history}"
                    with fresh.open_image(p.id, readahead_bytes=0) as image:
                        assert image.pread(image.size, 0) == self.expected[p.id], (
                            f"point {p.id} reads other bytes after:\n{history}"
                        )
                report = finished(fresh.start_verify(deep=True))
                assert report.ok, f"{report.problems} after:\n{history}"  # type: ignore[attr-defined]
            finally:
                fresh.close()

    return Coherence


def _run(machine: type[RuleBasedStateMachine]) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        ),
    )


def test_long_lived_processes_beside_cli_processes_lose_nothing_local() -> None:
    env = dict(os.environ)
    _run(machine_for(lambda workdir: str(workdir / "repo"), env))


@pytest.mark.s3
def test_long_lived_processes_beside_cli_processes_lose_nothing_s3(
    s3_env: object, s3_cli_env: dict[str, str]
) -> None:
    server = s3_env

    def make_url(workdir: Path) -> str:
        return f"s3://{server.create_bucket('model')}/repo"  # type: ignore[attr-defined]

    _run(machine_for(make_url, s3_cli_env))
