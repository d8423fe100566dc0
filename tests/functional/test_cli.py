"""The `lamina` command as a user runs it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.volumes import make_volume, scribble, sha256_file

MiB = 1024 * 1024
LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


def lamina(
    *args: str, ok: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*LAMINA, *args], capture_output=True, text=True, env=env, timeout=300)
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lamina: error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def test_backup_points_chain_restore_verify(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    lamina("repo", "init", repo, "--grid-size", "1MiB")
    vol = make_volume(tmp_path / "vol.img", 16 * MiB)
    first = json.loads(
        lamina("backup", "--repo", repo, "--volume", "ns/db", str(vol), "--json").stdout
    )
    changed = scribble(vol, 4, 65536)
    ranges = tmp_path / "ranges.json"
    ranges.write_text(json.dumps([{"byte_offset": o, "size_bytes": n} for o, n in changed]))
    second = json.loads(
        lamina(
            "backup",
            "--repo",
            repo,
            "--volume",
            "ns/db",
            str(vol),
            "--changed-ranges",
            str(ranges),
            "--json",
        ).stdout
    )
    assert second["parent"] == first["id"] and second["stats"]["bytes_read"] == 4 * 65536
    points = json.loads(lamina("points", "--repo", repo, "--json").stdout)
    assert [p["id"] for p in points] == [first["id"], second["id"]]
    assert points[0]["volume"] == {"cluster": "local", "namespace": "ns", "name": "db"}
    human = lamina("points", "--repo", repo, "--volume", "ns/db").stdout
    assert first["id"] in human and second["id"] in human
    chain = json.loads(lamina("chain", "--repo", repo, second["id"][:6], "--json").stdout)
    assert [p["id"] for p in chain] == [second["id"], first["id"]]
    # The human chain draws each point under its parent, the columns aligned.
    tree = lamina("chain", "--repo", repo, second["id"]).stdout.splitlines()
    assert tree[2].startswith(f"  ● {first['id']}  ")
    assert tree[3].startswith(f"  └─○ {second['id']}  ")
    created = [re.search(r"\d{4}-\d\d-\d\d \d\d:", line).start() for line in tree[2:]]  # type: ignore[union-attr]
    assert len(set(created)) == 1 and tree[1].index("CREATED") == created[0]
    out = tmp_path / "out.img"
    lamina("restore", "--repo", repo, second["id"], str(out))
    assert sha256_file(out) == sha256_file(vol)
    report = json.loads(lamina("verify", "--repo", repo, "--deep", "--json").stdout)
    assert report["ok"] and report["points"] == 2


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["points", "--repo", "{tmp}/nowhere"], "no lamina repository"),
        (["restore", "--repo", "{repo}", "ffffffff", "{tmp}/x.img"], "no restore point matches"),
        (["backup", "--repo", "{repo}", "--volume", "v", "{tmp}/missing.img"], "does not exist"),
        (
            [
                "backup",
                "--repo",
                "{repo}",
                "--volume",
                "v",
                "{tmp}/vol.img",
                "--changed-ranges",
                "{tmp}/bad.json",
            ],
            "not valid JSON",
        ),
        (["repo", "init", "{repo}"], "already exists"),
        (["repo", "init", "{tmp}/r2", "--grid-size", "3MiB"], "power of two"),
        (["points", "--repo", "s3:/"], "needs a bucket"),
    ],
)
def test_errors_are_one_clear_line(tmp_path: Path, args: list[str], expected: str) -> None:
    repo = str(tmp_path / "repo")
    lamina("repo", "init", repo)
    make_volume(tmp_path / "vol.img", 4 * MiB)
    (tmp_path / "bad.json").write_text("[{")
    result = lamina(*[a.format(tmp=tmp_path, repo=repo) for a in args], ok=False)
    assert expected in one_line_error(result)


def test_encrypted_repository_needs_the_right_password(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("s3cret\n")
    bad.write_text("guess\n")
    lamina("repo", "init", repo, "--encrypt", "--password-file", str(good))
    assert "encrypted" in one_line_error(lamina("points", "--repo", repo, ok=False))
    assert "wrong password" in one_line_error(
        lamina("points", "--repo", repo, "--password-file", str(bad), ok=False)
    )
    env = {**os.environ, "LAMINA_PASSWORD_FILE": str(good)}
    vol = make_volume(tmp_path / "vol.img", 4 * MiB)
    lamina("backup", "--repo", repo, "--volume", "v", str(vol), "-q", env=env)
    assert len(json.loads(lamina("points", "--repo", repo, "--json", env=env).stdout)) == 1


def test_verify_exits_non_zero_on_problems(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    lamina("repo", "init", str(repo))
    vol = make_volume(tmp_path / "vol.img", 4 * MiB)
    lamina("backup", "--repo", str(repo), "--volume", "v", str(vol))
    for pack in (repo / "packs").rglob("*"):
        if pack.is_file():
            pack.unlink()
    result = lamina("verify", "--repo", str(repo), ok=False)
    assert result.returncode == 1 and "problem" in result.stdout


def _random_image(path: Path, mib: int) -> Path:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))
    return path


def _packs(repo: Path) -> int:
    return len(
        [p for p in (repo / "packs").rglob("*") if p.is_file() and not p.name.startswith(".")]
    )


def _wait_for_packs(
    repo: Path, count: int, proc: subprocess.Popen[str] | subprocess.Popen[bytes]
) -> None:
    """Wait until a running backup has uploaded ``count`` more packs: a moment in mid-backup."""
    deadline = time.monotonic() + 60
    target = _packs(repo) + count
    while time.monotonic() < deadline:
        if _packs(repo) >= target:
            return
        assert proc.poll() is None, "the backup ended before the moment to interrupt it"
        time.sleep(0.005)
    raise AssertionError("no packs appeared")


def test_kill_during_backup_leaves_earlier_points_intact(tmp_path: Path) -> None:
    """kill -9 in the middle of a backup: verify stays clean, every earlier point restores."""
    repo = str(tmp_path / "repo")
    lamina("repo", "init", repo, "--grid-size", "256KiB")
    vol = make_volume(tmp_path / "vol.img", 8 * MiB, seed=7)
    first = json.loads(lamina("backup", "--repo", repo, "--volume", "v", str(vol), "--json").stdout)
    expected = sha256_file(vol)
    big = _random_image(tmp_path / "big.img", 320)
    for packs_before_kill in (1, 4, 9):
        proc = subprocess.Popen(
            [*LAMINA, "backup", "--repo", repo, "--volume", "v", str(big), "-q"]
        )
        _wait_for_packs(Path(repo), packs_before_kill, proc)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        report = json.loads(lamina("verify", "--repo", repo, "--json").stdout)
        assert report["ok"], report
        assert len(json.loads(lamina("points", "--repo", repo, "--json").stdout)) == 1
        out = tmp_path / "out.img"
        lamina("restore", "--repo", repo, first["id"], str(out))
        assert sha256_file(out) == expected
        out.unlink()
    # and the next backup still works, deduplicating nothing it should not
    lamina("backup", "--repo", repo, "--volume", "v", str(vol))
    assert json.loads(lamina("verify", "--repo", repo, "--deep", "--json").stdout)["ok"]


def test_sigterm_cancels_a_backup_cleanly(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    lamina("repo", "init", repo)
    big = _random_image(tmp_path / "big.img", 320)
    proc = subprocess.Popen(
        [*LAMINA, "backup", "--repo", repo, "--volume", "v", str(big), "-q"],
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_packs(Path(repo), 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cancelled" in err
    assert json.loads(lamina("points", "--repo", repo, "--json").stdout) == []


def test_demo_runs_a_verified_chain(tmp_path: Path) -> None:
    result = lamina("demo", "--dir", str(tmp_path / "demo"))
    assert "demo passed" in result.stdout
    assert result.stdout.count(": byte-identical") == 5
    assert "lamina controller --local fired it: point" in result.stdout
    points = json.loads(
        lamina("points", "--repo", str(tmp_path / "demo" / "repo"), "--json").stdout
    )
    assert [p["kind"] for p in points] == ["full"] + ["incremental"] * 4
    # The last point is the schedule's: a backup job the controller recorded in the catalog.
    history = json.loads(
        lamina("history", "--catalog", str(tmp_path / "demo" / "catalog.sqlite"), "--json").stdout
    )
    assert any(
        j["kind"] == "backup"
        and j["point"] == points[-1]["id"]
        and j["started_by"]["origin"] == "controller"
        for j in history
    )
    assert all(p["snapshot_handle"] for p in points)
    assert points[1]["stats"]["bytes_read"] < 64 * 1024  # the config file change: a few blocks
    assert all(p["parent"] == q["id"] for p, q in zip(points[1:], points, strict=False))
