"""A TCP proxy in front of one backend that dies the way a killed process does.

``crash()`` resets every proxied connection at once and stops listening: the client's
in-flight calls end UNAVAILABLE (connection reset) and new connections are refused, as
when a backend's process is SIGKILLed. An in-process ``Backend.stop()`` is no stand-in: a
grpc server that shuts down - even with a grace period - cancels the calls that reached
it, and the client sees CANCELLED, which no retry policy should retry. ``restart()``
listens on the same port again (the backend behind it never stopped, so its counters go
on). One daemon thread runs a selector loop over the listener and every connection;
``crash()``, ``restart()`` and ``close()`` are carried out by that thread and return once
done (bounded).
"""

from __future__ import annotations

import queue
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from helpers import wait_ready, wait_until

import lbclient
from lbclient.testing import echo_pb2, echo_pb2_grpc

_HOST = "127.0.0.1"
_WAIT = 5.0


class CrashProxy:
    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._peers: dict[socket.socket, socket.socket] = {}   # both directions
        self._commands: queue.Queue[tuple[Callable[[], None], threading.Event]] = \
            queue.Queue()
        self._closed = False
        self._listener: socket.socket | None = None
        self._listen(0)
        assert self._listener is not None
        self.port: int = self._listener.getsockname()[1]
        self.crashes = 0
        self._thread = threading.Thread(target=self._loop, name="crash-proxy", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{_HOST}:{self.port}"

    # ------------------------------------------------------------------ control
    def crash(self) -> None:
        """Reset every connection and stop listening."""
        self._run(self._crash)

    def restart(self) -> None:
        """Listen on the same port again."""
        self._run(lambda: self._listen(self.port))

    def close(self) -> None:
        if not self._closed:
            self._run(self._shutdown)
            self._thread.join(_WAIT)

    def __enter__(self) -> CrashProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, fn: Callable[[], None]) -> None:
        done = threading.Event()
        self._commands.put((fn, done))
        self._wake_w.send(b"x")
        if not done.wait(_WAIT):
            raise RuntimeError("the proxy's loop did not answer")

    # ------------------------------------------------------------------ loop thread
    def _listen(self, port: int) -> None:
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((_HOST, port))
        listener.listen(64)
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, None)

    def _crash(self) -> None:
        self.crashes += 1
        if self._listener is not None:
            self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None
        for sock in list(self._peers):
            self._drop(sock, reset=True)

    def _shutdown(self) -> None:
        self._crash()
        self._closed = True

    def _drop(self, sock: socket.socket, reset: bool = False) -> None:
        """Close a connection and its other half (once)."""
        peer = self._peers.pop(sock, None)
        if peer is None:
            return
        del self._peers[peer]
        for s in (sock, peer):
            self._selector.unregister(s)
            if reset:   # linger 0: close sends RST, as a killed process's kernel may
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

    def _accept(self) -> None:
        assert self._listener is not None
        client, _ = self._listener.accept()
        try:
            upstream = socket.create_connection(self._upstream, timeout=_WAIT)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.settimeout(_WAIT)           # a sendall that can't finish drops the pair
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._selector.register(s, selectors.EVENT_READ, None)
        self._peers[client] = upstream
        self._peers[upstream] = client

    def _forward(self, sock: socket.socket) -> None:
        peer = self._peers.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(65536)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        self._drop(sock)                  # one side closed (or failed): close both

    def _loop(self) -> None:
        while not self._closed:
            for key, _ in self._selector.select(0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._wake_r:
                    sock.recv(64)
                    while not self._commands.empty():
                        fn, done = self._commands.get()
                        try:
                            fn()
                        finally:
                            done.set()
                elif sock is self._listener:
                    self._accept()
                elif sock in self._peers:
                    self._forward(sock)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


# ------------------------------------------------------------------ a kill under load
@dataclass
class KillRun:
    """What :func:`kill_under_load` saw: successful calls per thread, the status codes of
    failed calls, calls served while the victim was down, failed attempts on it, and the
    retry gate's granted count (None without a gate)."""

    ok: Counter[int]
    errors: list[Any]
    served_while_down: int
    failed_attempts: int
    granted: int | None


def kill_under_load(fleet: Any, config: dict[str, Any], threads: int = 4) -> KillRun:
    """``threads`` callers on a channel over ``fleet[0]``, a CrashProxy to ``fleet[1]``
    (the victim) and ``fleet[2]``; the victim is crashed for 0.5 s under load, then
    restarted, and the callers stop once it serves again (every wait bounded)."""
    victim = fleet[1]
    request = echo_pb2.EchoRequest(message="k")
    with CrashProxy(victim.address) as proxy, lbclient.insecure_channel(
            f"ipv4:{fleet[0].address},{proxy.address},{fleet[2].address}",
            service_config=config) as ch:
        wait_ready(ch, 3)
        stub = echo_pb2_grpc.EchoStub(ch)
        stop = threading.Event()
        ok: Counter[int] = Counter()
        errors: list[Any] = []
        lock = threading.Lock()

        def worker(n: int) -> None:
            while not stop.is_set():
                try:
                    stub.Unary(request, timeout=5)
                except grpc.RpcError as exc:
                    with lock:
                        errors.append(exc.code())
                else:
                    with lock:
                        ok[n] += 1

        pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
        for t in pool:
            t.start()
        try:
            wait_until(lambda: victim.in_flight > 0, 5, message="load on the victim")
            killed_at = sum(ok.values())
            proxy.crash()                     # in-flight calls on it are cut off
            time.sleep(0.5)
            served_while_down = sum(ok.values()) - killed_at
            failed_attempts = sum(e.failures for e in ch.endpoints()
                                  if e.address == proxy.address)
            proxy.restart()
            fleet.reset_counters()
            wait_until(lambda: victim.calls >= 3, 5, message="the victim back in rotation")
        finally:
            stop.set()
            for t in pool:
                t.join(10)
        gate = ch._ctx.throttle
        granted = getattr(gate, "granted", None) if gate is not None else None
    return KillRun(ok, errors, served_while_down, failed_attempts, granted)
