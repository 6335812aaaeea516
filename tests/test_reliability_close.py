"""close() with every feature on leaves nothing behind, and ends calls cleanly.

tests/test_close_leaks.py covers a plain channel. Here: health checking (watch and poll
mode), outlier detection and retries on, over the file resolver and over etcd; after
each close no SDK thread (resolver, health watch, timer, retry), socket or file
descriptor may be left. Calls made after close fail at once with CANCELLED "lbclient
channel is closed"; close() during in-flight calls (blocking, futures, all stream kinds,
a call waiting for an endpoint) ends each one promptly with CANCELLED.
"""

from __future__ import annotations

import gc
import json
import os
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from helpers import code_of, wait_until

import lbclient
import lbclient.etcd
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc
from lbclient.testing.etcd import EtcdCluster

SERVICE = "lbclient.testing.echo.v1.Echo"
REQ = echo_pb2.EchoRequest(message="x")
RETRY = {"maxAttempts": 5, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
         "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}


def _config(health_mode: str = "watch") -> dict[str, Any]:
    return {
        "loadBalancingConfig": [{"outlier_detection": {
            "interval": "0.1s", "baseEjectionTime": "1s", "consecutiveFailures": 3,
            "failurePercentageEjection": {"minimumHosts": 2, "requestVolume": 5},
            "childPolicy": [{"round_robin": {}}]}}],
        "healthCheckConfig": {"serviceName": "", "mode": health_mode, "interval": "0.05s"},
        "methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": RETRY}],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.5},
    }


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _sdk_threads() -> list[str]:
    """Threads that are neither the fake backends' nor etcd test helpers'."""
    return sorted(t.name for t in threading.enumerate()
                  if not t.name.startswith("lbclient-backend") and "(_serve)" not in t.name)


def _settle(threads0: list[str], fds0: int, timeout: float = 10.0) -> tuple[list[str], int]:
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        now = (_sdk_threads(), _fds())
        if (len(now[0]) <= len(threads0) and now[1] <= fds0 + 2) \
                or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def _exercise(ch: lbclient.LoadBalancedChannel) -> None:
    """Every call kind once, on a channel whose endpoints become healthy."""
    stub = echo_pb2_grpc.EchoStub(ch)
    stub.Unary(REQ, timeout=5, wait_for_ready=True)
    stub.Unary.future(REQ, timeout=5).result()
    assert len(list(stub.ServerStream(echo_pb2.EchoRequest(count=2), timeout=5))) == 2
    assert stub.ClientStream(iter([REQ, REQ]), timeout=5).index == 2
    assert len(list(stub.Bidi(iter([REQ, REQ]), timeout=5))) == 2


def _cycles(make: Callable[[int], lbclient.LoadBalancedChannel], n: int) -> None:
    with make(-1) as ch:                       # warm grpc and the imports up
        _exercise(ch)
    _settle([], 0, 1.0)
    threads0, fds0 = _sdk_threads(), _fds()
    for i in range(n):
        ch = make(i)
        _exercise(ch)
        ch.close()
        ch.close()                             # idempotent
    threads1, fds1 = _settle(threads0, fds0)
    assert len(threads1) <= len(threads0), (threads0, threads1)
    assert fds1 <= fds0 + 2, (fds0, fds1)


# --------------------------------------------------------------------------- leaks


def test_file_resolver_channels_with_every_feature_leave_nothing(
        fleet: Fleet, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps({"endpoints": [{"address": a} for a in fleet.addresses]}))

    def make(i: int) -> lbclient.LoadBalancedChannel:
        mode = "poll" if i % 2 else "watch"   # both health modes, half the cycles each
        return lbclient.insecure_channel(f"file://{path}", service_config=_config(mode),
                                         resolver_options={"poll_interval": 0.02})
    _cycles(make, 50)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path_factory.mktemp("etcd"), 1) as cluster:
        yield cluster


def test_etcd_resolver_channels_with_every_feature_leave_nothing(
        fleet: Fleet, etcd: EtcdCluster) -> None:
    for address in fleet.addresses:
        lbclient.etcd.add_endpoint(etcd.endpoints, "services/leaks", address)

    def make(i: int) -> lbclient.LoadBalancedChannel:
        return lbclient.insecure_channel(etcd.target("services/leaks"),
                                         service_config=_config())
    _cycles(make, 20)


# --------------------------------------------------------------------------- after close


