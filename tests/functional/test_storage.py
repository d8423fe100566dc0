"""The storage backends keep one contract: the same suite runs on memory, a local folder and S3.

S3 is a real SeaweedFS server on 127.0.0.1 (see tests/support/seaweedfs.py).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import botocore.session
import pytest

from lamina.backend.engine.storage import (
    InvalidRequest,
    ObjectInfo,
    ObjectNotFound,
    ShortRead,
    Storage,
    StorageError,
    open_storage,
)
from lamina.backend.engine.storage.local import LocalStorage
from lamina.backend.engine.storage.memory import MemoryStorage
from lamina.backend.engine.storage.s3 import S3Storage
from lamina.backend.engine.storage.wrappers import CountingStorage, RetryingStorage
from lamina.backend.errors import StorageUnavailable, UsageError
from tests.support.seaweedfs import S3Server

MiB = 1024 * 1024
T = TypeVar("T")

BACKENDS = ["memory", "local", pytest.param("s3", marks=pytest.mark.s3)]


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """A fresh, empty storage of each kind, opened by URL as the CLI opens it."""
    if request.param == "memory":
        # mem:// URLs are kept for the whole process; a private instance is freed afterwards.
        opened: Storage = MemoryStorage(f"mem://storage-test-{uuid.uuid4().hex}")
    elif request.param == "local":
        opened = open_storage(str(tmp_path / "repo"), create=True)
    else:
        opened = open_storage(request.getfixturevalue("s3_repo_url"), create=True)
    try:
        yield opened
    finally:
        opened.close()


def listing(storage: Storage, prefix: str = "") -> dict[str, int]:
    return {info.key: info.size for info in storage.list(prefix)}


# --- put and get -------------------------------------------------------------------------------


def test_put_then_get_returns_the_same_bytes(storage: Storage) -> None:
    payloads = {
        "config": b'{"version": 1}',
        "packs/ab/ab12cd": os.urandom(5000),
        "empty": b"",
    }
    for key, data in payloads.items():
        assert storage.put(key, data) is True
    for key, data in payloads.items():
        assert storage.get(key) == data


def test_put_replaces_an_existing_object(storage: Storage) -> None:
    storage.put("snapshots/latest", b"first version")
    assert storage.put("snapshots/latest", b"second") is True
    assert storage.get("snapshots/latest") == b"second"
    info = storage.head("snapshots/latest")
    assert info is not None and info.size == len(b"second")


def test_put_if_absent_keeps_the_first_object(storage: Storage) -> None:
    assert storage.put("manifests/p1", b"winner", if_absent=True) is True
    assert storage.put("manifests/p1", b"too late", if_absent=True) is False
    assert storage.get("manifests/p1") == b"winner"
    assert listing(storage) == {"manifests/p1": len(b"winner")}


def test_concurrent_put_if_absent_has_exactly_one_winner(storage: Storage) -> None:
    contenders = 8
    start = threading.Barrier(contenders)

    def contend(number: int) -> bool:
        start.wait()
        return storage.put("lock", f"contender {number}".encode() * 100, if_absent=True)

    with ThreadPoolExecutor(contenders) as pool:
        results = list(pool.map(contend, range(contenders)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert storage.get("lock") == f"contender {winner}".encode() * 100


def test_large_object_round_trip(storage: Storage) -> None:
    data = os.urandom(20 * MiB)
    assert storage.put("packs/big", data)
    info = storage.head("packs/big")
    assert info is not None and info.size == len(data)
    assert storage.get("packs/big") == data
    offset = 19 * MiB + 12345
    assert storage.get_range("packs/big", offset, MiB // 2) == data[offset : offset + MiB // 2]


# --- ranged get --------------------------------------------------------------------------------


def test_get_range_returns_exactly_the_requested_bytes(storage: Storage) -> None:
    data = bytes(range(256)) * 40
    storage.put("pack", data)
    for offset, length in [(0, 1), (0, len(data)), (100, 1000), (len(data) - 7, 7), (5000, 0)]:
        assert storage.get_range("pack", offset, length) == data[offset : offset + length]


@pytest.mark.parametrize(
    ("offset", "length"),
    [(10235, 10), (10240, 1), (20000, 5)],
    ids=["crosses-end", "at-end", "past-end"],
)
def test_get_range_beyond_the_end_is_an_error(storage: Storage, offset: int, length: int) -> None:
    storage.put("pack", bytes(10240))
    with pytest.raises(ShortRead, match="short read of pack"):
        storage.get_range("pack", offset, length)


def test_negative_range_is_rejected(storage: Storage) -> None:
    storage.put("pack", bytes(100))
    with pytest.raises(InvalidRequest):
        storage.get_range("pack", -1, 10)
    with pytest.raises(InvalidRequest):
        storage.get_range("pack", 0, -10)


# --- head, list, delete ------------------------------------------------------------------------


def test_head_gives_size_and_time_or_none(storage: Storage) -> None:
    storage.put("index/one", b"x" * 321)
    info = storage.head("index/one")
    assert info == ObjectInfo("index/one", 321, info.mtime if info else 0.0)
    assert info is not None and abs(info.mtime - time.time()) < 120
    assert storage.head("index/two") is None
    assert storage.head("nowhere/at/all") is None


def test_a_key_prefix_is_not_an_object(storage: Storage) -> None:
    storage.put("packs/ab/cd", b"data")
    for not_an_object in ("packs", "packs/ab"):
        assert storage.head(not_an_object) is None
        with pytest.raises(ObjectNotFound):
            storage.get(not_an_object)
        with pytest.raises(ObjectNotFound):
            storage.get_range(not_an_object, 0, 1)
        storage.delete(not_an_object)
    # Below an object there is nothing either.
    assert storage.head("packs/ab/cd/deeper") is None
    with pytest.raises(ObjectNotFound):
        storage.get("packs/ab/cd/deeper")
    assert storage.get("packs/ab/cd") == b"data"


def test_list_by_prefix_gives_keys_and_sizes(storage: Storage) -> None:
    objects = {
        "config": 5,
        "index/aa": 10,
        "index/ab": 11,
        "index/b": 12,
        "packs/aa/1": 13,
        "packs/ab/2": 14,
        "packs/abc": 15,
    }
    for key, size in objects.items():
        storage.put(key, b"z" * size)
    assert listing(storage) == objects
    assert listing(storage, "index/") == {
        k: objects[k] for k in ("index/aa", "index/ab", "index/b")
    }
    assert listing(storage, "index/a") == {k: objects[k] for k in ("index/aa", "index/ab")}
    assert listing(storage, "packs/ab") == {k: objects[k] for k in ("packs/ab/2", "packs/abc")}
    assert listing(storage, "packs/aa/") == {"packs/aa/1": 13}
    assert listing(storage, "conf") == {"config": 5}
    assert listing(storage, "nothing/") == {}
    assert listing(storage, "packs/aa/1/below") == {}


def test_list_gives_an_etag_that_changes_when_a_key_is_rewritten(storage: Storage) -> None:
    # The catalog's point list refetches a manifest only when its etag changed.
    def etag() -> str:
        (info,) = storage.list("manifests/")
        return info.etag

    storage.put("manifests/one", b"first version")
    first = etag()
    assert first and etag() == first
    storage.put("manifests/one", b"other version")  # same size, other bytes
    assert etag() not in ("", first)


def test_list_rejects_prefixes_that_leave_the_storage(storage: Storage) -> None:
    for prefix in ("../", "/abs", "a//b", "./x", "a\\b"):
        with pytest.raises(InvalidRequest):
            list(storage.list(prefix))


def test_list_goes_past_one_thousand_objects(storage: Storage) -> None:
    # S3 answers at most 1000 keys per request: this needs the listing to follow pages.
    keys = [f"chunks/{n:05d}" for n in range(1100)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: storage.put(key, key.encode()), keys))
    storage.put("other/one", b"1")
    listed = listing(storage, "chunks/")
    assert sorted(listed) == keys
    assert all(size == len("chunks/00000") for size in listed.values())


def test_delete_removes_and_tolerates_missing(storage: Storage) -> None:
    storage.put("maps/p1", b"map")
    storage.put("maps/p2", b"map")
    storage.delete("maps/p1")
    assert storage.head("maps/p1") is None
    with pytest.raises(ObjectNotFound):
        storage.get("maps/p1")
    assert listing(storage) == {"maps/p2": 3}
    storage.delete("maps/p1")
    storage.delete("never/existed")
    assert listing(storage) == {"maps/p2": 3}


def test_missing_objects_raise_object_not_found(storage: Storage) -> None:
    storage.put("present", b"here")
    reads: list[Callable[[], bytes]] = [
        lambda: storage.get("absent"),
        lambda: storage.get_range("absent", 0, 4),
    ]
    for read in reads:
        with pytest.raises(ObjectNotFound) as caught:
            read()
        assert caught.value.key == "absent"
        assert isinstance(caught.value, StorageError)
        assert str(caught.value) == "object not found: absent"
    with pytest.raises(ObjectNotFound):
        storage.get_range("absent", 0, 0)


INVALID_KEYS = ["", "/etc/passwd", "../outside", "a/../../b", "a//b", "a/./b", "trailing/", "a\\b"]


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_invalid_keys_are_rejected_by_every_operation(storage: Storage, key: str) -> None:
    operations: list[Callable[[], object]] = [
        lambda: storage.put(key, b"data"),
        lambda: storage.put(key, b"data", if_absent=True),
        lambda: storage.get(key),
        lambda: storage.get_range(key, 0, 1),
        lambda: storage.head(key),
        lambda: storage.delete(key),
    ]
    for operation in operations:
        with pytest.raises(InvalidRequest, match="invalid object key"):
            operation()
    assert listing(storage) == {}


# --- atomic writes -----------------------------------------------------------------------------


def test_readers_see_whole_objects_while_a_writer_replaces_them(storage: Storage) -> None:
    size = 256 * 1024
    versions = [bytes([fill]) * size for fill in (0x41, 0x42)]
    storage.put("head", versions[0])
    done = threading.Event()
    problems: list[str] = []

    def write() -> None:
        try:
            for round_number in range(30):
                storage.put("head", versions[round_number % 2])
        finally:
            done.set()

    def read() -> None:
        while not done.is_set():
            data = storage.get("head")
            if data not in versions:
                problems.append(f"read {len(data)} bytes that are neither version")

    readers = [threading.Thread(target=read) for _ in range(3)]
    writer = threading.Thread(target=write)
    for thread in (*readers, writer):
        thread.start()
    for thread in (writer, *readers):
        thread.join(timeout=120)
    assert problems == []
    assert listing(storage) == {"head": size}


def test_local_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo", create=True)
    storage.put("packs/aa/one", b"1")
    storage.put("packs/aa/one", b"22")
    assert storage.put("packs/aa/one", b"333", if_absent=True) is False
    storage.put("config", b"c", if_absent=True)
    on_disk = sorted(
        str(path.relative_to(tmp_path / "repo")) for path in (tmp_path / "repo").rglob("*")
    )
    assert on_disk == ["config", "packs", "packs/aa", "packs/aa/one"]
    assert storage.get("packs/aa/one") == b"22"


def test_local_list_hides_a_temporary_file_left_by_a_crash(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo", create=True)
    storage.put("packs/one", b"1")
    # What a writer killed between writing and renaming leaves behind.
    (tmp_path / "repo" / "packs" / ".two.0123abcd.tmp-lamina").write_bytes(b"half")
    assert listing(storage) == {"packs/one": 1}
    assert listing(storage, "packs/.two") == {}


def test_local_refuses_keys_with_the_temporary_suffix(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo", create=True)
    with pytest.raises(InvalidRequest):
        storage.put("packs/x.tmp-lamina", b"would be invisible")


def test_local_put_below_an_object_is_a_clear_error(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo", create=True)
    storage.put("packs", b"an object, not a folder")
    with pytest.raises(StorageError, match="is an object, not a folder"):
        storage.put("packs/one", b"1")
    assert listing(storage) == {"packs": len(b"an object, not a folder")}


# --- opening by URL ----------------------------------------------------------------------------


def test_open_storage_understands_each_url_form(tmp_path: Path) -> None:
    name = f"mem://open-test-{uuid.uuid4().hex}"
    assert open_storage(name) is open_storage(name)
    assert isinstance(open_storage(name), MemoryStorage)
    by_url = open_storage((tmp_path / "by url").as_uri(), create=True)
    assert isinstance(by_url, LocalStorage) and by_url.root == tmp_path / "by url"
    by_path = open_storage(str(tmp_path / "plain"), create=True)
    assert isinstance(by_path, LocalStorage) and (tmp_path / "plain").is_dir()
    s3 = open_storage("s3://bucket/some/prefix/")
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix, s3.url) == ("bucket", "some/prefix/", "s3://bucket/some/prefix")
    s3.close()
    with pytest.raises(UsageError, match="unknown repository URL scheme"):
        open_storage("ftp://host/repo")
    with pytest.raises(UsageError, match="needs a bucket"):
        open_storage("s3:///repo")


# --- S3 only -----------------------------------------------------------------------------------


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so no one else takes it), not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.s3
def test_s3_unreachable_endpoint_is_storage_unavailable(s3_env: S3Server, closed_port: int) -> None:
    storage = S3Storage(
        "bucket", "repo", endpoint_url=f"http://127.0.0.1:{closed_port}", max_attempts=1
    )
    operations: list[Callable[[], object]] = [
        lambda: storage.get("config"),
        lambda: storage.get_range("config", 0, 10),
        lambda: storage.put("config", b"x"),
        lambda: storage.head("config"),
        lambda: list(storage.list("index/")),
        lambda: storage.delete("config"),
    ]
    started = time.monotonic()
    for operation in operations:
        with pytest.raises(StorageUnavailable, match=f"127.0.0.1:{closed_port} is unreachable"):
            operation()
    assert time.monotonic() - started < 10


@pytest.mark.s3
def test_an_s3_url_names_its_own_endpoint_over_aws_endpoint_url(
    s3_env: S3Server, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_env.create_bucket()
    open_storage(f"s3://{bucket}/repo").put("config", b"held")
    # the environment's endpoint is SeaweedFS: the URL's own endpoint wins
    unreachable = open_storage(f"s3://{bucket}/repo?endpoint=http://127.0.0.1:{closed_port}")
    with pytest.raises(StorageUnavailable, match=f"127.0.0.1:{closed_port} is unreachable"):
        unreachable.get("config")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    assert open_storage(f"s3://{bucket}/repo?endpoint={s3_env.endpoint_url}").get("config") == (
        b"held"
    )
    for query, message in (
        ("?region=x", "unknown option 'region'"),
        ("?endpoint=ftp://host", "endpoint must be one http"),
        ("?endpoint=http://a&endpoint=http://b", "endpoint must be one http"),
        ("?endpoint", "cannot read its query"),
    ):
        with pytest.raises(UsageError, match=message):
            open_storage(f"s3://{bucket}/repo{query}")


@pytest.mark.s3
def test_s3_default_retries_still_fail_fast_on_a_refused_connection(
    s3_env: S3Server, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    storage = open_storage("s3://bucket/repo")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        storage.get("config")
    assert time.monotonic() - started < 15


@pytest.mark.s3
@pytest.mark.parametrize("wrong", ["secret", "access-key"])
def test_s3_wrong_credentials_are_a_clear_error(
    s3_repo_url: str, monkeypatch: pytest.MonkeyPatch, wrong: str
) -> None:
    good = open_storage(s3_repo_url)
    good.put("config", b"present")
    if wrong == "secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    storage = open_storage(s3_repo_url)
    operations: list[Callable[[], object]] = [
        lambda: storage.get("config"),
        lambda: storage.get_range("config", 0, 3),
        lambda: storage.get("absent"),
        lambda: storage.put("config", b"x"),
        lambda: storage.head("config"),
        lambda: storage.head("absent"),
        lambda: list(storage.list("")),
        lambda: storage.delete("config"),
    ]
    for operation in operations:
        with pytest.raises(StorageError, match="check the credentials") as caught:
            operation()
        assert not isinstance(caught.value, ObjectNotFound)
    assert good.get("config") == b"present"


@pytest.mark.s3
def test_s3_missing_bucket_is_a_clear_error(s3_env: S3Server) -> None:
    bucket = f"missing-{uuid.uuid4().hex[:12]}"
    storage = open_storage(f"s3://{bucket}/repo")
    operations: list[Callable[[], object]] = [
        lambda: storage.get("config"),
        lambda: storage.get_range("config", 0, 3),
        lambda: storage.put("config", b"x"),
        lambda: storage.put("config", b"x", if_absent=True),
        lambda: storage.head("config"),
        lambda: list(storage.list("")),
        lambda: storage.delete("config"),
    ]
    for operation in operations:
        with pytest.raises(StorageError, match=f"bucket '{bucket}' does not exist") as caught:
            operation()
        assert not isinstance(caught.value, ObjectNotFound)
    # The server was not talked into creating it.
    client = s3_env.client()
    assert bucket not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]
    client.close()


@pytest.mark.s3
def test_s3_open_with_create_makes_the_bucket_once(s3_env: S3Server) -> None:
    url = f"s3://created-{uuid.uuid4().hex[:12]}/repo"
    first = open_storage(url, create=True)
    first.put("config", b"1")
    second = open_storage(url, create=True)  # an existing bucket is fine, and kept
    assert second.get("config") == b"1"


@pytest.mark.s3
def test_s3_prefixes_keep_repositories_apart(s3_env: S3Server) -> None:
    bucket = s3_env.create_bucket()
    left = open_storage(f"s3://{bucket}/tenants/left")
    right = open_storage(f"s3://{bucket}/tenants/right/")
    whole_bucket = open_storage(f"s3://{bucket}")
    left.put("config", b"left")
    right.put("config", b"right!")
    assert left.get("config") == b"left"
    assert right.get("config") == b"right!"
    assert listing(left) == {"config": 4}
    assert listing(whole_bucket) == {"tenants/left/config": 4, "tenants/right/config": 6}
    left.delete("config")
    assert right.head("config") is not None


# --- wrappers ----------------------------------------------------------------------------------


class FlakyStorage(Storage):
    """A real backend that fails the next ``fail_next`` calls with ``error``: a fault injector."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.url = inner.url
        self.fail_next = 0
        self.error: Exception = StorageUnavailable("injected: endpoint unreachable")
        self.calls = 0

    def _call(self, operation: Callable[[], T]) -> T:
        self.calls += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            raise self.error
        return operation()

    def put(
        self,
        key: str,
        data: bytes | bytearray,
        *,
        if_absent: bool = False,
        retain_until: float | None = None,
    ) -> bool:
        return self._call(
            lambda: self.inner.put(key, data, if_absent=if_absent, retain_until=retain_until)
        )

    def get(self, key: str) -> bytes:
        return self._call(lambda: self.inner.get(key))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self._call(lambda: self.inner.get_range(key, offset, length))

    def head(self, key: str) -> ObjectInfo | None:
        return self._call(lambda: self.inner.head(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._call(lambda: iter(list(self.inner.list(prefix))))

    def delete(self, key: str) -> None:
        self._call(lambda: self.inner.delete(key))


@pytest.mark.parametrize(
    "error",
    [StorageUnavailable("injected: unreachable"), StorageError("injected: 503 slow down")],
    ids=["unavailable", "storage-error"],
)
def test_retrying_storage_recovers_from_transient_failures(
    storage: Storage, error: Exception
) -> None:
    flaky = FlakyStorage(storage)
    flaky.error = error
    retrying = RetryingStorage(flaky, attempts=4, base_delay=0.001)
    steps: list[tuple[Callable[[], Any], Any]] = [
        (lambda: retrying.put("a/b", b"hello"), True),
        (lambda: retrying.get("a/b"), b"hello"),
        (lambda: retrying.get_range("a/b", 1, 3), b"ell"),
        (lambda: retrying.head("a/b").size, 5),  # type: ignore[union-attr]
        (lambda: [info.key for info in retrying.list("a/")], ["a/b"]),
        (lambda: retrying.delete("a/b"), None),
        (lambda: retrying.head("a/b"), None),
    ]
    for step, expected in steps:
        flaky.fail_next = 3
        flaky.calls = 0
        assert step() == expected
        assert flaky.calls == 4


def test_retrying_storage_gives_up_after_its_attempts(storage: Storage) -> None:
    flaky = FlakyStorage(storage)
    retrying = RetryingStorage(flaky, attempts=3, base_delay=0.001)
    flaky.fail_next = 3
    with pytest.raises(StorageUnavailable, match="injected"):
        retrying.put("config", b"x")
    assert flaky.calls == 3
    assert storage.head("config") is None


def test_retrying_storage_does_not_retry_answers(storage: Storage) -> None:
    storage.put("once", b"1")
    flaky = FlakyStorage(storage)
    retrying = RetryingStorage(flaky, attempts=4, base_delay=0.001)
    not_retried: list[tuple[Callable[[], object], type[Exception]]] = [
        (lambda: retrying.get("absent"), ObjectNotFound),
        (lambda: retrying.get_range("absent", 0, 1), ObjectNotFound),
        (lambda: retrying.get_range("once", 0, 2), ShortRead),
        (lambda: retrying.get("../bad"), InvalidRequest),
        (lambda: retrying.put("", b"x"), InvalidRequest),
    ]
    for operation, error in not_retried:
        flaky.calls = 0
        with pytest.raises(error):
            operation()
        assert flaky.calls == 1
    flaky.calls = 0
    assert retrying.put("once", b"2", if_absent=True) is False
    assert flaky.calls == 2  # the put, then one GET: is the object there our own?
    assert storage.get("once") == b"1"


def test_counting_storage_counts_requests_and_bytes(storage: Storage) -> None:
    counting = CountingStorage(storage)
    counting.put("packs/p", b"p" * 1000)
    counting.put("index/i", b"i" * 24, if_absent=True)
    assert counting.get("packs/p") == b"p" * 1000
    assert counting.get_range("packs/p", 100, 50) == b"p" * 50
    assert counting.head("index/i") is not None
    assert len(list(counting.list("packs/"))) == 1
    counting.delete("index/i")
    with pytest.raises(ObjectNotFound):
        counting.get("index/i")
    assert (counting.requests, counting.bytes_up, counting.bytes_down) == (8, 1024, 1050)


def test_counting_over_retrying_counts_one_request_per_call(storage: Storage) -> None:
    flaky = FlakyStorage(storage)
    counting = CountingStorage(RetryingStorage(flaky, attempts=4, base_delay=0.001))
    flaky.fail_next = 2
    counting.put("config", b"12345")
    assert (counting.requests, counting.bytes_up, flaky.calls) == (1, 5, 3)


def test_list_and_head_times_agree_with_botocores_own_parsing(s3_repo_url: str) -> None:
    # S3Storage reads S3's timestamps itself (storage/s3.py, parse_s3_timestamp): the same
    # instants as botocore's default parser gives, in a listing (ISO 8601) and a HEAD (an
    # HTTP date).
    bucket, _, prefix = s3_repo_url.removeprefix("s3://").partition("/")
    storage = S3Storage(bucket, prefix)
    try:
        for i in range(3):
            storage.put(f"index/t{i}", b"t" * (i + 1))
        plain: Any = botocore.session.get_session().create_client(
            "s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL")
        )
        pages = plain.get_paginator("list_objects_v2").paginate(
            Bucket=storage.bucket, Prefix=storage.prefix + "index/"
        )
        expected = {
            obj["Key"][len(storage.prefix) :]: obj["LastModified"].timestamp()
            for page in pages
            for obj in page.get("Contents", [])
        }
        assert {i.key: i.mtime for i in storage.list("index/")} == expected
        head = plain.head_object(Bucket=storage.bucket, Key=storage.prefix + "index/t1")
        info = storage.head("index/t1")
        assert info is not None and info.mtime == head["LastModified"].timestamp()
    finally:
        storage.close()
