"""Subsetting on real channels against real gRPC backends on 127.0.0.1: only the subset
gets a connection, a health-check stream and calls; every other backend sees nothing
(its call and health-call counters stay at 0), and ``channel.endpoints()`` lists the
subset alone. Two deterministic clients split the fleet between them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import lbclient
import lbclient.aio
from lbclient.policies.subsetting import with_client_index
from lbclient.policies.subsetting_deterministic import deterministic_subset
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

RR = [{"round_robin": {}}]
HEALTH = {"serviceName": ""}
REQ = echo_pb2.EchoRequest(message="x")


def wait_healthy(ch: lbclient.LoadBalancedChannel, n: int, timeout: float = 10.0) -> None:
    """Wait until ``n`` endpoints are READY and healthy: woken by the channel's endpoint
    events (health_changed), bounded by ``timeout``."""
    woken = threading.Event()

    def on_event(event: Any) -> None:
        woken.set()

    ch.add_event_listener(on_event)
    try:
        deadline = time.monotonic() + timeout
        while True:
            ok = [e for e in ch.endpoints() if e.connectivity == "READY" and e.healthy]
            if len(ok) >= n:
                return
            left = deadline - time.monotonic()
            assert left > 0, f"{n} healthy endpoints within {timeout}s: {ch.endpoints()}"
            woken.wait(min(left, 0.5))
            woken.clear()
    finally:
        ch.remove_event_listener(on_event)


def check_only_subset_used(fleet: Fleet, subset: set[str], calls_seen: set[str]) -> None:
    by_address = {b.address: b for b in fleet}
    assert calls_seen == subset
    for address, b in by_address.items():
        if address in subset:
            assert b.calls > 0 and b.health_calls >= 1, address
        else:
            assert (b.calls, b.health_calls) == (0, 0), address


def run_sync(fleet: Fleet, config: dict[str, Any], subset_size: int) -> set[str]:
    with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
        wait_healthy(ch, subset_size)
        stub = echo_pb2_grpc.EchoStub(ch)
        seen = {stub.Unary(REQ, timeout=10).address for _ in range(8 * subset_size)}
        subset = {e.address for e in ch.endpoints()}
        assert len(subset) == subset_size
        assert subset <= set(fleet.addresses)
        check_only_subset_used(fleet, subset, seen)
        return subset


@pytest.mark.timeout(60)
def test_random_subsetting_connects_only_to_its_subset(
        fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(8)
    config = {"loadBalancingConfig": [
        {"random_subsetting": {"subsetSize": 3, "childPolicy": RR}}],
        "healthCheckConfig": HEALTH}
    run_sync(fleet, config, 3)


@pytest.mark.timeout(60)
def test_deterministic_subsetting_connects_to_the_computed_subset(
        fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(8)
    base = {"loadBalancingConfig": [
        {"outlier_detection": {"consecutiveFailures": 5, "childPolicy": [
            {"deterministic_subsetting": {"subsetSize": 4, "childPolicy": RR}}]}}],
        "healthCheckConfig": HEALTH}
    # client 0 of 2: exactly the pure function's answer
    first = run_sync(fleet, with_client_index(base, 0, 2), 4)
    assert first == set(deterministic_subset(fleet.addresses, 0, 4, 2))
    for b in fleet:
        b.reset_counters()
    # client 1 of 2 takes the other half: together they cover the fleet once
    second = run_sync(fleet, with_client_index(base, 1, 2), 4)
    assert first.isdisjoint(second) and first | second == set(fleet.addresses)


@pytest.mark.timeout(60)
def test_random_subsetting_on_an_aio_channel(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory(6)
    config = {"loadBalancingConfig": [
        {"random_subsetting_experimental": {"subsetSize": 2, "childPolicy": RR}}],
        "healthCheckConfig": HEALTH}

    async def main() -> None:
        async with lbclient.aio.insecure_channel(fleet.target, service_config=config) as ch:
            woken = asyncio.Event()
            ch.add_event_listener(lambda event: woken.set())
            deadline = time.monotonic() + 10
            while sum(1 for e in ch.endpoints() if e.healthy) < 2:
                left = deadline - time.monotonic()
                assert left > 0, ch.endpoints()
                woken.clear()
                try:
                    await asyncio.wait_for(woken.wait(), min(left, 0.5))
                except TimeoutError:
                    pass
            stub = echo_pb2_grpc.EchoStub(ch)
            seen = {(await stub.Unary(REQ, timeout=10)).address for _ in range(16)}
            subset = {e.address for e in ch.endpoints()}
            assert len(subset) == 2
            check_only_subset_used(fleet, subset, seen)

    asyncio.run(asyncio.wait_for(main(), 30))
