"""Helpers of the PostgreSQL tests: polling, and a TCP proxy that can cut a connection at COMMIT."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable


def eventually(check: Callable[[], bool], attempts: int = 500, interval: float = 0.01) -> bool:
    """Poll ``check`` (notifications arrive asynchronously; tests never assert on wall-clock time)."""
    for _ in range(attempts):
        if check():
            return True
        time.sleep(interval)
    return check()


class CommitCutter:
    """A TCP proxy on 127.0.0.1 in front of the PostgreSQL server of ``url``.

    Once armed, it forwards the next ``COMMIT`` a client sends, lets the server process it, and then closes
    that connection without passing the server's answer on: the client sees its connection lost during
    COMMIT although the transaction committed (the "outcome unknown" case)."""

    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.listener = socket.create_server(("127.0.0.1", 0))
        port = self.listener.getsockname()[1]
        query = [*urllib.parse.parse_qsl(parts.query), ("sslmode", "disable")]
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{port}"
        self.url = urllib.parse.urlunsplit(
            parts._replace(
                netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host,
                query=urllib.parse.urlencode(query),
            )
        )
        self.armed = threading.Event()
        self.cut = threading.Event()
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._sockets += [client, server]
            cut = threading.Event()  # this connection's: set before its COMMIT goes out
            threading.Thread(target=self._pump, args=(client, server, True, cut), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False, cut), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool, cut: threading.Event) -> None:
        previous = b""  # the end of the last chunk: a message may be split across two reads
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                seen, previous = previous + data, data[-16:]
                if upstream and self.armed.is_set() and b"COMMIT\x00" in seen:
                    self.armed.clear()
                    cut.set()
                    sink.sendall(data)
                    time.sleep(0.3)  # the server commits and answers; the answer is never passed on
                    self.cut.set()
                    break
                if not upstream and cut.is_set():
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
