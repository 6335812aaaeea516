"""retryThrottling (gRFC A6) on a real channel: when most attempts fail, retries stop."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from helpers import wait_ready
from retry_servers import retry_config

import lbclient
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc


@pytest.fixture
def failing(fleet: Fleet) -> Fleet:
    for b in fleet:
        b.set_error_rate(1.0)
    return fleet


def _attempts_per_call(stub: Any, fleet: Fleet, calls: int) -> list[int]:
    out = []
    for _ in range(calls):
        before = sum(fleet.calls().values())
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(echo_pb2.EchoRequest(message="t"), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        out.append(sum(fleet.calls().values()) - before)
    return out


@pytest.fixture
def throttled(failing: Fleet) -> Iterator[tuple[Any, lbclient.LoadBalancedChannel]]:
    config = retry_config(attempts=3, throttling={"maxTokens": 10, "tokenRatio": 0.1})
    with lbclient.insecure_channel(failing.target, service_config=config) as ch:
        wait_ready(ch, 3)
        yield echo_pb2_grpc.EchoStub(ch), ch


def test_throttling_stops_retries_when_most_attempts_fail(
        failing: Fleet, throttled: tuple[Any, lbclient.LoadBalancedChannel]) -> None:
    stub, ch = throttled
    attempts = _attempts_per_call(stub, failing, 12)
    # 10 tokens: 10->9->8->7 (3 attempts, maxAttempts), 7->6->5 (5 is not above 10/2),
    # then every failure leaves the count at or below 5: the first attempt only.
    assert attempts == [3, 2] + [1] * 10
    throttle = ch._ctx.throttle
    assert throttle is not None and throttle.tokens == 0


def test_successes_refill_the_bucket_and_retries_come_back(
        failing: Fleet, throttled: tuple[Any, lbclient.LoadBalancedChannel]) -> None:
    stub, ch = throttled
    _attempts_per_call(stub, failing, 8)                     # drain: 0 tokens
    for b in failing:
        b.set_error_rate(0.0)
    for _ in range(70):                                      # 70 * 0.1 = 7 tokens
        stub.Unary(echo_pb2.EchoRequest(message="ok"), timeout=5)
    for b in failing:
        b.set_error_rate(1.0)
    assert _attempts_per_call(stub, failing, 1) == [2]      # 7->6 (>5): one retry, 6->5


def test_without_throttling_every_call_uses_every_attempt(failing: Fleet) -> None:
    with lbclient.insecure_channel(failing.target,
                                   service_config=retry_config(attempts=3)) as ch:
        wait_ready(ch, 3)
        assert _attempts_per_call(echo_pb2_grpc.EchoStub(ch), failing, 6) == [3] * 6


def test_non_retryable_failures_cost_no_tokens(
        throttled: tuple[Any, lbclient.LoadBalancedChannel], failing: Fleet) -> None:
    stub, ch = throttled
    for b in failing:
        b.set_error_rate(1.0, grpc.StatusCode.PERMISSION_DENIED)
    for _ in range(8):
        with pytest.raises(grpc.RpcError):
            stub.Unary(echo_pb2.EchoRequest(message="t"), timeout=5)
    throttle = ch._ctx.throttle
    assert throttle is not None and throttle.tokens == 10
