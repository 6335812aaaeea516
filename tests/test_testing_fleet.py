"""Tests of the fake backends in lbclient.testing, using only the plain grpc API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lbclient.testing import (
    NOT_SERVING,
    SERVING,
    Backend,
    Fleet,
    echo_pb2,
    echo_pb2_grpc,
)

if TYPE_CHECKING:
    from lbclient.testing.pytest_plugin import FleetFactory


ROOT = Path(__file__).resolve().parent.parent
T = 5.0  # generous bound for every call / wait in this file


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])


@pytest.fixture
def backend() -> Iterator[Backend]:
    with Backend("b0", seed=1) as b:
        yield b


@pytest.fixture
def stub(backend: Backend) -> Iterator[echo_pb2_grpc.EchoStub]:
    with channel(backend.address) as ch:
        yield echo_pb2_grpc.EchoStub(ch)


def health_check(address: str, service: str = "") -> int:
    with channel(address) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=T
        )
        return reply.status


# ------------------------------------------------------------------ RPC kinds


def test_unary_reply_and_metadata(backend: Backend, stub: echo_pb2_grpc.EchoStub) -> None:
    reply, call = stub.Unary.with_call(
        echo_pb2.EchoRequest(message="hi", payload=b"\x00\x01"),
        metadata=[("x-echo-id", "42"), ("x-echo-raw-bin", b"\xff"), ("other", "no")],
        timeout=T,
    )
    assert (reply.message, reply.payload, reply.index) == ("hi", b"\x00\x01", 0)
    assert reply.backend == "b0"
    assert reply.address == backend.address == f"127.0.0.1:{backend.port}"
    assert ("x-backend", "b0") in call.initial_metadata()
    trailers = dict(call.trailing_metadata())
    assert trailers["x-echo-id"] == "42"
    assert trailers["x-echo-raw-bin"] == b"\xff"
    assert trailers["x-backend"] == "b0"
    assert "other" not in trailers
    assert backend.calls == 1 and backend.calls_by_method == {"Unary": 1}


def test_server_stream(stub: echo_pb2_grpc.EchoStub) -> None:
    replies = list(stub.ServerStream(echo_pb2.EchoRequest(message="s", count=4), timeout=T))
    assert [r.index for r in replies] == [0, 1, 2, 3]
    assert {r.message for r in replies} == {"s"}
    assert len(list(stub.ServerStream(echo_pb2.EchoRequest(), timeout=T))) == 1


def test_client_stream(stub: echo_pb2_grpc.EchoStub) -> None:
    requests = iter([echo_pb2.EchoRequest(message=m) for m in ("a", "b", "c")])
    reply = stub.ClientStream(requests, timeout=T)
    assert (reply.message, reply.index, reply.backend) == ("a,b,c", 3, "b0")


def test_bidi_replies_as_requests_arrive(stub: echo_pb2_grpc.EchoStub) -> None:
    outbox: list[echo_pb2.EchoRequest | None] = []
    ready = threading.Condition()

    def requests() -> Iterator[echo_pb2.EchoRequest]:
        for i in range(3):
            with ready:
                ready.wait_for(lambda i=i: len(outbox) > i, timeout=T)
                item = outbox[i]
            if item is None:
                return
            yield item

    responses = stub.Bidi(requests(), timeout=T)
    for i, word in enumerate(["x", "y", "z"]):
        with ready:
            outbox.append(echo_pb2.EchoRequest(message=word))
            ready.notify_all()
        reply = next(responses)  # arrives before the next request is sent
        assert (reply.message, reply.index) == (word, i)
    assert list(responses) == []


def test_request_fail_code(stub: echo_pb2_grpc.EchoStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(echo_pb2.EchoRequest(fail_code=5, fail_details="nope"), timeout=T)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "nope"
    assert ("x-backend", "b0") in info.value.initial_metadata()


# ------------------------------------------------------------------ faults


def test_error_rate(backend: Backend, stub: echo_pb2_grpc.EchoStub) -> None:
    backend.set_error_rate(1.0, grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(echo_pb2.EchoRequest(), timeout=T)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details() == "busy"
    with pytest.raises(grpc.RpcError) as info:
        list(stub.ServerStream(echo_pb2.EchoRequest(count=3), timeout=T))
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

    backend.set_error_rate(0.5)
    failures = 0
    for _ in range(40):
        try:
            stub.Unary(echo_pb2.EchoRequest(), timeout=T)
        except grpc.RpcError as e:
            assert e.code() is grpc.StatusCode.UNAVAILABLE
            failures += 1
    assert 5 < failures < 35

    backend.set_error_rate(0.0)
    assert stub.Unary(echo_pb2.EchoRequest(message="ok"), timeout=T).message == "ok"
    with pytest.raises(ValueError):
        backend.set_error_rate(1.5)


def test_latency(backend: Backend, stub: echo_pb2_grpc.EchoStub) -> None:
    backend.set_latency(0.2)
    start = time.monotonic()
    stub.Unary(echo_pb2.EchoRequest(sleep_ms=50), timeout=T)
    assert time.monotonic() - start >= 0.25


def test_hang_then_deadline_frees_thread(backend: Backend, stub: echo_pb2_grpc.EchoStub) -> None:
    backend.hang(True)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(echo_pb2.EchoRequest(), timeout=0.3)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 2.0
    assert backend.wait_idle(T) and backend.in_flight == 0
    backend.hang(False)
    assert stub.Unary(echo_pb2.EchoRequest(message="back"), timeout=T).message == "back"


def test_hang_released_by_unhang(backend: Backend, stub: echo_pb2_grpc.EchoStub) -> None:
    backend.hang(True)
    future = stub.Unary.future(echo_pb2.EchoRequest(message="late"), timeout=T)
    deadline = time.monotonic() + T
    while backend.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not future.done()
    backend.hang(False)
    assert future.result(timeout=T).message == "late"


def test_sleep_cancelled_by_client(backend: Backend, stub: echo_pb2_grpc.EchoStub) -> None:
    future = stub.Unary.future(echo_pb2.EchoRequest(sleep_ms=60_000), timeout=T * 2)
    deadline = time.monotonic() + T
    while backend.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    future.cancel()
    assert backend.wait_idle(T)


def test_counters(backend: Backend, stub: echo_pb2_grpc.EchoStub) -> None:
    with futures.ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda _: stub.Unary(echo_pb2.EchoRequest(sleep_ms=200), timeout=T), range(4))
        )
    assert len(results) == 4
    list(stub.ServerStream(echo_pb2.EchoRequest(count=2), timeout=T))
    assert backend.calls == 5
    assert backend.calls_by_method == {"Unary": 4, "ServerStream": 1}
    assert backend.max_in_flight == 4
    assert backend.in_flight == 0
    backend.reset_counters()
    assert (backend.calls, backend.calls_by_method, backend.max_in_flight) == (0, {}, 0)


# ------------------------------------------------------------------ health


def test_health_status_changes(backend: Backend) -> None:
    assert health_check(backend.address) == SERVING
    backend.set_health(NOT_SERVING)
    assert health_check(backend.address) == NOT_SERVING
    backend.set_health(SERVING, service="svc")
    assert health_check(backend.address, "svc") == SERVING
    backend.set_health(False, service="svc")
    assert health_check(backend.address, "svc") == NOT_SERVING
    with pytest.raises(grpc.RpcError) as info:
        health_check(backend.address, "unknown")
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert backend.health_calls == 5 and backend.calls == 0


def test_health_disabled_is_unimplemented() -> None:
    with Backend(health=False) as b, pytest.raises(grpc.RpcError) as info:
        health_check(b.address)
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert b.name == f"backend-{b.port}"


# ------------------------------------------------------------------ lifecycle


def test_stop_and_restart_same_port(backend: Backend) -> None:
    port = backend.port
    backend.set_health(NOT_SERVING, service="svc")
    with channel(backend.address) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        assert stub.Unary(echo_pb2.EchoRequest(), timeout=T).address == backend.address
        backend.stop()
        assert not backend.running
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(echo_pb2.EchoRequest(), timeout=0.5)
        assert info.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        backend.restart()
        assert backend.running and backend.port == port
        reply = stub.Unary(echo_pb2.EchoRequest(), timeout=T, wait_for_ready=True)
        assert reply.address == f"127.0.0.1:{port}"
    assert health_check(backend.address, "svc") == NOT_SERVING  # kept across restarts


def test_stop_ends_in_flight_calls(backend: Backend, stub: echo_pb2_grpc.EchoStub) -> None:
    future = stub.Unary.future(echo_pb2.EchoRequest(sleep_ms=60_000), timeout=T * 2)
    deadline = time.monotonic() + T
    while backend.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    backend.stop()
    assert time.monotonic() - start < 2.0
    with pytest.raises(grpc.RpcError):
        future.result(timeout=T)
    assert backend.in_flight == 0


def test_graceful_stop_lets_short_calls_finish(
    backend: Backend, stub: echo_pb2_grpc.EchoStub
) -> None:
    future = stub.Unary.future(echo_pb2.EchoRequest(message="done", sleep_ms=200), timeout=T)
    deadline = time.monotonic() + T
    while backend.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    backend.stop(grace=2.0)
    assert future.result(timeout=T).message == "done"


# ------------------------------------------------------------------ fleet


def test_fleet_basics(fleet: Fleet) -> None:
    assert len(fleet) == 3
    assert len({b.port for b in fleet}) == 3
    assert fleet.target == "ipv4:" + ",".join(f"127.0.0.1:{b.port}" for b in fleet)
    for address in fleet.addresses:
        with channel(address) as ch:
            reply = echo_pb2_grpc.EchoStub(ch).Unary(echo_pb2.EchoRequest(), timeout=T)
        assert reply.address == address
        assert fleet.by_address(address).name == reply.backend
    assert fleet.calls() == dict.fromkeys(fleet.addresses, 1)
    fleet.reset_counters()
    assert fleet.calls() == dict.fromkeys(fleet.addresses, 0)
    extra = fleet.add("extra")
    assert len(fleet) == 4 and fleet[3] is extra and extra.running
    with pytest.raises(KeyError):
        fleet.by_address("127.0.0.1:1")


def test_fleet_factory_names_and_stop(fleet_factory: FleetFactory) -> None:
    with fleet_factory(2, names=["a", "b"], latency=0.01) as f:
        assert [b.name for b in f] == ["a", "b"]
        assert all(b.latency == 0.01 for b in f)
    assert not any(b.running for b in f)


def test_serve_subprocess(tmp_path: Path) -> None:
    ports_file = tmp_path / "ports.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lbclient.testing", "serve", "--count", "2",
         "--ports-file", str(ports_file)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        addresses = [proc.stdout.readline().strip() for _ in range(2)]
        assert all(a.startswith("127.0.0.1:") for a in addresses)
        assert ports_file.read_text().split() == addresses
        for address in addresses:
            with channel(address) as ch:
                reply = echo_pb2_grpc.EchoStub(ch).Unary(echo_pb2.EchoRequest(), timeout=T)
            assert reply.address == address
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=T) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=T)
        if proc.stdout is not None:
            proc.stdout.close()
