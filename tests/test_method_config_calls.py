"""Per-method timeout and waitForReady from methodConfig, on real calls: the most
specific entry wins, the caller's shorter deadline wins, the caller's waitForReady wins."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from helpers import wait_ready
from retry_servers import SERVICE, ScriptedServer

import lbclient
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc


def _req(**kw: Any) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(message="m", **kw)


@pytest.fixture
def stub_for() -> Iterator[Any]:
    channels: list[lbclient.LoadBalancedChannel] = []

    def make(target: str, config: Any, ready: int = 1) -> Any:
        ch = lbclient.insecure_channel(target, service_config=config)
        channels.append(ch)
        if ready:
            wait_ready(ch, ready)
        return echo_pb2_grpc.EchoStub(ch)

    yield make
    for ch in channels:
        ch.close()


LAYERED = {"methodConfig": [
    {"name": [{}], "timeout": "30s"},
    {"name": [{"service": SERVICE}], "timeout": "20s"},
    {"name": [{"service": SERVICE, "method": "Unary"}], "timeout": "10s"},
]}


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as s:     # answers every call; records each call's deadline
        yield s


def _deadline_seen(server: ScriptedServer) -> float:
    """The last call's deadline as the server saw it (grpc rounds it up a little)."""
    left = server.time_remaining[-1]
    assert left is not None and left < 1e6, "the call had no deadline"
    return left - 0.5


def test_the_most_specific_timeout_becomes_the_deadline(server: ScriptedServer,
                                                        stub_for: Any) -> None:
    stub = stub_for(f"ipv4:{server.address}", LAYERED)
    stub.Unary(_req())
    assert 7.5 < _deadline_seen(server) <= 10            # exact entry
    stub.ClientStream(iter([_req()]))
    assert 17.5 < _deadline_seen(server) <= 20           # service-wide entry
    assert len(list(stub.ServerStream(_req(count=1)))) == 1
    assert 17.5 < _deadline_seen(server) <= 20


def test_default_entry_applies_when_nothing_closer_matches(server: ScriptedServer,
                                                           stub_for: Any) -> None:
    stub = stub_for(f"ipv4:{server.address}",
                    {"methodConfig": [{"name": [{}], "timeout": "7s"},
                                      {"name": [{"service": "other.Svc"}], "timeout": "1s"}]})
    stub.Unary(_req())
    assert 4.5 < _deadline_seen(server) <= 7


def test_no_matching_entry_means_no_deadline(server: ScriptedServer, stub_for: Any) -> None:
    stub = stub_for(f"ipv4:{server.address}",
                    {"methodConfig": [{"name": [{"service": "other.Svc"}], "timeout": "1s"}]})
    stub.Unary(_req())
    left = server.time_remaining[-1]
    assert left is None or left > 1e6      # grpc reports "no deadline" as a huge number


def test_callers_shorter_deadline_wins_and_longer_one_does_not(server: ScriptedServer,
                                                              stub_for: Any) -> None:
    stub = stub_for(f"ipv4:{server.address}", LAYERED)
    stub.Unary(_req(), timeout=2)
    assert _deadline_seen(server) <= 2
    stub.Unary(_req(), timeout=100)
    assert 7.5 < _deadline_seen(server) <= 10
    stub.Unary.future(_req(), timeout=3).result()
    assert _deadline_seen(server) <= 3


def test_method_timeout_ends_a_slow_call(fleet: Fleet, stub_for: Any) -> None:
    config = {"methodConfig": [{"name": [{"service": SERVICE, "method": "Unary"}],
                                "timeout": "0.2s"}]}
    stub = stub_for(fleet.target, config)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(_req(sleep_ms=2000))
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.5
    reply = stub.ServerStream(_req(count=1, sleep_ms=300))     # other methods: no timeout
    assert [r.index for r in reply] == [0]


def test_wait_for_ready_from_method_config(fleet_factory: Any, stub_for: Any) -> None:
    fleet = fleet_factory(1)
    fleet[0].stop()
    config = {"methodConfig": [{"name": [{"service": SERVICE}], "waitForReady": True,
                                "timeout": "0.3s"}]}
    stub = stub_for(fleet.target, config, ready=0)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(_req())
    waited = time.monotonic() - started
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED   # it waited for a backend
    assert 0.25 < waited < 1.5
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(_req(), wait_for_ready=False)                    # the caller's choice wins
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 0.25


def test_wait_for_ready_rides_out_a_cold_start(fleet: Fleet, stub_for: Any) -> None:
    # Right after creation no endpoint is READY yet: waitForReady waits for one.
    config = {"methodConfig": [{"name": [{}], "waitForReady": True, "timeout": "10s"}]}
    for _ in range(3):
        stub = stub_for(fleet.target, config, ready=0)
        assert stub.Unary(_req()).message == "m"
