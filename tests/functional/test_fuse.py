"""Real FUSE mounts of a repository on S3 (SeaweedFS): every point's disk.img and files/.

Each mount runs as `lamina mount` in its own process; every fixture unmounts in its
teardown, whatever happened, so no test leaves a mount behind.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from lamina.backend.engine.fsview import point_dir_name
from lamina.backend.service import JobState, PointInfo, Service, init_repository
from tests.support.ext4_trees import (
    BASE_TIME,
    MiB,
    change_file,
    describe_tree,
    freeze,
    make_source_tree,
    mkfs_ext4,
    sha256_file,
)
from tests.support.seaweedfs import S3Server, subprocess_environment

pytestmark = pytest.mark.s3

LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]

needs_fuse = pytest.mark.skipif(
    not os.access("/dev/fuse", os.R_OK | os.W_OK), reason="/dev/fuse is not usable here"
)


@dataclass(frozen=True)
class Chain:
    url: str
    env: dict[str, str]
    points: list[PointInfo]
    image_sha256: list[str]
    sources: list[Path]
    volume_dir: str  # cluster/namespace/volume


def _lamina(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LAMINA, *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def _is_mounted(path: Path) -> bool:
    target = str(path.resolve(strict=False))
    with open("/proc/self/mountinfo") as f:  # \ooo escapes for space, tab, newline, backslash
        return any(line.split()[4].encode().decode("unicode_escape") == target for line in f)


def _force_unmount(path: Path) -> None:
    """Teardown: loop mounts on top first, then the FUSE mount, live or dead."""
    for _ in range(3):
        subprocess.run(["fusermount", "-u", "-z", str(path)], capture_output=True)
        if not _is_mounted(path):
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def mounted(
    env: dict[str, str], url: str, mountpoint: Path, *extra: str
) -> Iterator[tuple[Path, int]]:
    """`lamina mount --daemon`; yields (mountpoint, pid); always unmounts afterwards."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    result = _lamina(env, "mount", "--repo", url, str(mountpoint), "--daemon", *extra)
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.strip())
    try:
        assert _is_mounted(mountpoint)
        yield mountpoint, pid
    finally:
        _force_unmount(mountpoint)
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _backup(service: Service, image: Path, volume: str) -> PointInfo:
    job = service.start_backup(str(image), volume)
    job.wait()
    assert job.state == JobState.SUCCEEDED, job.error
    point: PointInfo = job.result
    return point


@pytest.fixture(scope="module")
def chain(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """Three points of an ext4 volume on S3, changed with debugfs between them."""
    tmp = tmp_path_factory.mktemp("fuse-chain")
    url = f"s3://{s3_server.create_bucket()}/repo"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in s3_server.environment().items():
            mp.setenv(name, value)
        init_repository(url, grid_size=256 * 1024)
        service = Service(url)
        source = make_source_tree(tmp / "src")
        image = mkfs_ext4(source, tmp / "vol.img", 24 * MiB)
        points, shas, sources = [], [], []

        def record() -> None:
            points.append(_backup(service, image, "prod/shop/db"))
            shas.append(sha256_file(image))
            sources.append(freeze(source, tmp / f"src-{len(points)}"))

        record()
        change_file(image, source, "etc/hosts", b"10.1.2.3 db\n", BASE_TIME + 50_000)
        change_file(image, source, "data/new.txt", b"added later\n" * 50, BASE_TIME + 50_001)
        record()
        change_file(image, source, "data/random.bin", os.urandom(900_000), BASE_TIME + 60_000)
        change_file(image, source, "big.bin", os.urandom(3 * MiB + 5), BASE_TIME + 60_001)
        record()
        service.close()
    yield Chain(url, subprocess_environment(s3_server), points, shas, sources, "prod/shop/db")


@needs_fuse
def test_every_point_reads_back_exactly(chain: Chain, tmp_path: Path) -> None:
    with (
        mounted(chain.env, chain.url, tmp_path / "all") as (mnt, _),
        mounted(chain.env, chain.url, tmp_path / "one", "--point", chain.points[0].id) as (one, _),
    ):
        volume = mnt / chain.volume_dir
        names = sorted(os.listdir(volume))
        assert names == sorted([*(point_dir_name(p) for p in chain.points), "latest"])
        assert os.readlink(volume / "latest") == point_dir_name(chain.points[-1])
        for point, sha, source in zip(chain.points, chain.image_sha256, chain.sources, strict=True):
            top = volume / point_dir_name(point)
            assert sorted(os.listdir(top)) == ["disk.img", "files", "manifest.json"]
            assert os.stat(top).st_mtime_ns // 10**9 == _created_seconds(point)
            assert os.path.getsize(top / "disk.img") == point.capacity
            assert sha256_file(top / "disk.img") == sha
            seen = describe_tree(top / "files")
            seen.pop("lost+found", None)
            assert seen == describe_tree(source)
        # a second mount at the same time, of one point only
        assert sorted(os.listdir(one)) == ["disk.img", "files", "manifest.json"]
        assert sha256_file(one / "disk.img") == chain.image_sha256[0]
        assert (one / "files" / "etc" / "hosts").read_text() == "127.0.0.1 localhost\n"
        assert (volume / "latest" / "files" / "etc" / "hosts").read_text() == "10.1.2.3 db\n"


def _created_seconds(point: PointInfo) -> int:
    from lamina.backend.engine.fsview import time_ns

    return time_ns(point.created) // 10**9


@needs_fuse
def test_writes_are_refused(chain: Chain, tmp_path: Path) -> None:
    spaced = tmp_path / "a mount\tpoint"  # mountinfo escapes these; umount must still find it
    with mounted(chain.env, chain.url, spaced, "--point", chain.points[1].id) as (mnt, _):
        target = mnt / "files" / "etc" / "hosts"
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC):
            with pytest.raises(OSError) as failure:
                os.open(target, flags)
            assert failure.value.errno == errno.EROFS
        for action in (
            lambda: (mnt / "files" / "new").write_text("x"),
            lambda: (mnt / "files" / "dir").mkdir(),
            lambda: target.unlink(),
            lambda: os.chmod(target, 0o777),
            lambda: (mnt / "files" / "l").symlink_to("x"),
            lambda: os.rename(target, mnt / "files" / "moved"),
        ):
            with pytest.raises(OSError) as failure:
                action()
            assert failure.value.errno == errno.EROFS
        assert target.read_text() == "10.1.2.3 db\n"  # still readable, unchanged
        result = _lamina(chain.env, "umount", str(mnt))
        assert result.returncode == 0, result.stderr
        assert not _is_mounted(mnt)


