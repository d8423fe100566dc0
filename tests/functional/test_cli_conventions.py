"""CLI conventions a user relies on: $LAMINA_REPO, a password asked on the terminal, plurals,
plain words instead of Python values, ISO times in JSON, and full ids echoed back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from lamina.backend.service import JobState, Service, init_repository
from tests.support.api_server import TOKEN, running_server
from tests.support.ext4_trees import MiB, mkfs_ext4
from tests.support.terminal import TerminalProcess
from tests.support.volumes import make_volume

LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


def lamina(
    *args: str, env: dict[str, str] | None = None, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    result = subprocess.run(
        [*LAMINA, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**environment, **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lamina: error: "), result.stderr
    return lines[0]


# ---------------------------------------------------------------------- LAMINA_REPO


def test_lamina_repo_stands_in_for_repo_everywhere(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    env = {"LAMINA_REPO": repo}
    lamina("repo", "init", env=env)
    assert json.loads(lamina("repo", "info", "--json", env=env).stdout)["encrypted"] is False
    vol = make_volume(tmp_path / "vol.img", 4 * MiB)
    point = json.loads(lamina("backup", "--volume", "v", str(vol), "--json", env=env).stdout)
    assert [p["id"] for p in json.loads(lamina("points", "--json", env=env).stdout)] == [
        point["id"]
    ]
    assert point["id"] in lamina("chain", point["id"][:8], env=env).stdout
    lamina("verify", "-q", env=env)
    assert lamina("locks", env=env).stdout.strip() == "no locks"
    restored = tmp_path / "restored.img"
    lamina("restore", point["id"], str(restored), "-q", env=env)
    assert restored.read_bytes() == vol.read_bytes()
    # --repo still wins over the variable.
    other = str(tmp_path / "other")
    lamina("repo", "init", other)
    assert json.loads(lamina("points", "--repo", other, "--json", env=env).stdout) == []


def test_without_repo_or_lamina_repo_one_line_says_so(tmp_path: Path) -> None:
    for args in (["points"], ["repo", "info"], ["repo", "init"], ["locks"], ["files", "ls", "x"]):
        assert "set LAMINA_REPO" in one_line_error(lamina(*args, ok=False)), args


def test_lamina_repo_does_not_get_in_the_way_of_server(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    init_repository(repo)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    with running_server(Service(repo)) as server:
        listed = lamina(
            *("points", "--server", server.address, "--token-file", str(token), "--json"),
            env={"LAMINA_REPO": str(tmp_path / "elsewhere")},
        )
    assert json.loads(listed.stdout) == []


# ---------------------------------------------------------------------- password on a tty


def test_the_password_is_asked_on_a_terminal(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    with TerminalProcess([*LAMINA, "repo", "init", repo, "--encrypt"], env=env) as init:
        init.wait_for("password for the new repository:")
        init.send("s3cret\r")
        init.wait_for("the same password again:")
        init.send("s3cret\r")
        assert init.wait(60) == 0, init.text()
        assert "s3cret" not in init.text()  # not echoed
    assert "encrypted" in init.text()
    assert "encrypted" in one_line_error(lamina("repo", "info", "--repo", repo, ok=False))
    password_file = tmp_path / "password"
    password_file.write_text("s3cret\n")
    info = lamina("repo", "info", "--repo", repo, "--json", "--password-file", str(password_file))
    assert json.loads(info.stdout)["encrypted"] is True

    with TerminalProcess([*LAMINA, "points", "--repo", repo], env=env) as points:
        points.wait_for("password of the repository:")
        points.send("s3cret\r")
        assert points.wait(60) == 0, points.text()
        assert "no restore points" in points.text()

    with TerminalProcess([*LAMINA, "points", "--repo", repo], env=env) as wrong:
        wrong.wait_for("password of the repository:")
        wrong.send("guess\r")
        assert wrong.wait(60) != 0
        assert "wrong password" in wrong.text() and "Traceback" not in wrong.text()


def test_a_daemon_mount_asks_on_the_terminal_and_hands_the_password_over(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    init_repository(repo, password=b"s3cret")
    service = Service(repo, password=b"s3cret")
    job = service.start_backup(str(make_volume(tmp_path / "vol.img", 4 * MiB)), "v")
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    service.close()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    argv = [*LAMINA, "mount", "--repo", repo, "--point", job.result.id, str(mnt), "--daemon"]
    with TerminalProcess(argv, env=env) as mount:
        mount.wait_for("password of the repository:")
        mount.send("s3cret\r")
        assert mount.wait(60) == 0, mount.text()
    try:
        assert (mnt / "disk.img").read_bytes() == (tmp_path / "vol.img").read_bytes()
        assert not list(tmp_path.glob("lamina-mount-*")) and "s3cret" not in mount.text()
    finally:
        subprocess.run([*LAMINA, "umount", str(mnt)], check=True, timeout=60)


def test_two_different_new_passwords_create_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    with TerminalProcess([*LAMINA, "repo", "init", str(repo), "--encrypt"]) as init:
        init.wait_for("password for the new repository:")
        init.send("one\r")
        init.wait_for("the same password again:")
        init.send("two\r")
        assert init.wait(60) == 2
        assert "the two passwords differ" in init.text()
    assert not repo.exists() or not any(repo.iterdir())


def test_without_a_terminal_an_encrypted_repository_needs_a_file(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    assert "--password-file" in one_line_error(lamina("repo", "init", repo, "--encrypt", ok=False))


# ---------------------------------------------------------------------- words


@pytest.fixture(scope="module")
def one_point(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A repository with one point of an ext4 volume holding one folder with one file."""
    tmp = tmp_path_factory.mktemp("words")
    repo = str(tmp / "repo")
    init_repository(repo, grid_size=256 * 1024)
    tree = tmp / "tree"
    (tree / "only").mkdir(parents=True)
    (tree / "only" / "file.txt").write_text("one\n")
    image = mkfs_ext4(tree, tmp / "vol.img", 16 * MiB)
    service = Service(repo)
    job = service.start_backup(str(image), "ns/one")
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    service.close()
    return repo, str(job.result.id)


