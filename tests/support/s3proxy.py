"""A byte-level HTTP/1.1 proxy in front of the test S3 server: counts requests, injects faults.

It forwards every request unchanged (so SigV4 signatures, which cover the Host header,
still verify) and hands the server's answer back, unless a fault rule says otherwise:

* ``lose_answer_of(method, key_suffix)``: the request reaches the server and is carried
  out, but the client gets a 500 instead of the server's answer: the "ambiguous write"
  that a retry must survive.

It counts what crossed the wire, by S3 operation as a price list names them
(``operations``: put, get, head, list, delete, copy), the body bytes of every request sent
(``bytes_up``) and the object bytes of the GET answers handed back (``bytes_down``).

It is a test double for the network between lamina and S3, not for S3 itself: the server
behind it is the real SeaweedFS.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_ERROR_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    b"<Message>injected</Message></Error>\n"
)
# Its length counted, not typed: a Content-Length past the body makes the client wait for
# bytes that never come (a read timeout instead of a quick retry).
_INTERNAL_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\n"
    b"Content-Type: application/xml\r\n"
    + f"Content-Length: {len(_ERROR_BODY)}\r\n".encode()
    + b"\r\n"
    + _ERROR_BODY
)


@dataclass
class _Rule:
    method: str
    key_suffix: str
    remaining: int


@dataclass
class S3Proxy:
    upstream_host: str
    upstream_port: int
    requests: Counter[str] = field(default_factory=Counter)
    operations: Counter[str] = field(default_factory=Counter)
    bytes_up: int = 0
    bytes_down: int = 0
    injected: int = 0
    _rules: list[_Rule] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sock: socket.socket | None = None
    port: int = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lose_answer_of(self, method: str, key_suffix: str, times: int = 1) -> None:
        with self._lock:
            self._rules.append(_Rule(method.upper(), key_suffix, times))

    def _fault_for(self, method: str, path: str) -> bool:
        with self._lock:
            for rule in self._rules:
                if rule.remaining > 0 and method == rule.method and path.endswith(rule.key_suffix):
                    rule.remaining -= 1
                    self.injected += 1
                    return True
        return False

    # ---------------------------------------------------------------------- serving

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self._sock = sock
        self.port = sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="s3proxy").start()

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _accept(self) -> None:
        while self._sock is not None:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection((self.upstream_host, self.upstream_port))
        reader = client.makefile("rb")
        up_reader = upstream.makefile("rb")
        try:
            while True:
                head, body, method, path = _read_message(reader, request=True, client=client)
                if head is None:
                    return
                operation = _operation(head, method, path)
                with self._lock:
                    self.requests[method] += 1
                    self.operations[operation] += 1
                    self.bytes_up += _payload_size(head, body)
                upstream.sendall(head + body)
                answer_head, answer_body, _, _ = _read_message(
                    up_reader, request=False, head_request=method == "HEAD"
                )
                if answer_head is None:
                    return
                if self._fault_for(method, path):
                    client.sendall(_INTERNAL_ERROR)
                    continue
                if operation == "get" and answer_head.split(b" ")[1][:1] == b"2":
                    with self._lock:
                        self.bytes_down += len(answer_body)
                client.sendall(answer_head + answer_body)
        except OSError:
            return
        finally:
            for s in (client, upstream):
                try:
                    s.close()
                except OSError:
                    pass


_LIST_PARAMETERS = {
    "list-type",
    "prefix",
    "delimiter",
    "continuation-token",
    "max-keys",
    "start-after",
    "marker",
    "encoding-type",
    "fetch-owner",
}


def _operation(head: bytes, method: str, path: str) -> str:
    """The S3 operation of a request, from the wire alone (path-style addressing)."""
    target = head.split(b" ", 2)[1].decode("latin-1")
    query = {part.split("=")[0] for part in urlsplit(target).query.split("&") if part}
    headers = head.decode("latin-1").lower()
    object_key = "/" in path.strip("/")
    if method == "PUT":
        return "copy" if "\r\nx-amz-copy-source:" in headers else "put"
    if method == "POST":
        return "delete" if "delete" in query else "put"
    if method == "DELETE":
        return "delete"
    if method == "HEAD":
        return "head"
    if method == "GET" and not object_key and query <= _LIST_PARAMETERS:
        return "list"
    return "get"


def _payload_size(head: bytes, body: bytes) -> int:
    """The bytes a request carries (its body: Content-Length, never chunk framing)."""
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"x-amz-decoded-content-length":
            return int(value.strip())
    return len(body)


def _read_message(
    reader: object,
    *,
    request: bool,
    head_request: bool = False,
    client: socket.socket | None = None,
) -> tuple[bytes | None, bytes, str, str]:
    """One HTTP/1.1 message as raw bytes: (head, body, method, path).

    A request's ``Expect: 100-continue`` is answered here (to ``client``) and not forwarded,
    and interim 1xx answers of the server are skipped, so each request has one answer.
    """
    readline = reader.readline  # type: ignore[attr-defined]
    read = reader.read  # type: ignore[attr-defined]
    while True:
        first = readline()
        if not first:
            return None, b"", "", ""
        lines = [first]
        headers: dict[str, str] = {}
        while True:
            line = readline()
            if line in (b"\r\n", b"\n", b""):
                lines.append(line)
                break
            name, _, value = line.decode("latin-1").partition(":")
            if request and name.strip().lower() == "expect":
                if client is not None:
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                continue
            lines.append(line)
            headers[name.strip().lower()] = value.strip()
        if request or not 100 <= int(first.split(b" ")[1]) < 200:
            break
    method, path = "", ""
    if request:
        parts = first.decode("latin-1").split(" ")
        method, path = parts[0].upper(), urlsplit(parts[1]).path
    status = 0 if request else int(first.split(b" ")[1])
    no_body = (not request) and (head_request or status in (204, 304) or 100 <= status < 200)
    body = b""
    if not no_body:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size_line = readline()
                chunks.append(size_line)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the blank line
                        trailer = readline()
                        chunks.append(trailer)
                        if trailer in (b"\r\n", b"\n", b""):
                            break
                    break
                chunks.append(read(size + 2))
            body = b"".join(chunks)
        elif "content-length" in headers:
            body = read(int(headers["content-length"]))
    return b"".join(lines), body, method, path


@contextmanager
def s3_proxy(endpoint_url: str) -> Iterator[S3Proxy]:
    url = urlsplit(endpoint_url)
    proxy = S3Proxy(url.hostname or "127.0.0.1", url.port or 80)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