@needs_fuse
def test_idle_timeout_unmounts(chain: Chain, tmp_path: Path) -> None:
    with mounted(chain.env, chain.url, tmp_path / "m", "--idle-timeout", "2s") as (mnt, pid):
        started = time.monotonic()
        assert os.listdir(mnt)  # an access: the clock starts again
        _wait_for(lambda: not _is_mounted(mnt), 15, "the idle mount to go away")
        assert time.monotonic() - started >= 1.5
        _wait_for(lambda: not _alive(pid), 10, "the mount process to exit")


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        return stat_line.split(") ", 1)[1][0] != "Z"
    return finished == 0


@needs_fuse
def test_killed_daemon_is_cleaned_by_umount(chain: Chain, tmp_path: Path) -> None:
    with mounted(chain.env, chain.url, tmp_path / "m") as (mnt, pid):
        os.kill(pid, signal.SIGKILL)
        _wait_for(lambda: not _alive(pid), 10, "the killed daemon to go")
        with pytest.raises(OSError) as failure:
            os.listdir(mnt)
        # the first access after the daemon died may see the aborted connection itself
        assert failure.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
        result = _lamina(chain.env, "umount", str(mnt))
        assert result.returncode == 0, result.stderr
        assert not _is_mounted(mnt)
        again = _lamina(chain.env, "umount", str(mnt))
        assert again.returncode == 1 and "is not mounted" in again.stderr
    other = _lamina(chain.env, "umount", "/proc")
    assert other.returncode == 1 and "not a lamina mount" in other.stderr


@needs_fuse
def test_sigterm_unmounts_a_foreground_mount(chain: Chain, tmp_path: Path) -> None:
    mnt = tmp_path / "fg"
    mnt.mkdir()
    proc = subprocess.Popen(
        [*LAMINA, "mount", "--repo", chain.url, str(mnt), "--point", chain.points[2].id[:8]],
        env=chain.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: _is_mounted(mnt) or proc.poll() is not None, 20, "the mount")
        assert proc.poll() is None
        assert os.path.getsize(mnt / "files" / "big.bin") == 3 * MiB + 5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert not _is_mounted(mnt)
    finally:
        proc.kill()
        proc.wait()
        _force_unmount(mnt)
    assert proc.stderr is not None
    assert "mounted point" in proc.stderr.read()


