"""Retry budgets on real channels (fake backends on 127.0.0.1): in a retry storm (every
backend failing, maxAttempts 5) the attempts per call stay within the budget; with one
backend of three killed under load no call fails; a cancelled call gives its retry back
(sync futures and asyncio)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import grpc
import pytest
from crash_proxy import kill_under_load
from helpers import wait_ready, wait_until
from retry_servers import retry_config

import lbclient
import lbclient.aio
from lbclient._core.budget import ConcurrencyRetryBudget, RateRetryBudget
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="b")
ENVOY = {"budgetPercent": 20, "minRetryConcurrency": 3}
FINAGLE = {"ttl": "10s", "minRetriesPerSec": 10, "percentCanRetry": 0.2}


def budget_config(budget: dict[str, Any], **retry: Any) -> dict[str, Any]:
    config = retry_config(**{"attempts": 5, "initial": "0.001s", "maximum": "0.002s",
                             **retry})
    config["lbclient"] = {"retryBudget": budget}
    return config


def test_rate_budget_caps_a_retry_storm(fleet: Fleet) -> None:
    """Reserve 1/s * 10 s = 10 retries, plus 20 % of the calls: 100 failing calls make at
    most 130 attempts (5 each without a budget)."""
    for b in fleet:
        b.set_error_rate(1.0)
    config = budget_config({"ttl": "10s", "minRetriesPerSec": 1, "percentCanRetry": 0.2},
                           throttling={"maxTokens": 1000, "tokenRatio": 1})
    with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
        wait_ready(ch, 3)
        stub = echo_pb2_grpc.EchoStub(ch)
        fleet.reset_counters()
        calls = 100
        for _ in range(calls):
            with pytest.raises(grpc.RpcError) as info:
                stub.Unary(REQ, timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        attempts = sum(fleet.calls().values())
        budget = ch._ctx.throttle
        assert isinstance(budget, RateRetryBudget)    # retryBudget wins over throttling
        assert calls + 28 <= attempts <= calls + 10 + 0.2 * calls
        assert budget.granted == attempts - calls
        assert ch.retries_granted == attempts - calls     # the channel's public counts
        assert ch.retries_refused >= calls - (attempts - calls) / 4


def test_concurrency_budget_caps_retries_in_flight_in_a_storm(fleet: Fleet) -> None:
    """16 callers, every attempt cut by perAttemptRecvTimeout (50 ms) on hung backends.
    Active attempts ~16, so at most max(3, 20 % of 16) = 3 are retries: attempts per
    call <= 1 + 3/13 (5 without a budget). Once the load stops, no retry is held."""
    for b in fleet:
        b.hang(True)
    config = budget_config(ENVOY)
    config["methodConfig"][0]["retryPolicy"]["perAttemptRecvTimeout"] = "0.05s"
    callers, calls = 16, Counter[str]()
    with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
        wait_ready(ch, 3)
        stub = echo_pb2_grpc.EchoStub(ch)
        budget = ch._ctx.throttle
        assert isinstance(budget, ConcurrencyRetryBudget)
        stop = threading.Event()
        lock = threading.Lock()

        def caller() -> None:
            while not stop.is_set():
                try:
                    stub.Unary(REQ, timeout=5)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    calls[code] += 1

        threads = [threading.Thread(target=caller) for _ in range(callers)]
        fleet.reset_counters()
        for t in threads:
            t.start()
        try:
            time.sleep(1.5)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        attempts = sum(fleet.calls().values())
        total = sum(calls.values())
        assert set(calls) == {"DEADLINE_EXCEEDED"}
        assert total >= 100
        assert 1.02 < attempts / total <= 1 + 3 / 13 + 0.1, (attempts, total)
        assert budget.refused > 0
        wait_until(lambda: budget.in_flight == 0, 5, message="every retry given back")
        for b in fleet:
            b.hang(False)


@pytest.mark.parametrize("budget", [ENVOY, FINAGLE], ids=["envoy", "finagle"])
def test_a_killed_backend_costs_no_call_within_a_budget(fleet_factory: Any,
                                                         budget: dict[str, Any]) -> None:
    """As tests/test_retry_kill.py, with a retry budget: the victim's connections are
    reset (a process kill, through a CrashProxy) while 4 threads call; no call fails."""
    fleet: Fleet = fleet_factory(3, latency=0.02)
    run = kill_under_load(fleet, budget_config(budget, initial="0.01s", maximum="0.1s"))
    assert run.errors == []
    assert run.failed_attempts >= 1
    assert run.granted is not None and run.granted >= 1


def test_a_cancelled_future_gives_its_retry_back(fleet: Fleet) -> None:
    for b in fleet:
        b.set_error_rate(1.0)
    config = budget_config({"budgetPercent": 0, "minRetryConcurrency": 1},
                           initial="5s", maximum="5s")
    with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
        wait_ready(ch, 3)
        budget = ch._ctx.throttle
        assert isinstance(budget, ConcurrencyRetryBudget)
        stub = echo_pb2_grpc.EchoStub(ch)
        future = stub.Unary.future(REQ, timeout=30)
        wait_until(lambda: budget.in_flight == 1, 5, message="a retry in its backoff")
        with pytest.raises(grpc.RpcError):     # the only slot is held: sent once
            stub.Unary(REQ, timeout=5)
        assert future.cancel()
        assert budget.in_flight == 0
        future2 = stub.Unary.future(REQ, timeout=30)
        wait_until(lambda: budget.in_flight == 1, 5, message="the slot taken again")
        future2.cancel()


def test_aio_calls_book_the_rate_budget_and_cancel_gives_retries_back(
        fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(3, aio=True)
    for b in fleet:
        b.set_error_rate(1.0)

    async def main() -> None:
        config = budget_config({"ttl": "10s", "minRetriesPerSec": 1, "percentCanRetry": 0.5})
        async with lbclient.aio.insecure_channel(fleet.target, service_config=config) as ch:
            for _ in range(2000):
                if sum(e.connectivity == "READY" for e in ch.endpoints()) >= 3:
                    break
                await asyncio.sleep(0.005)
            stub = echo_pb2_grpc.EchoStub(ch)
            budget = ch._ctx.throttle
            assert isinstance(budget, RateRetryBudget)
            fleet.reset_counters()
            for _ in range(40):
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.Unary(REQ, timeout=5)
            attempts = sum(fleet.calls().values())
            assert 40 + 25 <= attempts <= 40 + 10 + 0.5 * 40
            stream = stub.ServerStream(echo_pb2.EchoRequest(message="s", count=2),
                                       timeout=5)
            with pytest.raises(grpc.aio.AioRpcError):
                async for _ in stream:
                    pass
        envoy = budget_config({"budgetPercent": 0, "minRetryConcurrency": 1},
                              initial="5s", maximum="5s")
        async with lbclient.aio.insecure_channel(fleet.target, service_config=envoy) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            conc = ch._ctx.throttle
            assert isinstance(conc, ConcurrencyRetryBudget)
            for make in (lambda: stub.Unary(REQ, timeout=30),
                         lambda: stub.ServerStream(echo_pb2.EchoRequest(message="s"),
                                                   timeout=30)):
                call = make()
                for _ in range(2000):
                    if conc.in_flight == 1:
                        break
                    await asyncio.sleep(0.005)
                assert conc.in_flight == 1           # in its 5 s backoff
                call.cancel()
                for _ in range(200):
                    if conc.in_flight == 0:
                        break
                    await asyncio.sleep(0.005)
                assert conc.in_flight == 0

    asyncio.run(asyncio.wait_for(main(), 60))
