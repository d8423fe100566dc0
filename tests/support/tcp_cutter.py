"""A TCP forwarder on 127.0.0.1 that can cut every connection through it at once: in front of
the real API server it drops the controller's watches (and any request in flight), as a
restarting API server or a load balancer's idle timeout would. TLS passes through untouched
(the server's certificate names 127.0.0.1, whatever the port). A test double for the network,
not for the API server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class TcpCutter:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._stop = threading.Event()
        self.cuts = 0
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True, name="tcp-cutter")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        self.cut()
        self._thread.join(5)

    def cut(self) -> int:
        """Close every connection through the forwarder; returns how many there were."""
        with self._lock:
            sockets, self._open = list(self._open), set()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.cuts += 1
        return len(sockets) // 2

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
                self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._open -= {source, sink}
            source.close()


@contextmanager
def tcp_cutter(target_host: str, target_port: int) -> Iterator[TcpCutter]:
    cutter = TcpCutter(target_host, target_port)
    cutter.start()
    try:
        yield cutter
    finally:
        cutter.stop()
