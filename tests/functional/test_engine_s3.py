"""The engine on a real S3 server (SeaweedFS on loopback): the same promises as on a folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lamina.backend.service import JobState, RestoreReport, Service, init_repository
from tests.support.seaweedfs import S3Server
from tests.support.volumes import make_volume, scribble, sha256_file

MiB = 1024 * 1024
LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


def test_chain_on_s3_restores_byte_identical(s3_repo_url: str, tmp_path: Path) -> None:
    init_repository(s3_repo_url, grid_size=512 * 1024)
    service = Service(s3_repo_url)
    vol = make_volume(tmp_path / "vol.img", 24 * MiB, seed=3)
    expected = []
    for step in range(3):
        changed = None if step == 0 else scribble(vol, 25, 8192, seed=step)
        job = service.start_backup(str(vol), "prod/db", changed_ranges=changed)
        job.wait()
        assert job.state == JobState.SUCCEEDED, job.error
        if step:
            assert job.result.stats["bytes_read"] == 25 * 8192
        expected.append((job.result.id, sha256_file(vol)))
    for point_id, digest in expected:
        out = tmp_path / f"{point_id}.img"
        job = service.start_restore(point_id, str(out))
        job.wait()
        assert job.state == JobState.SUCCEEDED, job.error
        assert sha256_file(out) == digest
    job = service.start_verify(deep=True)
    job.wait()
    assert job.result.ok, job.result.problems


def test_restore_reads_pieces_in_few_requests(s3_repo_url: str, tmp_path: Path) -> None:
    """S3 requests follow bytes: neighbouring pieces of a pack come in one ranged GET."""
    init_repository(s3_repo_url, grid_size=64 * 1024)
    service = Service(s3_repo_url)
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.write(os.urandom(16 * MiB))  # 256 pieces of 64 KiB in one or two packs
    job = service.start_backup(str(vol), "v")
    job.wait()
    result_job = Service(s3_repo_url).start_restore(job.result.id, str(tmp_path / "out.img"))
    result_job.wait()
    assert result_job.state == JobState.SUCCEEDED, result_job.error
    report = result_job.result
    assert isinstance(report, RestoreReport) and report.requests < 20, report
    assert report.pieces == 256 and report.bytes_written == 16 * MiB  # 64 KiB pieces
    assert sha256_file(tmp_path / "out.img") == sha256_file(vol)


def test_corrupt_object_on_s3_fails_restore_with_offset(
    s3_repo_url: str, s3_env: S3Server, tmp_path: Path
) -> None:
    init_repository(s3_repo_url)
    service = Service(s3_repo_url)
    vol = tmp_path / "vol.img"
    with open(vol, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(MiB)
        f.write(os.urandom(MiB))
    job = service.start_backup(str(vol), "v")
    job.wait()
    bucket = s3_repo_url.split("/")[2]
    s3 = s3_env.client()
    (key,) = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="repo/packs/")["Contents"]]
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[50] ^= 0x55
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    restore = Service(s3_repo_url).start_restore(job.result.id, str(tmp_path / "out.img"))
    restore.wait()
    assert restore.state == JobState.FAILED
    assert "volume offset 1048576" in str(restore.error)
    assert not (tmp_path / "out.img").exists()


def test_kill_during_s3_backup_keeps_earlier_points(
    s3_repo_url: str, s3_server: S3Server, s3_cli_env: dict[str, str], tmp_path: Path
) -> None:
    subprocess.run(
        [*LAMINA, "repo", "init", s3_repo_url], env=s3_cli_env, check=True, capture_output=True
    )
    vol = make_volume(tmp_path / "vol.img", 8 * MiB)
    first = json.loads(
        subprocess.run(
            [*LAMINA, "backup", "--repo", s3_repo_url, "--volume", "v", str(vol), "--json"],
            env=s3_cli_env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    big = tmp_path / "big.img"
    noise = os.urandom(MiB)
    with open(big, "wb") as f:
        for i in range(200):
            f.write(i.to_bytes(8, "little") + noise[8:])
    proc = subprocess.Popen(
        [*LAMINA, "backup", "--repo", s3_repo_url, "--volume", "v", str(big), "-q"], env=s3_cli_env
    )
    bucket = s3_repo_url.split("/")[2]
    s3 = s3_server.client()
    deadline = time.monotonic() + 60
    while s3.list_objects_v2(Bucket=bucket, Prefix="repo/packs/").get("KeyCount", 0) < 3:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    verify = subprocess.run(
        [*LAMINA, "verify", "--repo", s3_repo_url, "--json"],
        env=s3_cli_env,
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"]
    out = tmp_path / "out.img"
    subprocess.run(
        [*LAMINA, "restore", "--repo", s3_repo_url, first["id"], str(out)],
        env=s3_cli_env,
        check=True,
    )
    assert sha256_file(out) == sha256_file(vol)


def test_unreachable_s3_is_one_clear_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # discard port: nothing listens
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    result = subprocess.run(
        [*LAMINA, "points", "--repo", "s3://bucket/repo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0], result.stderr
