"""Small bounded-wait helpers shared by the tests."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

import lbclient


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
