"""Hedging (gRFC A6) of unary calls on real backends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from helpers import wait_ready, wait_until
from retry_servers import ScriptedServer, hedging_config, trailer

import lbclient
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
SLOW = 1.0


def _req(msg: str = "h", **kw: Any) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(message=msg, **kw)


@pytest.fixture
def open_channel() -> Iterator[Any]:
    channels: list[lbclient.LoadBalancedChannel] = []

    def make(target: str, config: Any, ready: int) -> Any:
        ch = lbclient.insecure_channel(target, service_config=config)
        channels.append(ch)
        wait_ready(ch, ready)
        return echo_pb2_grpc.EchoStub(ch)

    yield make
    for ch in channels:
        ch.close()


def _latencies(stub: Any, n: int) -> list[float]:
    out = []
    for i in range(n):
        started = time.monotonic()
        assert stub.Unary(_req(str(i)), timeout=10).message == str(i)
        out.append(time.monotonic() - started)
    return out


def test_hedging_cuts_the_tail_of_one_slow_backend(fleet: Fleet, open_channel: Any) -> None:
    fleet[0].set_latency(SLOW)
    plain = open_channel(fleet.target, {}, 3)
    assert max(_latencies(plain, 3)) >= SLOW * 0.9      # round robin meets the slow one
    fleet.reset_counters()
    hedged = open_channel(fleet.target, hedging_config(attempts=3, delay="0.05s"), 3)
    worst = max(_latencies(hedged, 9))
    assert worst < SLOW * 0.6, worst
    assert fleet[0].calls >= 2                            # the slow one was asked, and lost


def test_losing_attempts_are_cancelled(fleet: Fleet, open_channel: Any) -> None:
    fleet[0].set_latency(5.0)
    stub = open_channel(fleet.target, hedging_config(attempts=2, delay="0.05s"), 3)
    for _ in range(3):
        stub.Unary(_req(), timeout=10)
    assert fleet[0].calls >= 1
    wait_until(lambda: fleet[0].in_flight == 0, 2.0, message="the slow attempt cancelled")


def test_hedged_calls_report_their_attempts(fleet: Fleet, open_channel: Any) -> None:
    fleet[0].set_latency(SLOW)
    stub = open_channel(fleet.target, hedging_config(attempts=3, delay="0.05s"), 3)
    reports = set()
    for _ in range(6):
        _, call = stub.Unary.with_call(_req(), timeout=10)
        reports.add(trailer(call))
    assert "1" in reports                    # a call that needed a hedge says so
    assert None in reports                   # one answered by its first attempt doesn't


def test_fatal_code_fails_at_once_without_hedges(fleet: Fleet, open_channel: Any) -> None:
    stub = open_channel(fleet.target, hedging_config(attempts=3, delay="0.5s"), 3)
    fleet.reset_counters()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(_req(fail_code=grpc.StatusCode.INVALID_ARGUMENT.value[0]), timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert time.monotonic() - started < 0.5
    time.sleep(0.6)                          # past the hedging delay: nothing more is sent
    assert sum(fleet.calls().values()) == 1


def test_non_fatal_code_sends_the_next_hedge_at_once(fleet: Fleet, open_channel: Any) -> None:
    for b in fleet:
        b.set_error_rate(1.0)
    stub = open_channel(fleet.target, hedging_config(attempts=3, delay="5s"), 3)
    fleet.reset_counters()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(_req(), timeout=10)
    assert time.monotonic() - started < 2.5  # never waited for the 5 s delay
    assert info.value.code() is UNAVAILABLE
    assert sorted(fleet.calls().values()) == [1, 1, 1]   # three distinct endpoints
    assert trailer(info.value) == "2"


def test_non_fatal_failure_then_success_elsewhere(fleet: Fleet, open_channel: Any) -> None:
    fleet[0].set_error_rate(1.0)
    stub = open_channel(fleet.target, hedging_config(attempts=3, delay="5s"), 3)
    started = time.monotonic()
    for _ in range(9):
        before = fleet[0].calls
        assert stub.Unary(_req(), timeout=10).address != fleet[0].address
        assert fleet[0].calls - before <= 1
    assert time.monotonic() - started < 4
    assert fleet[0].calls >= 2


def test_pushback_no_stops_hedging() -> None:
    with ScriptedServer(code=UNAVAILABLE, pushback="-1") as server, lbclient.insecure_channel(
            f"ipv4:{server.address}",
            service_config=hedging_config(attempts=4, delay="0.01s")) as ch:
        wait_ready(ch, 1)
        with pytest.raises(grpc.RpcError) as info:
            echo_pb2_grpc.EchoStub(ch).Unary(_req(), timeout=5)
        assert info.value.code() is UNAVAILABLE
        time.sleep(0.1)
        assert server.calls == 1


def test_pushback_delays_the_next_hedge() -> None:
    with ScriptedServer(code=UNAVAILABLE, pushback="300") as server, lbclient.insecure_channel(
            f"ipv4:{server.address}",
            service_config=hedging_config(attempts=2, delay="5s")) as ch:
        wait_ready(ch, 1)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError):
            echo_pb2_grpc.EchoStub(ch).Unary(_req(), timeout=10)
        # A non-fatal failure sends the next hedge at once, or after exactly the pushback.
        elapsed = time.monotonic() - started
        assert server.calls == 2
        assert 0.29 <= elapsed < 4


def test_hedged_futures(fleet: Fleet, open_channel: Any) -> None:
    fleet[0].set_latency(SLOW)
    stub = open_channel(fleet.target, hedging_config(attempts=3, delay="0.05s"), 3)
    started = time.monotonic()
    futures = [stub.Unary.future(_req(str(i)), timeout=10) for i in range(6)]
    assert [f.result(timeout=10).message for f in futures] == [str(i) for i in range(6)]
    assert time.monotonic() - started < SLOW * 0.9
    assert all(f.code() is grpc.StatusCode.OK and not f.is_active() for f in futures)
    cancelled = stub.Unary.future(_req(sleep_ms=3000), timeout=10)
    assert cancelled.cancel() and cancelled.cancelled()
    with pytest.raises(grpc.FutureCancelledError):
        cancelled.result()
    wait_until(lambda: all(b.in_flight == 0 for b in fleet), 2.0)


def test_deadline_bounds_hedged_calls(fleet: Fleet, open_channel: Any) -> None:
    for b in fleet:
        b.hang()
    stub = open_channel(fleet.target, hedging_config(attempts=5, delay="0.05s"), 3)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(_req(), timeout=0.3)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.3 + 0.4
    for b in fleet:
        b.hang(False)


def test_throttling_limits_hedges(fleet: Fleet, open_channel: Any) -> None:
    for b in fleet:
        b.set_error_rate(1.0)
    config = hedging_config(attempts=3, delay="0.01s",
                            throttling={"maxTokens": 4, "tokenRatio": 0.1})
    stub = open_channel(fleet.target, config, 3)
    fleet.reset_counters()
    attempts = []
    for _ in range(5):
        before = sum(fleet.calls().values())
        with pytest.raises(grpc.RpcError):
            stub.Unary(_req(), timeout=5)
        attempts.append(sum(fleet.calls().values()) - before)
    assert attempts[0] >= 2            # 4 tokens: hedges allowed at first
    assert attempts[-2:] == [1, 1]     # at or below maxTokens/2: the first attempt only
