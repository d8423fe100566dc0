"""The `lamina` command ends without tearing the interpreter down (cli/main.py, ``run``), and
still does everything an exit must: other threads finish, atexit handlers run, every byte of
output is flushed, the exit code is the command's. Real processes, real pipes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from lamina.backend.service import Service, init_repository
from tests.support.volumes import make_volume

PRELUDE = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from concurrent.futures import ThreadPoolExecutor
    from lamina.backend.cli.main import run
    out = sys.argv[1]

    def late_write():
        time.sleep(0.3)
        with open(out + ".thread", "w") as f:
            f.write("finished")

    atexit.register(lambda: open(out + ".atexit", "w").write("ran"))
    threading.Thread(target=late_write).start()
    pool = ThreadPoolExecutor(2)  # never shut down: the exit must not wait on it for ever
    pool.submit(time.sleep, 0.1)
    sys.argv = ["lamina", *sys.argv[2:]]
    run()
    """
)


def run_lamina(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PRELUDE, str(tmp_path / "probe"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def repository_with_points(tmp_path: Path, count: int, seed: int) -> str:
    """A repository of ``count`` points, each of its own volume with a long name."""
    repo = str(tmp_path / "repo")
    init_repository(repo)
    image = make_volume(tmp_path / "disk.img", 1024 * 1024, seed=seed)
    service = Service(repo, catalog="none")
    try:
        for i in range(count):
            service.start_backup(str(image), f"ns/volume-{i:03d}-{'x' * 200}").wait()
    finally:
        service.close()
    return repo


def test_threads_and_atexit_handlers_finish_and_the_code_is_the_commands(tmp_path: Path) -> None:
    result = run_lamina(tmp_path, "points", "--repo", str(tmp_path / "missing"))
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("lamina: error: ") and len(result.stderr.splitlines()) == 1
    assert (tmp_path / "probe.thread").read_text() == "finished"
    assert (tmp_path / "probe.atexit").read_text() == "ran"


def test_every_byte_of_a_long_listing_reaches_the_pipe(tmp_path: Path) -> None:
    repo = repository_with_points(tmp_path, 40, seed=31)
    result = run_lamina(tmp_path, "points", "--repo", repo, "--json")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) > 16 * 1024  # more than one buffer's worth
    assert len(json.loads(result.stdout)) == 40
    assert (tmp_path / "probe.atexit").read_text() == "ran"


def test_a_reader_that_goes_away_costs_no_traceback(tmp_path: Path) -> None:
    repo = repository_with_points(tmp_path, 150, seed=32)  # more than a pipe holds
    lamina = subprocess.Popen(
        [sys.executable, "-m", "lamina.backend.cli.main", "points", "--repo", repo, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert lamina.stdout is not None and lamina.stderr is not None
    lamina.stdout.readline()
    lamina.stdout.close()  # as `| head -1` does
    errors = lamina.stderr.read().decode()
    assert lamina.wait(timeout=60) == 0
    assert "Traceback" not in errors and "Exception ignored" not in errors, errors
