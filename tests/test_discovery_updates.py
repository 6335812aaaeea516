"""Endpoint updates from a resolver, through a real channel on real backends (the file
resolver drives them): a removed endpoint's in-flight stream finishes normally and then its
connection closes; kept endpoints keep their connection and counters; a 10,000-endpoint
update is applied while calls are in flight, none of them failing."""

from __future__ import annotations

import json
import os
import pathlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc
from helpers import wait_ready, wait_until

import lbclient
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")
FAST = {"poll_interval": 0.02}


def write(path: pathlib.Path, addresses: Sequence[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"endpoints": [{"address": a} for a in addresses]}))
    os.replace(tmp, path)


def client_connections(port: int) -> int:
    """ESTABLISHED TCP connections of this host whose *remote* port is ``port`` (the
    client side of connections to a local backend), from /proc/net/tcp and tcp6 (grpc
    uses dual-stack sockets, so IPv4 peers appear there as ::ffff:127.0.0.1)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def _addresses(ch: lbclient.LoadBalancedChannel) -> list[str]:
    return [e.address for e in ch.endpoints()]


def test_removed_endpoint_finishes_its_stream_then_closes(tmp_path: pathlib.Path,
                                                          fleet: Fleet) -> None:
    a, b, _ = fleet.addresses
    port_a = int(a.rsplit(":", 1)[1])
    path = tmp_path / "e.json"
    write(path, [a])
    with lbclient.insecure_channel(f"file://{path}", resolver_options=FAST) as ch:
        wait_ready(ch, 1)
        stub = echo_pb2_grpc.EchoStub(ch)
        stream = stub.ServerStream(echo_pb2.EchoRequest(message="s", count=15, sleep_ms=100),
                                   timeout=30)
        first = next(stream)
        assert first.address == a
        assert client_connections(port_a) >= 1
        write(path, [b])                                     # a is removed mid-stream
        wait_until(lambda: _addresses(ch) == [b], 5, message="a removed")
        wait_ready(ch, 1)
        assert {stub.Unary(REQ, timeout=5).address for _ in range(10)} == {b}
        assert client_connections(port_a) >= 1               # still draining the stream
        rest = list(stream)                                  # finishes normally
        assert [r.index for r in [first, *rest]] == list(range(15))
        assert {r.address for r in rest} == {a}
        assert stream.code() is grpc.StatusCode.OK
        wait_until(lambda: client_connections(port_a) == 0, 5,
                   message="a's connection closed once its stream ended")


def test_kept_endpoints_keep_their_connection_and_counters(tmp_path: pathlib.Path,
                                                           fleet: Fleet) -> None:
    a, b, c = fleet.addresses
    path = tmp_path / "e.json"
    write(path, [a, b])
    with lbclient.insecure_channel(f"file://{path}", resolver_options=FAST) as ch:
        wait_ready(ch, 2)
        stub = echo_pb2_grpc.EchoStub(ch)
        for _ in range(10):
            stub.Unary(REQ, timeout=5)
        before = {e.address: e.calls for e in ch.endpoints()}
        connections = client_connections(int(a.rsplit(":", 1)[1]))
        write(path, [c, a])                                   # b out, c in, a kept
        wait_until(lambda: _addresses(ch) == [c, a], 5)
        info = {e.address: e for e in ch.endpoints()}
        assert info[a].calls == before[a] == 5
        assert info[a].connectivity == "READY"
        assert client_connections(int(a.rsplit(":", 1)[1])) == connections   # no reconnect


def test_10000_endpoint_update_with_calls_in_flight(tmp_path: pathlib.Path,
                                                    fleet: Fleet) -> None:
    """3 real backends + 9,997 addresses that refuse connections (127.1.x.y:1). Streams
    and unary calls run across the update to 10,000 endpoints and back; none fails."""
    real = fleet.addresses
    fake = [f"127.1.{i // 250}.{i % 250 + 1}:1" for i in range(10_000 - len(real))]
    path = tmp_path / "e.json"
    write(path, real)
    with lbclient.insecure_channel(f"file://{path}", resolver_options=FAST) as ch:
        wait_ready(ch, 3)
        stub = echo_pb2_grpc.EchoStub(ch)
        _check_no_thread_per_endpoint(ch, path, real)
        streams = [stub.ServerStream(echo_pb2.EchoRequest(message="s", count=20, sleep_ms=100),
                                     timeout=60) for _ in range(6)]
        firsts = [next(s) for s in streams]
        unary = _UnaryLoop(stub)
        unary.start()
        try:
            t0 = time.monotonic()
            write(path, real + fake)
            wait_until(lambda: len(ch.endpoints()) == 10_000, 60, interval=0.005,
                       message="10,000 endpoints")
            added = time.monotonic() - t0
            done_before = unary.ok
            wait_until(lambda: unary.ok >= done_before + 5, 30,
                       message="unary calls to keep completing with 10,000 endpoints")
            t0 = time.monotonic()
            write(path, real)
            wait_until(lambda: len(ch.endpoints()) == 3, 60, interval=0.005,
                       message="back to 3 endpoints")
            removed = time.monotonic() - t0
            wait_until(lambda: unary.ok >= done_before + 10, 30)
        finally:
            unary.stop()
        replies = [[first, *stream] for first, stream in zip(firsts, streams, strict=True)]
        print(f"\n10,000-endpoint update applied in {added:.2f}s, back to 3 in "
              f"{removed:.2f}s; {unary.ok} unary calls meanwhile")
    assert all(len(r) == 20 and s.code() is grpc.StatusCode.OK
               for r, s in zip(replies, streams, strict=True))
    assert unary.failures == [], unary.failures[:3]
    assert added < 60 and removed < 60          # generous; the figures are in benchmarks/


def _check_no_thread_per_endpoint(ch: lbclient.LoadBalancedChannel, path: pathlib.Path,
                                  real: list[str]) -> None:
    """Fail (rather than stall the machine) if each endpoint costs a thread: grpcio's
    Channel.subscribe runs one polling thread per channel, and a process with a few
    thousand of them stops making progress."""
    before = threading.active_count()
    write(path, real + [f"127.2.0.{i + 1}:1" for i in range(100)])
    wait_until(lambda: len(ch.endpoints()) == 103, 10)
    grown = threading.active_count() - before
    write(path, real)
    wait_until(lambda: len(ch.endpoints()) == 3, 30)
    assert grown < 50, (f"100 extra endpoints started {grown} threads: one thread per "
                        "endpoint connection cannot scale to 10,000")


class _UnaryLoop:
    """Unary calls back to back on a thread until stopped; records every failure."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self._stop = threading.Event()
        self.ok = 0
        self.failures: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._stub.Unary(REQ, timeout=10)
                self.ok += 1
            except grpc.RpcError as exc:
                self.failures.append(exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)
