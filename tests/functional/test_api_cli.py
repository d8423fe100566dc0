"""`lamina serve` and the --server options of the CLI, as a user runs them: real processes."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lamina.backend.api.server import ApiServer, ServerOptions
from lamina.backend.service import JobState, Service, init_repository
from lamina.backend.service.remote import ApiClient
from tests.support.api_server import (
    TOKEN,
    MiB,
    lamina_serve,
    running_server,
    slow_image,
    slow_repository,
)
from tests.support.ext4_trees import describe_tree, make_source_tree, mkfs_ext4
from tests.support.signals import default_sigint, signal_state
from tests.support.volumes import make_volume, sha256_file

LAMINA = [sys.executable, "-m", "lamina.backend.cli.main"]


def lamina(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*LAMINA, *args], capture_output=True, text=True, timeout=120)
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lamina: error: "), lines[0]
    return lines[0]


@dataclass(frozen=True)
class Remote:
    root: Path
    url: str
    address: str
    token_file: Path
    point: str  # a raw volume
    files_point: str  # an ext4 volume
    source_tree: Path
    service: Service  # the server's own

    def args(self) -> list[str]:
        return ["--server", self.address, "--token-file", str(self.token_file)]


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    root = tmp_path_factory.mktemp("api-cli")
    url = str(root / "repo")
    init_repository(url, grid_size=256 * 1024)
    service = Service(url)
    raw = service.start_backup(str(make_volume(root / "raw.img", 4 * MiB, seed=40)), "cli/raw")
    source = make_source_tree(root / "tree")
    ext4 = service.start_backup(str(mkfs_ext4(source, root / "ext4.img", 16 * MiB)), "cli/ext4")
    for job in (raw, ext4):
        job.wait()
        assert job.state == JobState.SUCCEEDED, job.error
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    with running_server(service, allowed_paths=[str(root)]) as server:
        yield Remote(
            root, url, server.address, token_file, raw.result.id, ext4.result.id, source, service
        )


# ---------------------------------------------------------------------------- --server


def test_points_and_chain_through_a_server_print_what_the_repository_prints(
    remote: Remote,
) -> None:
    for command in (["points"], ["points", "--volume", "cli/raw"], ["chain", remote.point[:8]]):
        for extra in ([], ["--json"]):
            local = lamina(*command, "--repo", remote.url, *extra)
            through = lamina(*command, *remote.args(), *extra)
            assert through.stdout == local.stdout
            if extra:
                assert json.loads(through.stdout)


def test_backup_restore_and_verify_through_a_server(remote: Remote) -> None:
    volume = make_volume(remote.root / "cli-backup.img", 6 * MiB, seed=41)
    plain = lamina("backup", *remote.args(), "--volume", "cli/backed", str(volume), "-q")
    assert plain.stdout.startswith("full point ")
    made = json.loads(
        lamina("backup", *remote.args(), "--volume", "cli/backed", str(volume), "--json").stdout
    )
    assert made["kind"] == "incremental" and made["volume"]["name"] == "backed"
    target = remote.root / "cli-restored.img"
    restored = json.loads(
        lamina("restore", *remote.args(), made["id"], str(target), "--json").stdout
    )
    assert restored["point"] == made["id"] and restored["target"] == str(target)
    assert sha256_file(target) == sha256_file(volume)
    checked = lamina("verify", *remote.args(), made["id"])
    assert "verify clean" in checked.stdout
    # the point is in the repository the server serves
    assert made["id"] in {p.id for p in Service(remote.url).list_points()}


def test_a_job_through_a_server_prints_the_requests_the_server_counted(remote: Remote) -> None:
    volume = make_volume(remote.root / "cli-counted.img", 3 * MiB, seed=42)
    made = json.loads(
        lamina("backup", *remote.args(), "--volume", "cli/counted", str(volume), "--json").stdout
    )
    job = made["job"]
    counted = remote.service.job_requests(job["id"])
    assert counted is not None and counted.by_op["put"] > 0
    assert job["requests"] == counted.as_json()  # exact, though the catalog writes later
    target = remote.root / "cli-counted-restored.img"
    restored = lamina("restore", *remote.args(), made["id"], str(target))
    lines = restored.stdout.splitlines()
    assert lines[0].startswith(f"restored point {made['id']}")
    (summary,) = [line for line in lines if " requests (" in line]
    assert "GET" in summary and "down, about $" in summary


@pytest.mark.parametrize(
    ("args", "expected", "status"),
    [
        (["backup", "--volume", "v", "relative.img"], "must be an absolute path on the server", 2),
        (["restore", "POINT", "/etc/lamina-cli.img"], "outside the folders this server allows", 1),
        (["chain", "beef"], "no restore point matches 'beef'", 1),
        (["chain", "nope"], "not a point id (hex digits): nope", 2),
        (["points", "--repo", "somewhere"], "give --repo or --server, not both", 2),
        (["points", "--password-file", "pw"], "--password-file is for --repo", 2),
    ],
)
def test_server_errors_are_one_clear_line(
    remote: Remote, args: list[str], expected: str, status: int
) -> None:
    args = [remote.point if a == "POINT" else a for a in args]
    result = lamina(*args, *remote.args(), ok=False)
    assert expected in one_line_error(result)
    assert result.returncode == status


def test_reaching_a_server_can_fail_in_one_clear_line(remote: Remote) -> None:
    wrong = remote.root / "wrong-token"
    wrong.write_text("x" * 32)
    refused = lamina("points", "--server", remote.address, "--token-file", str(wrong), ok=False)
    assert "refused the token: invalid bearer token" in one_line_error(refused)
    missing = lamina("points", "--server", remote.address, ok=False)
    assert "missing bearer token" in one_line_error(missing)
    nobody = lamina("points", "--server", "127.0.0.1:9", ok=False)
    assert "cannot reach the lamina server at 127.0.0.1:9" in one_line_error(nobody)
    stray = lamina("points", "--repo", remote.url, "--token-file", str(wrong), ok=False)
    assert "--token-file go with --server" in one_line_error(stray)
    assert stray.returncode == 2


# ---------------------------------------------------------------------------- files


def test_files_get_downloads_trees_and_files_over_the_api(remote: Remote, tmp_path: Path) -> None:
    everything = tmp_path / "all"
    got = lamina(
        "files", "get", *remote.args(), remote.files_point, "/", "--to", str(everything), "--json"
    )
    report = json.loads(got.stdout)
    assert report["skipped"] == [] and report["symlinks"] == 3
    seen = describe_tree(everything)
    seen.pop("lost+found")
    assert seen == describe_tree(remote.source_tree)
    sparse = everything / "data" / "sparse.bin"
    assert os.stat(sparse).st_blocks * 512 < os.path.getsize(sparse)  # holes stay holes

    some = tmp_path / "some"
    got = lamina(
        "files",
        "get",
        *remote.args(),
        remote.files_point,
        "/data",
        "/etc/secret",
        "--to",
        str(some),
    )
    assert got.stdout.startswith("downloaded ")
    assert sorted(os.listdir(some)) == ["data", "secret"]
    assert describe_tree(some / "data", with_dir_times=True) == describe_tree(
        remote.source_tree / "data", with_dir_times=True
    )
    assert describe_tree(some)["secret"] == describe_tree(remote.source_tree / "etc")["secret"]

    # a trap in the target is never followed: the folder is skipped, nothing lands outside
    outside = tmp_path / "outside"
    outside.mkdir()
    trapped = tmp_path / "trapped"
    trapped.mkdir()
    (trapped / "data").symlink_to(outside)
    got = lamina(
        "files", "get", *remote.args(), remote.files_point, "/data", "--to", str(trapped), ok=False
    )
    assert got.returncode == 1
    assert "skipped /data: exists in the target and is not a folder" in got.stderr
    assert os.listdir(outside) == []


def test_typed_client_lists_and_reads_files(remote: Remote) -> None:
    with ApiClient(remote.address, token=TOKEN) as client:
        names = [e.name for e in client.list_files(remote.files_point, "/")]
        assert {"etc", "data", "run.sh", "name with spaces & ünïcode"} <= set(names)
        hosts = (remote.source_tree / "etc" / "hosts").read_bytes()
        assert client.read_file(remote.files_point, "/etc/hosts") == hosts
        blob = (remote.source_tree / "data" / "random.bin").read_bytes()
        part = client.read_file(remote.files_point, "/data/random.bin", offset=1000, length=5000)
        assert part == blob[1000:6000]
        sparse = (remote.source_tree / "data" / "sparse.bin").read_bytes()
        chunks = list(client.file_chunks(remote.files_point, "/data/sparse.bin"))
        assert any(c.zero_length for c in chunks)  # the zeros did not cross the wire
        assert client.read_file(remote.files_point, "/data/sparse.bin") == sparse


# ---------------------------------------------------------------------------- serve


def test_serve_refuses_unsafe_or_incomplete_settings(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    init_repository(url)
    short = tmp_path / "short"
    short.write_text("abc\n")
    for args, expected in (
        (
            ["--listen", "0.0.0.0:0", "--insecure-no-auth"],
            "--insecure-no-auth is only allowed on a loopback address, not 0.0.0.0:0",
        ),
        (["--listen", "127.0.0.1:0"], "give --token-file FILE"),
        (["--listen", "127.0.0.1:0", "--token-file", str(short)], "too short (3 characters)"),
        (["--listen", "nowhere", "--insecure-no-auth"], "not a listen address"),
    ):
        result = lamina("serve", "--repo", url, *args, ok=False)
        assert expected in one_line_error(result)
        assert result.returncode == 2


def _tls_files(directory: Path) -> tuple[Path, bytes, bytes]:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lamina test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return ca_file, cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_tls_server_with_token(remote: Remote, tmp_path: Path) -> None:
    ca_file, cert, key = _tls_files(tmp_path)
    server = ApiServer(
        Service(remote.url),
        ServerOptions(listen="127.0.0.1:0", token=TOKEN, tls_cert=cert, tls_key=key),
    )
    server.start()
    try:
        args = ["--server", server.address, "--token-file", str(remote.token_file)]
        listed = lamina("points", *args, "--ca-file", str(ca_file), "--json")
        assert {p["id"] for p in json.loads(listed.stdout)} >= {remote.point}
        plaintext = lamina("points", *args, ok=False)  # no --ca-file: no TLS, no answer
        assert "cannot reach the lamina server" in one_line_error(plaintext)
    finally:
        server.stop_now()


class _Lines:
    """The stderr of a process, read as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        stream = proc.stderr
        self.reader = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self.reader.start()

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.lines)}")


