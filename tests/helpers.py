"""Small bounded-wait helpers and fakes shared by the tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

import lbclient
from lbclient import Connectivity, Endpoint
from lbclient.health.tracker import HealthReport


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0,
               interval: float = 0.01, message: str = "condition") -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def wait_ready(channel: lbclient.LoadBalancedChannel, n: int, timeout: float = 10.0) -> None:
    """Wait until ``n`` endpoints of ``channel`` are READY."""
    wait_until(lambda: sum(e.connectivity == "READY" for e in channel.endpoints()) >= n,
               timeout, message=f"{n} READY endpoints")


def code_of(exc: BaseException) -> grpc.StatusCode | None:
    return exc.code() if isinstance(exc, grpc.Call) else None


def set_in_flight(stats: lbclient.EndpointStats, n: int) -> None:
    """Make ``stats.in_flight`` equal ``n`` (to build picker states in unit tests)."""
    while stats.in_flight < n:
        stats.begin()
    while stats.in_flight > n:
        stats.discard()


class ConnectionStub:
    """The parts of lbclient's ``Connection`` protocol a fake connection rarely needs."""

    closed = False
    address = ""

    def poll(self) -> bool:
        return False

    def connection_error(self) -> str | None:
        return None


class FactoryStub:
    """The parts of lbclient's ``SubchannelFactory`` protocol a fake factory rarely needs."""

    def set_batcher(self, batch: object) -> None:
        pass


# ------------------------------------------------------------------ balancer fakes
# A Balancer driven by hand: fake connections (the test calls ``on_state``), health
# checkers the test answers for, no timers, a manual clock.
class Handle(ConnectionStub):
    def __init__(self, address: str, on_state: Callable[[Connectivity], None]) -> None:
        self.address, self.on_state = address, on_state

    def request_connection(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class Factory(FactoryStub):
    def __init__(self) -> None:
        self.handles: dict[str, Handle] = {}

    def create(self, endpoint: Endpoint, on_state: Callable[[Connectivity], None]) -> Handle:
        self.handles[endpoint.address] = Handle(endpoint.address, on_state)
        return self.handles[endpoint.address]


class Checker:
    def set_probing(self, on: bool) -> None:
        pass

    def stop(self) -> None:
        pass

    def join(self, timeout: float) -> None:
        pass


class HealthFactory:
    """Keeps the latest ``report`` function per address: the test answers for it."""

    def __init__(self) -> None:
        self.report: dict[str, Callable[[HealthReport], None]] = {}

    def start(self, handle: Handle, config: Any, report: Callable[[HealthReport], None]) -> Checker:
        self.report[handle.address] = report
        return Checker()


class NoTimers:
    class Timer:
        def cancel(self) -> None:
            pass

    def call_later(self, delay: float, fn: Callable[[], None]) -> Any:
        return self.Timer()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t
