"""Mount benchmark: reading files out of restore points on S3, through FUSE.

    python bench/mount.py [--file-size 1GiB] [--big-volume 100GiB] [--chain 30] [--samples 300]

With a SeaweedFS S3 server on loopback, it measures:

1. the sequential read of a big file in `files/` of a mounted point, against `lamina
   restore` of the same point (target: >= 60% of the restore throughput);
2. mount to the first listing of `files/` for a large sparse volume with a long chain
   (target: under 2 s);
3. 4 KiB random reads of `disk.img`: cold (a fresh mount) and warm (the same offsets
   again), p50 and p99.

Needs root (FUSE) and e2fsprogs. Results print as a table and go to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from tests.support.seaweedfs import seaweedfs_s3  # noqa: E402

LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]
MiB = 1 << 20
GiB = 1 << 30


def lamina(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([*LAMINA, *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"lamina {' '.join(args[:2])} failed: {result.stderr.strip()}")
    return result.stdout


def mkfs(image: Path, size: int, content: Path) -> None:
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-J",
            "size=16",
            "-E",
            "lazy_itable_init=1,root_owner=0:0",
            "-d",
            str(content),
            str(image),
        ],
        check=True,
    )


def debugfs_write(image: Path, local: Path, dest: str) -> None:
    script = local.with_suffix(".cmd")
    script.write_text(f"rm {dest}\nwrite {local} {dest}\n")
    subprocess.run(
        ["debugfs", "-w", "-f", str(script), str(image)], check=True, capture_output=True
    )


class Mount:
    def __init__(self, env: dict[str, str], repo: str, where: Path, point: str) -> None:
        self.env, self.where = env, where
        where.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        lamina(
            env,
            "mount",
            "--repo",
            repo,
            str(where),
            "--point",
            point,
            "--daemon",
            "--cache-size",
            "512MiB",
        )

    def close(self) -> None:
        subprocess.run([*LAMINA, "umount", str(self.where)], env=self.env, capture_output=True)


def sequential(
    env: dict[str, str], repo: str, work: Path, file_size: int
) -> tuple[str, dict[str, Any]]:
    content = work / "content"
    content.mkdir()
    block = os.urandom(MiB)
    with open(content / "big.bin", "wb") as f:
        for i in range(file_size // MiB):
            f.write(i.to_bytes(8, "little") + block[8:])
    image = work / "seq.img"
    mkfs(image, file_size + 256 * MiB, content)
    shutil.rmtree(content)
    point = json.loads(
        lamina(env, "backup", "--repo", repo, "--volume", "bench/seq", str(image), "--json", "-q")
    )
    image.unlink()
    out = work / "restored.img"
    t = time.monotonic()
    lamina(env, "restore", "--repo", repo, point["id"], str(out), "-q")
    restore_s = time.monotonic() - t
    out.unlink()
    mount = Mount(env, repo, work / "mnt-seq", point["id"])
    try:
        path = mount.where / "files" / "big.bin"
        t = time.monotonic()
        with open(path, "rb") as f:
            while f.read(4 * MiB):
                pass
        read_s = time.monotonic() - t
    finally:
        mount.close()
    restore_rate = point["stats"]["bytes_read"] / restore_s
    read_rate = file_size / read_s
    return point["id"], {
        "file_bytes": file_size,
        "restore_seconds": round(restore_s, 2),
        "restore_mib_s": round(restore_rate / MiB, 1),
        "mount_read_seconds": round(read_s, 2),
        "mount_read_mib_s": round(read_rate / MiB, 1),
        "ratio": round(read_rate / restore_rate, 3),
        "target": ">= 0.60",
    }


def big_chain(
    env: dict[str, str], repo: str, work: Path, size: int, chain: int
) -> tuple[str, dict[str, Any]]:
    content = work / "tree"
    for d in range(20):
        folder = content / f"dir-{d:02d}"
        folder.mkdir(parents=True)
        for i in range(50):
            (folder / f"file-{i:03d}.txt").write_text(f"file {i} of dir {d}\n" * 40)
    image = work / "big.img"
    mkfs(image, size, content)
    root = work / "cluster"
    (root / "volumes" / "bench").mkdir(parents=True)
    os.symlink(image, root / "volumes" / "bench" / "big")
    local_env = {**env, "LAMINA_LOCAL_ROOT": str(root)}
    from lamina.backend.service import Service  # the in-process local cluster path, as the TUI uses

    os.environ.update(env)
    service = Service(repo, local_root=str(root))
    t = time.monotonic()
    last = ""
    edit = work / "edit.txt"
    for step in range(chain):
        if step:
            edit.write_text(f"change {step}\n" * (step * 100 + 1))
            debugfs_write(image, edit, f"/dir-{step % 20:02d}/file-{step:03d}.txt")
        job = service.start_volume_backup("local", "bench", "big")
        job.wait()
        if job.error:
            raise RuntimeError(job.error)
        last = job.result.id
        for snap in sorted((root / "snapshots" / "bench").iterdir())[:-1]:
            shutil.rmtree(snap)  # keep only the newest snapshot: the base of the next delta
    build_s = time.monotonic() - t
    del local_env
    mount = Mount(env, repo, work / "mnt-big", last)
    try:
        files = mount.where / "files"
        while True:
            try:
                names = os.listdir(files)
                break
            except OSError:
                time.sleep(0.005)
        first_listing = time.monotonic() - mount.started
    finally:
        mount.close()
    return last, {
        "volume_bytes": size,
        "chain_points": chain,
        "build_seconds": round(build_s, 1),
        "mount_to_first_listing_seconds": round(first_listing, 3),
        "entries": len(names),
        "target": "< 2 s",
    }


def random_reads(
    env: dict[str, str], repo: str, work: Path, point: str, samples: int
) -> dict[str, Any]:
    def one_pass(offsets: list[int]) -> list[float]:
        lat = []
        fd = os.open(mount.where / "disk.img", os.O_RDONLY)
        try:
            for off in offsets:
                t = time.perf_counter()
                os.pread(fd, 4096, off)
                lat.append((time.perf_counter() - t) * 1000)
        finally:
            os.close(fd)
        return lat

    from lamina.backend.service import Service

    os.environ.update(env)
    with Service(repo).open_image(point) as image:
        data = [(o, n) for o, n in image.data_ranges() if n >= 4096]
    rng = random.Random(7)
    # offsets inside data: zero ranges are answered without a request and would flatter us
    offsets = []
    for _ in range(samples):
        o, n = rng.choice(data)
        offsets.append(o + rng.randrange(0, n // 4096) * 4096)
    mount = Mount(env, repo, work / "mnt-rand", point)
    try:
        cold = one_pass(offsets)
        # the kernel page cache would answer the warm pass itself; drop it to time lamina's cache
        subprocess.run(["sh", "-c", "echo 1 > /proc/sys/vm/drop_caches"], check=False)
        warm = one_pass(offsets)
    finally:
        mount.close()

    def pct(values: list[float], q: float) -> float:
        return round(statistics.quantiles(values, n=100)[int(q) - 1], 3)

    return {
        "samples": samples,
        "cold_p50_ms": pct(cold, 50),
        "cold_p99_ms": pct(cold, 99),
        "warm_p50_ms": pct(warm, 50),
        "warm_p99_ms": pct(warm, 99),
    }


def parse_size(text: str) -> int:
    units = {"mib": MiB, "gib": GiB}
    for unit, factor in units.items():
        if text.lower().endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file-size", default="1GiB")
    parser.add_argument("--big-volume", default="100GiB")
    parser.add_argument("--chain", type=int, default=30)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "mount.json"))
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lamina-mountbench-") as tmp, seaweedfs_s3() as server:
        work = Path(tmp)
        env = {**os.environ, **server.environment()}
        bucket = server.create_bucket()
        repo = f"s3://{bucket}/repo"
        lamina(env, "repo", "init", repo)
        seq_point, results["sequential"] = sequential(env, repo, work, parse_size(args.file_size))
        print("sequential:", results["sequential"], flush=True)
        _, results["first_listing"] = big_chain(
            env, repo, work, parse_size(args.big_volume), args.chain
        )
        print("first listing:", results["first_listing"], flush=True)
        # random reads over the big file's point: 4 MiB pieces of incompressible data on S3
        results["random_4k"] = random_reads(env, repo, work, seq_point, args.samples)
        print("random 4 KiB reads:", results["random_4k"], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    s, f, r = results["sequential"], results["first_listing"], results["random_4k"]
    print()
    print(f"{'measure':<44} {'lamina':>14} {'target':>12}")
    print(
        f"{'files/ sequential read / restore throughput':<44} {s['ratio']:>14.2f} {'>= 0.60':>12}  {'PASS' if s['ratio'] >= 0.6 else 'MISS'}"
    )
    print(
        f"{'  read MiB/s, restore MiB/s':<44} {s['mount_read_mib_s']:>6} / {s['restore_mib_s']:<6}"
    )
    print(
        f"{'mount to first listing, ' + str(f['chain_points']) + '-point chain':<44} "
        f"{f['mount_to_first_listing_seconds']:>12.2f} s {'< 2 s':>12}  {'PASS' if f['mount_to_first_listing_seconds'] < 2 else 'MISS'}"
    )
    print(
        f"{'4 KiB random read cold p50 / p99 (ms)':<44} {r['cold_p50_ms']:>6} / {r['cold_p99_ms']:<6}"
    )
    print(
        f"{'4 KiB random read warm p50 / p99 (ms)':<44} {r['warm_p50_ms']:>6} / {r['warm_p99_ms']:<6}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
