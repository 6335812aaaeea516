"""Active grpc.health.v1 checking on real backends: Watch, poll thresholds, UNIMPLEMENTED,
probe timeouts, and probing that stops with the endpoint or the channel."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import wait_until

import lbclient
from lbclient.endpoint import Endpoint
from lbclient.resolver.base import ResolverState
from lbclient.testing import (
    NOT_SERVING,
    SERVICE_UNKNOWN,
    Backend,
    Fleet,
    echo_pb2,
    echo_pb2_grpc,
)

REQ = echo_pb2.EchoRequest(message="x")
RR = [{"round_robin": {}}]


def eligible(ch: lbclient.LoadBalancedChannel) -> set[str]:
    return {e.address for e in ch.endpoints() if e.eligible}


def health_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("lbclient-health-")]


def test_watch_not_serving_stops_picks_and_serving_brings_it_back(fleet: Fleet) -> None:
    cfg = {"loadBalancingConfig": RR, "healthCheckConfig": {"serviceName": ""}}
    with lbclient.insecure_channel(fleet.target, service_config=cfg) as ch:
        events: list[lbclient.EndpointEvent] = []
        ch.add_event_listener(events.append)
        wait_until(lambda: eligible(ch) == set(fleet.addresses), 10, message="3 healthy")
        assert all(e.health == "healthy" for e in ch.endpoints())
        stub = echo_pb2_grpc.EchoStub(ch)
        bad = fleet[0]
        t0 = time.monotonic()
        bad.set_health(False)
        wait_until(lambda: any(e.kind == "health_changed" and e.healthy is False
                               for e in events), 10, interval=0.001, message="unhealthy")
        detected = time.monotonic() - t0
        before = bad.calls
        seen = {stub.Unary(REQ, timeout=5).address for _ in range(60)}
        assert seen == set(fleet.addresses[1:]) and bad.calls == before
        info = next(e for e in ch.endpoints() if e.address == bad.address)
        assert (info.healthy, info.health_reason, info.eligible) == (False, "NOT_SERVING", False)
        # The Watch stream pushes the change: typically a few ms (timing claims live in
        # benchmarks/bench_gray_failure.py); here only a bound that a loaded box meets.
        assert detected < 3.0, detected
        bad.set_health(SERVICE_UNKNOWN)                     # also unhealthy, at once
        bad.set_health(True)
        wait_until(lambda: bad.address in eligible(ch), 10, message="healthy again")
        seen = {stub.Unary(REQ, timeout=5).address for _ in range(60)}
        assert seen == set(fleet.addresses)
        assert bad.health_calls == 1                        # one Watch stream, no polling


def test_watch_named_service(fleet: Fleet) -> None:
    for b in fleet:
        b.set_health(True, service="orders")
    fleet[1].set_health(NOT_SERVING, service="orders")
    cfg = {"loadBalancingConfig": RR, "healthCheckConfig": {"serviceName": "orders"}}
    with lbclient.insecure_channel(fleet.target, service_config=cfg) as ch:
        wait_until(lambda: all(e.health != "pending" for e in ch.endpoints()), 10)
        assert eligible(ch) == {fleet.addresses[0], fleet.addresses[2]}


def test_poll_thresholds_on_real_probes(fleet: Fleet) -> None:
    interval = 0.1
    cfg = {"loadBalancingConfig": RR, "healthCheckConfig": {
        "mode": "poll", "interval": f"{interval}s", "timeout": "2s", "jitter": 0,
        "unhealthyThreshold": 3, "healthyThreshold": 2}}
    with lbclient.insecure_channel(fleet.target, service_config=cfg) as ch:
        events: list[tuple[float, lbclient.EndpointEvent]] = []
        ch.add_event_listener(lambda e: events.append((time.monotonic(), e)))
        wait_until(lambda: eligible(ch) == set(fleet.addresses), 10, message="3 healthy")
        bad = fleet[2]

        def health_event(healthy: bool) -> tuple[float, lbclient.EndpointEvent] | None:
            return next(((t, e) for t, e in reversed(events) if e.kind == "health_changed"
                         and e.address == bad.address and e.healthy is healthy), None)

        t0 = time.monotonic()
        bad.set_health(False)
        wait_until(lambda: health_event(False) is not None, 10, message="unhealthy")
        t1, ev = health_event(False)  # type: ignore[misc]
        # three failed probes, an interval apart: at least two intervals after the change
        assert t1 - t0 >= 2 * interval * 0.9, t1 - t0
        assert ev.reason.startswith("3 failed probes in a row: NOT_SERVING")
        assert bad.address not in eligible(ch)
        t2 = time.monotonic()
        bad.set_health(True)
        wait_until(lambda: health_event(True) is not None and
                   health_event(True)[0] > t2, 10,  # type: ignore[index]
                   message="healthy again")
        t3, ev = health_event(True)  # type: ignore[misc]
        assert t3 - t2 >= interval * 0.9 and ev.reason == "2 good probes in a row"
        assert bad.address in eligible(ch)
        assert bad.health_calls >= 5


def test_unimplemented_health_service_stays_in_use(
        fleet_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lbclient.health")
    fleet = fleet_factory(2)
    plain = fleet.add(health=False)
    for mode in ("watch", "poll"):
        cfg = {"loadBalancingConfig": RR,
               "healthCheckConfig": {"mode": mode, "interval": "0.05s"}}
        with lbclient.insecure_channel(fleet.target, service_config=cfg) as ch:
            wait_until(lambda ch=ch: eligible(ch) == set(fleet.addresses), 10,
                       message=f"{mode}: all eligible")
            stub = echo_pb2_grpc.EchoStub(ch)
            seen = {stub.Unary(REQ, timeout=5).address for _ in range(30)}
            assert plain.address in seen
            info = next(e for e in ch.endpoints() if e.address == plain.address)
            assert info.health == "disabled" and info.healthy is True
            if mode == "poll":     # UNIMPLEMENTED stops polling for this connection
                n = plain.health_calls
                time.sleep(0.3)
                assert plain.health_calls == n
    # said once per channel (two channels here), at INFO: not a warning
    said = [r for r in caplog.records if "does not implement grpc.health.v1" in r.getMessage()]
    assert [(r.levelno, plain.address in r.getMessage()) for r in said] == [
        (logging.INFO, True)] * 2


class _SlowHealth(health_pb2_grpc.HealthServicer):
    """Check answers SERVING after ``delay`` seconds, or when ``release`` is set."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.release = threading.Event()
        self.in_check = 0
        self.lock = threading.Lock()

    def Check(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.in_check += 1
        try:
            self.release.wait(self.delay)
        finally:
            with self.lock:
                self.in_check -= 1
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class _Echo(echo_pb2_grpc.EchoServicer):
    def __init__(self, health: _SlowHealth) -> None:
        self.health = health
        self.during_probe = 0

    def Unary(self, request: Any, context: Any) -> Any:
        with self.health.lock:
            if self.health.in_check:
                self.during_probe += 1
        return echo_pb2.EchoReply(message=request.message)


@pytest.fixture
def slow_health_server() -> Iterator[tuple[str, _SlowHealth, _Echo]]:
    servicer = _SlowHealth()
    echo = _Echo(servicer)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    echo_pb2_grpc.add_EchoServicer_to_server(echo, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer, echo
    finally:
        servicer.release.set()
        server.stop(None).wait(5)


def test_a_probe_that_times_out_counts_as_a_failure(
        slow_health_server: tuple[str, _SlowHealth, _Echo]) -> None:
    address, servicer, _ = slow_health_server
    cfg = {"loadBalancingConfig": RR, "healthCheckConfig": {
        "mode": "poll", "interval": "0.05s", "timeout": "0.2s", "unhealthyThreshold": 2}}
    with lbclient.insecure_channel(f"ipv4:{address}", service_config=cfg) as ch:
        wait_until(lambda: ch.endpoints()[0].health == "healthy", 10, message="healthy")
        servicer.delay = 2.0
        wait_until(lambda: ch.endpoints()[0].health == "unhealthy", 10, message="unhealthy")
        assert ch.endpoints()[0].health_reason == (
            "2 failed probes in a row: probe timed out after 0.2s")


def test_probing_stops_when_the_endpoint_is_removed_or_the_channel_closes(
        fleet: Fleet) -> None:
    before = len(health_threads())
    cfg = {"loadBalancingConfig": RR, "healthCheckConfig": {}}
    ch = lbclient.insecure_channel(fleet.target, service_config=cfg)
    try:
        wait_until(lambda: eligible(ch) == set(fleet.addresses), 10, message="3 healthy")
        assert len(health_threads()) == before + 3
        ch.on_resolved(ResolverState(tuple(Endpoint(a) for a in fleet.addresses[1:])))
        wait_until(lambda: len(health_threads()) == before + 2, 10, message="one stopped")
    finally:
        ch.close()
    wait_until(lambda: len(health_threads()) == before, 10, message="all stopped")
    poll = {"loadBalancingConfig": RR, "healthCheckConfig": {"mode": "poll",
                                                              "interval": "0.05s"}}
    with lbclient.insecure_channel(fleet.target, service_config=poll) as ch:
        wait_until(lambda: fleet[0].health_calls >= 4, 10, message="polling")
    n = fleet[0].health_calls
    time.sleep(0.3)
    assert fleet[0].health_calls <= n + 1       # at most a probe already on the wire


def test_probing_never_blocks_calls(
        slow_health_server: tuple[str, _SlowHealth, _Echo]) -> None:
    address, servicer, echo = slow_health_server
    cfg = {"loadBalancingConfig": RR, "healthCheckConfig": {
        "mode": "poll", "interval": "0.01s", "timeout": "30s"}}
    with lbclient.insecure_channel(f"ipv4:{address}", service_config=cfg) as ch:
        wait_until(lambda: ch.endpoints()[0].health == "healthy", 10, message="healthy")
        servicer.delay = 30.0                  # the next probe hangs on the server
        wait_until(lambda: servicer.in_check > 0, 10, message="a probe in flight")
        stub = echo_pb2_grpc.EchoStub(ch)
        for _ in range(20):
            stub.Unary(REQ, timeout=5)
        assert echo.during_probe == 20         # every call went through mid-probe
        assert ch.endpoints()[0].eligible


def test_backend_stop_and_restart_with_health_checking(fleet: Fleet) -> None:
    cfg = {"loadBalancingConfig": RR, "healthCheckConfig": {}}
    with lbclient.insecure_channel(fleet.target, service_config=cfg) as ch:
        wait_until(lambda: eligible(ch) == set(fleet.addresses), 10, message="healthy")
        fleet[1].stop()
        wait_until(lambda: fleet.addresses[1] not in eligible(ch), 10, message="gone")
        stub = echo_pb2_grpc.EchoStub(ch)
        assert {stub.Unary(REQ, timeout=5).address for _ in range(20)} == {
            fleet.addresses[0], fleet.addresses[2]}
        fleet[1].start()
        wait_until(lambda: fleet.addresses[1] in eligible(ch), 20, message="back")
        assert isinstance(fleet[1], Backend)


class _FlakyWatch(health_pb2_grpc.HealthServicer):
    """Watch fails with UNAVAILABLE; with ``message_first`` it sends SERVING first."""

    def __init__(self, message_first: bool) -> None:
        self.message_first = message_first
        self.attempts: list[float] = []

    def Watch(self, request: Any, context: Any) -> Iterator[Any]:
        self.attempts.append(time.monotonic())
        if self.message_first:
            yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        context.abort(grpc.StatusCode.UNAVAILABLE, "health service restarting")


@pytest.mark.parametrize("message_first", [False, True])
def test_broken_watch_streams_back_off_unless_a_message_arrived(message_first: bool) -> None:
    servicer = _FlakyWatch(message_first)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    cfg = {"loadBalancingConfig": RR, "healthCheckConfig": {},
           "lbclient": {"panicThreshold": 0}}       # one endpoint: no panic mode
    try:
        with lbclient.insecure_channel(f"ipv4:127.0.0.1:{port}", service_config=cfg) as ch:
            wait_until(lambda: len(servicer.attempts) >= 1, 10, message="a Watch")
            if message_first:
                # A17: a message resets the backoff, so the next attempt is immediate.
                wait_until(lambda: len(servicer.attempts) >= 4, 10, message="quick retries")
            else:
                time.sleep(1.5)
                # backoff 1 s (+-20%), then 1.6 s: at most 2 attempts in 1.5 s
                assert 1 <= len(servicer.attempts) <= 2, servicer.attempts
                info = ch.endpoints()[0]
                assert info.health == "unhealthy" and not info.eligible
                assert info.health_reason == "health stream failed: UNAVAILABLE"
    finally:
        server.stop(None).wait(5)