@pytest.mark.parametrize("config", [None, _config()], ids=["plain", "every-feature"])
def test_calls_after_close_fail_at_once_with_a_clear_error(
        fleet: Fleet, config: dict[str, Any] | None) -> None:
    ch = lbclient.insecure_channel(fleet.target, service_config=config)
    stub = echo_pb2_grpc.EchoStub(ch)
    stub.Unary(REQ, timeout=5, wait_for_ready=True)
    ch.close()
    attempts: list[Callable[[], Any]] = [
        lambda: stub.Unary(REQ, timeout=5),
        lambda: stub.Unary(REQ, timeout=5, wait_for_ready=True),
        lambda: stub.Unary.future(REQ, timeout=5).result(),
        lambda: list(stub.ServerStream(REQ, timeout=5)),
        lambda: stub.ClientStream(iter([REQ]), timeout=5),
        lambda: list(stub.Bidi(iter([REQ]), timeout=5)),
    ]
    for call in attempts:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert time.monotonic() - t0 < 1.0
        assert code_of(info.value) is grpc.StatusCode.CANCELLED
        assert info.value.details() == "lbclient channel is closed"
    assert ch.get_state() is grpc.ChannelConnectivity.SHUTDOWN


# --------------------------------------------------------------------------- close in flight


def _ends(fn: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException | None]]:
    """Run ``fn`` on a thread; the list gets its exception (or None) when it ends."""
    out: list[BaseException | None] = []

    def body() -> None:
        try:
            fn()
            out.append(None)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            out.append(exc)
    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, out


@pytest.mark.parametrize("config", [None, _config()], ids=["plain", "every-feature"])
def test_close_cancels_in_flight_calls_promptly(fleet_factory: Any,
                                                config: dict[str, Any] | None) -> None:
    fleet: Fleet = fleet_factory(2)
    ch = lbclient.insecure_channel(fleet.target, service_config=config)
    stub = echo_pb2_grpc.EchoStub(ch)
    stub.Unary(REQ, timeout=5, wait_for_ready=True)
    for b in fleet:
        b.hang()                                  # every Echo call blocks until cancelled
    slow = echo_pb2.EchoRequest(message="slow", count=3)
    future = stub.Unary.future(REQ, timeout=30)
    done_calls: list[Any] = []
    future.add_done_callback(done_calls.append)
    stream = stub.ServerStream(slow, timeout=30)
    bidi = stub.Bidi(iter([REQ]), timeout=30)
    running = [_ends(lambda: stub.Unary(REQ, timeout=30)),
               _ends(lambda: stub.ClientStream(iter([REQ, REQ]), timeout=30)),
               _ends(lambda: list(stream)), _ends(lambda: list(bidi))]
    wait_until(lambda: sum(b.in_flight for b in fleet) >= 5, timeout=10,
               message="five calls in flight on the backends")
    t0 = time.monotonic()
    ch.close()
    assert time.monotonic() - t0 < 3.0, "close() must not wait for in-flight calls"
    for t, _ in running:
        t.join(5)
    assert time.monotonic() - t0 < 5.0
    errors = [out[0] for _, out in running]
    assert all(isinstance(e, grpc.RpcError) for e in errors), errors
    assert {code_of(e) for e in errors} == {grpc.StatusCode.CANCELLED}, errors  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as info:
        future.result(timeout=5)
    assert code_of(info.value) is grpc.StatusCode.CANCELLED
    wait_until(lambda: len(done_calls) == 1, timeout=5, message="the future's callback")
    for b in fleet:
        b.hang(False)
    # the servers saw the cancellations: their handlers ended
    assert all(b.wait_idle(5) for b in fleet)


@pytest.mark.parametrize("config", [None, _config()], ids=["plain", "every-feature"])
def test_close_ends_a_call_waiting_for_an_endpoint(fleet_factory: Any,
                                                   config: dict[str, Any] | None) -> None:
    fleet: Fleet = fleet_factory(1)
    fleet[0].stop()                               # nothing listens: no endpoint will be ready
    ch = lbclient.insecure_channel(fleet.target, service_config=config)
    stub = echo_pb2_grpc.EchoStub(ch)
    # a waitForReady pick blocks the caller, for futures and streams too (lbclient
    # places the first attempt before returning), so each waits on a thread of its own
    waiting = [
        _ends(lambda: stub.Unary(REQ, timeout=30, wait_for_ready=True)),
        _ends(lambda: stub.Unary.future(REQ, timeout=30, wait_for_ready=True).result()),
        _ends(lambda: list(stub.ServerStream(REQ, timeout=30, wait_for_ready=True))),
        _ends(lambda: list(stub.Bidi(iter([REQ]), timeout=30, wait_for_ready=True))),
    ]
    time.sleep(0.3)
    assert all(t.is_alive() for t, _ in waiting), [out for _, out in waiting]
    t0 = time.monotonic()
    ch.close()
    for t, _ in waiting:
        t.join(5)
    assert time.monotonic() - t0 < 3.0
    errors = [out[0] for _, out in waiting]
    assert {code_of(e) for e in errors} == {grpc.StatusCode.CANCELLED}, errors  # type: ignore[arg-type]
