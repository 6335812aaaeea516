"""Regression tests for bugs found by the reliability work (chaos, fuzzing, TLS).

* With ``healthCheckConfig`` on, the first calls of a new channel failed UNAVAILABLE
  "no ready endpoints: N waiting for health" instead of waiting for the first health
  answer (gRFC A17 reports such a subchannel CONNECTING, and gRPC queues picks then).
"""

from __future__ import annotations

import time

import grpc
import pytest
from helpers import code_of

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
