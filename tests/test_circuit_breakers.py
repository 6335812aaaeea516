"""Circuit breakers: a channel-wide ``maxRequests`` and a per-endpoint
``maxConcurrentRequests`` in the ``"lbclient"`` block (issue "Resilience", deliverable 3)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from helpers import set_in_flight, wait_ready, wait_until

import lbclient
import lbclient.aio
from lbclient import Candidate, Endpoint, EndpointStats, PickError, PickInfo
from lbclient.balancer.breaker import BreakerPicker, BreakerState
from lbclient.health.options import parse_balancing_options
from lbclient.metrics import instrument
from lbclient.policies.round_robin import RoundRobinPicker
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="cb")


def _candidates(n: int) -> list[Candidate]:
    return [Candidate(Endpoint(f"10.0.0.{i}:80"), 1, EndpointStats(time.monotonic), None)
            for i in range(1, n + 1)]


# ------------------------------------------------------------------ config and picker units
@pytest.mark.parametrize(("raw", "path"), [
    ({"maxRequests": 0}, "lbclient.maxRequests"),
    ({"maxConcurrentRequests": -1}, "lbclient.maxConcurrentRequests"),
    ({"maxRequests": 1.5}, "lbclient.maxRequests"),
    ({"maxConcurentRequests": 3}, "lbclient.maxConcurentRequests"),
])
def test_bad_limits_name_their_json_path(raw: dict[str, Any], path: str) -> None:
    with pytest.raises(lbclient.ServiceConfigError, match=path.replace(".", r"\.")):
        parse_balancing_options(raw)


def test_limits_default_to_none() -> None:
    opts = parse_balancing_options({"maxRequests": 100, "maxConcurrentRequests": 7})
    assert (opts.max_requests, opts.max_concurrent_requests) == (100, 7)
    assert parse_balancing_options(None).max_requests is None


def test_channel_limit_refuses_at_once_with_the_count() -> None:
    state = BreakerState()
    picker = BreakerPicker(RoundRobinPicker(_candidates(3), 0), state, 2, None, 3)
    state.in_flight.extend([None, None])
    with pytest.raises(PickError, match=r"circuit breaker: 2 requests in flight") as info:
        picker.pick(PickInfo("/s/m"))
    assert info.value.fail_fast and state.rejected == 1
    state.in_flight.pop()
    assert picker.pick(PickInfo("/s/m")).candidate.address == "10.0.0.1:80"


def test_a_full_endpoint_is_skipped_and_counted() -> None:
    cands = _candidates(3)
    set_in_flight(cands[0].stats, 1)
    picker = BreakerPicker(RoundRobinPicker(cands, 0), BreakerState(), None, 1, 3)
    got = [picker.pick(PickInfo("/s/m")).candidate.address for _ in range(6)]
    assert "10.0.0.1:80" not in got and set(got) == {"10.0.0.2:80", "10.0.0.3:80"}
    assert repr(cands[0].stats.overflows) != "count(0)"
    for c in cands[1:]:
        set_in_flight(c.stats, 1)
    with pytest.raises(PickError, match="every endpoint has maxConcurrentRequests 1"):
        picker.pick(PickInfo("/s/m"))


# ------------------------------------------------------------------ real channels
def test_max_requests_fails_calls_over_the_limit_at_once() -> None:
    with Fleet(3) as fleet:
        for b in fleet:
            b.set_latency(0.5)
        config = {"lbclient": {"maxRequests": 4}}
        with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
            wait_ready(ch, 3)
            stub = echo_pb2_grpc.EchoStub(ch)
            slow = [stub.Unary.future(REQ, timeout=5) for _ in range(4)]
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                stub.Unary(REQ, timeout=5, wait_for_ready=True)   # waitForReady too
            assert time.monotonic() - t0 < 0.2                     # at once
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "circuit breaker: 4 requests in flight" in info.value.details()
            assert ch.circuit_breaker_rejections == 1
            for f in slow:
                assert f.result(timeout=5).message
            assert stub.Unary(REQ, timeout=5).message             # room again
            assert sum(e.in_flight for e in ch.endpoints()) == 0


def test_a_full_endpoint_is_skipped_by_every_policy_while_others_have_room() -> None:
    with Fleet(3) as fleet:
        config = {"loadBalancingConfig": [{"ring_hash": {"requestHashHeader": "x-key"}}],
                  "lbclient": {"maxConcurrentRequests": 1}}
        with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
            wait_ready(ch, 3)
            stub = echo_pb2_grpc.EchoStub(ch)
            md = (("x-key", "the-same-key"),)
            home = stub.Unary(REQ, timeout=5, metadata=md).address
            slow = echo_pb2.EchoRequest(message="slow", sleep_ms=800)
            busy = stub.Unary.future(slow, timeout=5, metadata=md)     # fills home
            wait_until(lambda: any(e.in_flight == 1 for e in ch.endpoints()), 5)
            others = {stub.Unary(REQ, timeout=5, metadata=md).address for _ in range(5)}
            assert home not in others and len(others) >= 1
            info = next(e for e in ch.endpoints() if e.address == home)
            assert info.overflows >= 5
            assert busy.result(timeout=5).address == home
            assert stub.Unary(REQ, timeout=5, metadata=md).address == home   # back home


def test_breakers_are_counted_in_metrics() -> None:
    with Fleet(2) as fleet:
        for b in fleet:
            b.set_latency(0.3)
        config = {"lbclient": {"maxRequests": 1}}
        with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
            wait_ready(ch, 2)
            m = instrument(ch)
            stub = echo_pb2_grpc.EchoStub(ch)
            f = stub.Unary.future(REQ, timeout=5)
            with pytest.raises(grpc.RpcError):
                stub.Unary(REQ, timeout=5)
            f.result(timeout=5)
            assert m.snapshot().breaker_rejections == 1
            m.attachment.detach()


def test_max_requests_on_an_asyncio_channel() -> None:
    async def body(target: str) -> None:
        config = {"lbclient": {"maxRequests": 2}}
        async with lbclient.aio.insecure_channel(target, service_config=config) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            await ch.channel_ready()
            slow = [stub.Unary(REQ, timeout=5) for _ in range(2)]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Unary(REQ, timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "circuit breaker" in (info.value.details() or "")
            for call in slow:
                assert (await call).message
            assert ch.circuit_breaker_rejections == 1

    with Fleet(2) as fleet:
        for b in fleet:
            b.set_latency(0.3)
        asyncio.run(asyncio.wait_for(body(fleet.target), 20))