@needs_fuse
@pytest.mark.skipif(os.geteuid() != 0, reason="a loop mount needs root")
def test_kernel_loop_mount_of_disk_image(chain: Chain, tmp_path: Path) -> None:
    loop_dir = tmp_path / "loop"
    loop_dir.mkdir()
    with mounted(chain.env, chain.url, tmp_path / "m") as (mnt, _):
        image = mnt / chain.volume_dir / "latest" / "disk.img"
        done = subprocess.run(
            ["mount", "-o", "loop,ro,noload", str(image), str(loop_dir)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        try:
            assert (loop_dir / "etc" / "hosts").read_text() == "10.1.2.3 db\n"
            seen = describe_tree(loop_dir)
            seen.pop("lost+found", None)
            assert seen == describe_tree(chain.sources[-1])
            busy = _lamina(chain.env, "umount", str(mnt))
            assert busy.returncode == 1 and str(loop_dir) in busy.stderr
        finally:
            subprocess.run(["umount", str(loop_dir)], capture_output=True)
        assert _lamina(chain.env, "umount", str(mnt)).returncode == 0


@dataclass(frozen=True)
class Damaged:
    url: str
    point: PointInfo
    bad_offset: int  # volume offset of the damaged piece
    a: bytes
    b: bytes


@pytest.fixture
def damaged(s3_server: S3Server, tmp_path: Path) -> Damaged:
    """A point whose piece in the middle of /a.bin is damaged on S3."""
    url = f"s3://{s3_server.create_bucket()}/repo"
    src = tmp_path / "src"
    src.mkdir()
    a, b = os.urandom(MiB), os.urandom(MiB)
    (src / "a.bin").write_bytes(a)
    (src / "b.bin").write_bytes(b)
    image = mkfs_ext4(src, tmp_path / "c.img", 8 * MiB)
    first = _physical_offset(image, "a.bin", 0)
    assert _physical_offset(image, "a.bin", 255) == first + 255 * 4096  # contiguous
    with pytest.MonkeyPatch.context() as mp:
        for name, value in s3_server.environment().items():
            mp.setenv(name, value)
        init_repository(url, grid_size=64 * 1024)
        service = Service(url)
        point = _backup(service, image, "c/n/v")
        repo = service.repo
        middle = first + MiB // 2
        (extent,) = [
            e
            for e in repo.resolve(repo.find_point(point.id))
            if e.offset <= middle < e.offset + e.length
        ]
        repo.load_index()
        entry = repo.index.get(extent.piece_id)
        assert entry is not None
        key = f"packs/{entry.pack_id.hex()[:2]}/{entry.pack_id.hex()}"
        client = s3_server.client()
        bucket = url.split("/")[2]
        blob = bytearray(client.get_object(Bucket=bucket, Key=f"repo/{key}")["Body"].read())
        blob[entry.offset + entry.stored_size // 2] ^= 0xFF
        client.put_object(Bucket=bucket, Key=f"repo/{key}", Body=bytes(blob))
        service.close()
    assert extent.offset >= first + 256 * 1024  # the first 256 KiB of a.bin stay readable
    return Damaged(url, point, extent.offset, a, b)


def _physical_offset(image: Path, path: str, block: int) -> int:
    out = subprocess.run(
        ["debugfs", "-R", f"bmap {path} {block}", str(image)], capture_output=True, text=True
    )
    return int(out.stdout.strip()) * 4096


@needs_fuse
def test_corrupt_piece_gives_eio_on_its_range_only(
    s3_server: S3Server, damaged: Damaged, tmp_path: Path
) -> None:
    env = subprocess_environment(s3_server)
    log = tmp_path / "mount.log"
    point = damaged.point.id
    with mounted(env, damaged.url, tmp_path / "m", "--point", point, "--log-file", str(log)) as (
        mnt,
        _,
    ):
        assert (mnt / "files" / "b.bin").read_bytes() == damaged.b
        with open(mnt / "files" / "a.bin", "rb", buffering=0) as f:
            head = os.pread(f.fileno(), 128 * 1024, 0)  # before the damage
            assert head == damaged.a[: 128 * 1024]
            with pytest.raises(OSError) as failure:
                f.read()
            assert failure.value.errno == errno.EIO
        with open(mnt / "disk.img", "rb", buffering=0) as f:
            with pytest.raises(OSError) as failure:
                os.pread(f.fileno(), 4096, damaged.bad_offset)
            assert failure.value.errno == errno.EIO
            assert len(os.pread(f.fileno(), 4096, 0)) == 4096
        assert (mnt / "files" / "b.bin").read_bytes() == damaged.b  # still fine afterwards
    text = log.read_text()
    assert f"volume offset {damaged.bad_offset}" in text
    assert "a.bin" in text


@needs_fuse
@pytest.mark.skipif(os.geteuid() != 0, reason="filling an xfs image needs a loop mount (root)")
def test_xfs_volume(s3_server: S3Server, tmp_path: Path) -> None:
    """An xfs volume: files/ through the user-space reader, and a kernel loop mount."""
    source = make_source_tree(tmp_path / "src")
    image = tmp_path / "xfs.img"
    with open(image, "wb") as f:
        f.truncate(300 * MiB)  # the smallest xfs mkfs.xfs makes
    subprocess.run(["mkfs.xfs", "-q", str(image)], check=True)
    fill = tmp_path / "fill"
    fill.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(fill)], check=True)
    try:
        subprocess.run(["cp", "-a", f"{source}/.", str(fill)], check=True)
    finally:
        subprocess.run(["umount", str(fill)], check=True)
    url = f"s3://{s3_server.create_bucket()}/repo"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in s3_server.environment().items():
            mp.setenv(name, value)
        init_repository(url)
        service = Service(url)
        point = _backup(service, image, "xfs")
        service.close()
    env = subprocess_environment(s3_server)
    loop_dir = tmp_path / "loop"
    loop_dir.mkdir()
    with mounted(env, url, tmp_path / "m", "--point", point.id) as (mnt, _):
        assert describe_tree(mnt / "files") == describe_tree(source)
        assert sha256_file(mnt / "disk.img") == sha256_file(image)
        done = subprocess.run(
            ["mount", "-o", "loop,ro,norecovery,nouuid", str(mnt / "disk.img"), str(loop_dir)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        try:
            assert describe_tree(loop_dir) == describe_tree(source)
        finally:
            subprocess.run(["umount", str(loop_dir)], capture_output=True)