def test_counts_of_one_are_singular(one_point: tuple[str, str], tmp_path: Path) -> None:
    repo, point = one_point
    chain = lamina("chain", "--repo", repo, point).stdout
    assert "1 point:" in chain and "1 points" not in chain
    verify = lamina("verify", "--repo", repo).stdout
    assert "1 point," in verify and "1 points" not in verify
    got = lamina("files", "get", "--repo", repo, point, "/only", "--to", str(tmp_path), "-q")
    assert "1 file, 1 directory and 0 symlinks" in got.stdout, got.stdout
    pruned = lamina("prune", "--repo", repo, "--dry-run").stdout
    assert "1 point uses" in pruned and "1 points" not in pruned
    unlocked = lamina("unlock", "--repo", repo).stdout
    assert "0 locks removed" in unlocked and "(s)" not in unlocked


def test_repo_info_speaks_words_not_python(one_point: tuple[str, str]) -> None:
    repo, _ = one_point
    info = lamina("repo", "info", "--repo", repo).stdout
    assert "True" not in info and "False" not in info
    assert any(line.split() == ["encrypted", "no"] for line in info.splitlines()), info
    assert any(line.split() == ["object_lock_days", "off"] for line in info.splitlines()), info
    assert any(line.split() == ["fingerprint_block", "64.0", "KiB"] for line in info.splitlines())


def test_locks_json_uses_iso_times(one_point: tuple[str, str]) -> None:
    repo, point = one_point
    service = Service(repo)
    reader = service.open_image(point)  # holds a shared lock until closed
    try:
        locks = json.loads(lamina("locks", "--repo", repo, "--json").stdout)
    finally:
        reader.close()
        service.close()
    assert len(locks) == 1
    points = json.loads(lamina("points", "--repo", repo, "--json").stdout)
    for key in ("created", "expires"):
        value = locks[0][key]
        assert isinstance(value, str) and value.endswith("Z"), value
        assert len(value) == len(points[0]["created"])  # the same form as a point's time
        assert datetime.fromisoformat(value.replace("Z", "+00:00")).year >= 2024
    assert locks[0]["stale"] is False and locks[0]["kind"] == "shared"


def test_delete_echoes_the_full_id(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    init_repository(repo)
    vol = make_volume(tmp_path / "vol.img", 4 * MiB)
    point = json.loads(
        lamina("backup", "--repo", repo, "--volume", "v", str(vol), "--json").stdout
    )["id"]
    deleted = lamina("delete", "--repo", repo, point[:6]).stdout
    assert f"deleted point {point}" in deleted
    assert json.loads(lamina("points", "--repo", repo, "--json").stdout) == []