def test_sigterm_lets_running_tasks_finish_then_cancels_the_rest(tmp_path: Path) -> None:
    url = slow_repository(tmp_path / "repo")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    small = slow_image(tmp_path / "small.img", MiB + MiB // 2, seed=31)
    big = slow_image(tmp_path / "big.img", 96 * MiB, seed=32)
    grace = 12.0  # the small backup needs about 1.5 s, several times that on a loaded machine
    proc = subprocess.Popen(
        [
            *LAMINA,
            "serve",
            "--repo",
            url,
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            str(token_file),
            "--grace",
            f"{grace:g}s",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = _Lines(proc)
    try:
        address = log.wait_for(r"listening on (\S+) ").group(1)
        with ApiClient(address, token=TOKEN) as client:
            quick = client.start_backup(str(small), "ns/small")
            slow_task = client.start_backup(str(big), "ns/big")
            waiting = client.start_backup(str(small), "ns/big")  # same volume: queued
            assert waiting.state == "queued"
            seen: list[str] = []
            watcher = threading.Thread(
                target=lambda: seen.extend(t.state for t in client.watch(slow_task.id))
            )
            watcher.start()

            def started(task_id: str) -> bool:
                progress = client.task(task_id).progress
                return progress is not None and progress.done > 0

            deadline = time.monotonic() + 30
            while not (client.task(quick.id).state != "queued" and started(slow_task.id)):
                assert time.monotonic() < deadline, "the backups did not get going"
                time.sleep(0.05)
            assert client.task(quick.id).state == "running", "too quick: it ended before SIGTERM"
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            assert proc.wait(timeout=grace + 30) == 0
            took = time.monotonic() - signalled
            watcher.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log.reader.join(timeout=5)
    text = "".join(log.lines)
    assert grace <= took < grace + 15, text
    assert "SIGTERM received: shutting down" in text
    assert f"finished: task {quick.id} (back up {small} as local/ns/small): succeeded" in text
    assert f"cancelled: task {slow_task.id} (back up {big} as local/ns/big): cancelled" in text
    assert f"cancelled: task {waiting.id}" in text
    assert "stopped: 1 task finished, 2 cancelled" in text
    assert "Traceback" not in text
    # the open watch saw the cancelled end before the server stopped
    assert seen[-1] == "cancelled"
    volumes = {str(p.volume) for p in Service(url).list_points()}
    assert volumes == {"local/ns/small"}


def test_interrupting_a_client_cancels_its_task_on_the_server(tmp_path: Path) -> None:
    url = slow_repository(tmp_path / "repo")
    image = slow_image(tmp_path / "long.img", 24 * MiB, seed=33)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    with running_server(Service(url)) as server, ApiClient(server.address, token=TOKEN) as api:
        proc = subprocess.Popen(
            [
                *LAMINA,
                "backup",
                "--server",
                server.address,
                "--token-file",
                str(token_file),
                "--volume",
                "v",
                str(image),
            ],
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=default_sigint,
        )
        deadline = time.monotonic() + 20
        while not any(t.progress and t.progress.done for t in api.tasks()):
            assert proc.poll() is None and time.monotonic() < deadline, "no backup got going"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            state = f"its signals: {signal_state(proc.pid)}; ours: {signal_state()}"
            proc.kill()
            raise AssertionError(f"the client still runs 30 s after SIGINT; {state}") from None
        assert proc.returncode == 130, err
        assert err.strip() == "lamina: error: backup cancelled; no restore point was written"
        (task,) = api.tasks()
        assert task.state == "cancelled"
        assert api.list_points() == []


def test_serve_opens_its_catalog_at_start_and_a_broken_one_only_warns(tmp_path: Path) -> None:
    """The server opens the job history when it starts (so the first client does not wait
    for the database layer); one that cannot be opened is one warning, and jobs still run."""
    repo = str(tmp_path / "repo")
    init_repository(repo)
    image = make_volume(tmp_path / "vol.img", 4 * MiB, seed=5)
    token_file = tmp_path / "token"
    allowed = ("--allow-path", str(tmp_path))

    catalog = tmp_path / "history" / "catalog.sqlite"
    with lamina_serve(repo, token_file, "--catalog", str(catalog), *allowed) as server:
        assert catalog.exists(), "the catalog was not opened at start"
        assert "job history cannot be opened" not in "".join(server.log.lines)

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    broken = str(blocker / "catalog.sqlite")
    with lamina_serve(repo, token_file, "--catalog", broken, *allowed) as server:
        pattern = r"the job history cannot be opened now \((.*)\); jobs run"
        assert str(blocker) in server.log.wait_for(pattern).group(1)
        done = lamina(
            "backup",
            "--server",
            server.address,
            "--token-file",
            str(token_file),
            "--volume",
            "v",
            str(image),
            "--json",
        )
        assert json.loads(done.stdout)["kind"] == "full"
    assert "Traceback" not in "".join(server.log.lines)
