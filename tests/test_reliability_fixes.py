"""Regression tests for bugs found by the reliability work (chaos, fuzzing, TLS).

* With ``healthCheckConfig`` on, the first calls of a new channel failed UNAVAILABLE
  "no ready endpoints: N waiting for health" instead of waiting for the first health
  answer (gRFC A17 reports such a subchannel CONNECTING, and gRPC queues picks then).
* A call whose endpoint was removed between its pick and its start could start on the
  connection the balancer was closing, and end CANCELLED "Channel closed!" (found by
  the chaos test): it now picks again.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from helpers import code_of, wait_ready

import lbclient
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc
from lbclient.testing.pytest_plugin import FleetFactory

REQ = echo_pb2.EchoRequest(message="x")
HEALTH = {"healthCheckConfig": {"serviceName": ""}}


def test_first_call_waits_for_the_first_health_answer(fleet: Fleet) -> None:
    for _ in range(5):   # each new channel: every endpoint is "pending" at first
        with lbclient.insecure_channel(fleet.target, service_config=HEALTH) as ch:
            reply = echo_pb2_grpc.EchoStub(ch).Unary(REQ, timeout=5)
            assert reply.backend
            assert {e.health for e in ch.endpoints()} <= {"healthy", "pending"}


def test_first_call_fails_fast_when_every_endpoint_answers_not_serving(
        fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(2)
    for b in fleet:
        b.set_health(False)
    config = {**HEALTH, "lbclient": {"panicThreshold": 0}}   # no panic: unhealthy is out
    with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            echo_pb2_grpc.EchoStub(ch).Unary(REQ, timeout=10)
        # waits for the answers (not the 10 s deadline), then fails with the reason
        assert time.monotonic() - t0 < 5
        assert code_of(info.value) is grpc.StatusCode.UNAVAILABLE
        assert "unhealthy" in (info.value.details() or "")


class _RemovingPicker:
    """Wraps the channel's picker: right after a pick, before the call starts, the
    resolver removes the picked endpoint (the race the chaos test met)."""

    def __init__(self, inner: Any, remove: Any) -> None:
        self.inner, self.remove = inner, remove

    def pick(self, info: lbclient.PickInfo) -> lbclient.PickResult:
        result = self.inner.pick(info)
        self.remove(result.candidate.address)
        return result


def test_a_call_whose_endpoint_is_removed_between_pick_and_start_goes_elsewhere(
        fleet_factory: FleetFactory) -> None:
    """Before the fix the call started on the removed endpoint's connection, which the
    balancer was closing (nothing was in flight there), and ended CANCELLED
    "Channel closed!"."""
    fleet = fleet_factory(2, latency=0.3)
    with lbclient.insecure_channel(fleet.target) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        stub.Unary(REQ, timeout=5, wait_for_ready=True)
        wait_ready(ch, 2)

        def remove(address: str) -> None:
            keep = tuple(lbclient.Endpoint(a) for a in fleet.addresses if a != address)
            ch.on_resolved(lbclient.ResolverState(keep, authoritative=True))

        removed = fleet.addresses[0]
        for _ in range(10):   # until the wrapped picker chose the first backend
            fleet.reset_counters()
            ch._balancer.picker = _RemovingPicker(ch._balancer.picker, remove)
            reply = stub.Unary(REQ, timeout=5)
            if ch._balancer.record(removed) is None:
                break
            ch.on_resolved(lbclient.ResolverState(tuple(
                lbclient.Endpoint(a) for a in fleet.addresses), authoritative=True))
        assert ch._balancer.record(removed) is None
        assert reply.address == fleet.addresses[1]
        assert fleet.by_address(removed).calls == 0
