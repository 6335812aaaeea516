"""Faults for chaos tests that a fake backend cannot play by itself.

``SilentServer``: a TCP listener on 127.0.0.1 that accepts every connection and reads
whatever arrives, but never writes a byte - a backend that accepts TCP and never speaks
HTTP/2 (a wedged process whose kernel still completes handshakes, a port taken by
something else, a proxy whose upstream is gone). A gRPC client connecting to it stays
CONNECTING until its connect timeout: it must never place a call there.

``ProcessBackend``: fake Echo backends (``python -m lbclient.testing serve``) in a child
process, so a test can do to them what only a process suffers: ``freeze()`` (SIGSTOP: the
kernel still accepts connections and buffers requests, nothing answers, open streams and
health watches just go quiet), ``thaw()`` (SIGCONT: the backlog is served), ``crash()``
(SIGKILL: connections reset).

    with SilentServer() as silent, ProcessBackend() as child:
        channel = lbclient.insecure_channel(f"ipv4:{silent.address},{child.address}")
        child.freeze()
        ...
        child.thaw()

Both are context managers; ``close()`` is idempotent, bounded, and thaws a frozen child
before stopping it. Threads: ``SilentServer`` runs one daemon thread (a selector loop
over the listener and every accepted connection), ``ProcessBackend`` none.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence

from . import _child

__all__ = ["ProcessBackend", "SilentServer"]

_HOST = "127.0.0.1"


class SilentServer:
    """Accepts TCP connections on ``127.0.0.1:port`` (ephemeral unless given) and reads
    them until the peer closes; never writes. ``connections``: accepted so far;
    ``open_connections``: not yet closed by the peer; ``bytes_read``: total read.
    The listener starts in the constructor."""

    def __init__(self, port: int = 0, backlog: int = 128) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((_HOST, port))
        self._listener.listen(backlog)
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._lock = threading.Lock()
        self._accepted = 0
        self._open = 0
        self._bytes = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"lbclient-silent-{self.port}")
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def address(self) -> str:
        return f"{_HOST}:{self.port}"

    @property
    def connections(self) -> int:
        with self._lock:
            return self._accepted

    @property
    def open_connections(self) -> int:
        with self._lock:
            return self._open

    @property
    def bytes_read(self) -> int:
        with self._lock:
            return self._bytes

    def _loop(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.data == "wake":
                    self._drop_all()
                    return
                if key.data == "accept":
                    self._accept()
                else:
                    self._read(key.fileobj)   # type: ignore[arg-type]

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        self._selector.register(conn, selectors.EVENT_READ, "conn")
        with self._lock:
            self._accepted += 1
            self._open += 1

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            with self._lock:
                self._bytes += len(data)
            return
        self._selector.unregister(conn)
        conn.close()
        with self._lock:
            self._open -= 1

    def _drop_all(self) -> None:
        for key in list(self._selector.get_map().values()):
            self._selector.unregister(key.fileobj)
            if key.data == "conn":
                key.fileobj.close()    # type: ignore[union-attr]
        with self._lock:
            self._open = 0
        self._selector.close()

    def close(self) -> None:
        """Stop listening and close every accepted connection (bounded: joins the loop
        thread for at most 5 s)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake_w.send(b"x")
        self._thread.join(5.0)
        for s in (self._listener, self._wake_r, self._wake_w):
            s.close()

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SilentServer({self.address}, connections={self.connections})"


class ProcessBackend:
    """``count`` fake backends served by ``python -m lbclient.testing serve`` in one child
    process (``args`` go to that command, e.g. ``["--max-workers", "8"]``).

    The constructor returns once every backend serves (bounded by ``start_timeout``:
    RuntimeError with the child's stderr if it exits or is too slow). ``addresses``:
    ``"127.0.0.1:port"`` each; ``address``: the first. ``frozen``: between ``freeze()``
    and ``thaw()``; ``alive``: the process has not exited."""

    def __init__(self, count: int = 1, args: Sequence[str] = (),
                 start_timeout: float = 60.0) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="lbclient-child-")
        ports = os.path.join(self._dir.name, "ports")
        cmd = [sys.executable, "-m", "lbclient.testing", "serve", "--count", str(count),
               "--ports-file", ports, *args]
        self.frozen = False
        try:
            proc, text = _child.spawn("backend process", cmd, ports, start_timeout)
        except BaseException:
            self._dir.cleanup()
            raise
        self._proc: subprocess.Popen[bytes] | None = proc
        self.addresses = [line.strip() for line in text.splitlines() if line.strip()]

    @property
    def address(self) -> str:
        return self.addresses[0]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _signal(self, signum: int) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("the backend process is not running")
        self._proc.send_signal(signum)

    def freeze(self) -> None:
        """SIGSTOP: the process stops; its sockets stay open."""
        self._signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT (no-op unless frozen)."""
        if self.frozen:
            self.frozen = False
            self._signal(signal.SIGCONT)

    def crash(self) -> None:
        """SIGKILL, and reap the process (its connections are reset)."""
        proc = self._proc
        self._signal(signal.SIGKILL)
        if proc is not None:
            proc.wait(10.0)
        self.frozen = False

    def close(self) -> None:
        """Thaw, SIGTERM and wait (then SIGKILL), remove the temporary directory.
        Idempotent; bounded (about 20 s at most)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _child.stop(proc, self.frozen)
        self.frozen = False
        self._dir.cleanup()

    def __enter__(self) -> ProcessBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "frozen" if self.frozen else "running" if self.alive else "stopped"
        return f"ProcessBackend({', '.join(self.addresses)}, {state})"
