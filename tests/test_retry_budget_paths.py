"""Every call path books its calls with the retry budget and asks it before another
attempt, on real channels (fake backends on 127.0.0.1): sync unary calls answered at once
(the hot path that makes no retry plan), Envoy's share of the channel's real attempts in
flight, hedged calls, sync response streams (retries, and the commitment that ends one),
and a stream dropped while its retry waits, whose slot comes back when it is collected."""

from __future__ import annotations

import gc
import signal
import threading
from typing import Any

import grpc
import pytest
from helpers import wait_ready, wait_until
from retry_servers import retry_config

import lbclient
from lbclient._core.budget import ConcurrencyRetryBudget, RateRetryBudget
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="p")
UNAVAILABLE = 14
FAILING = echo_pb2.EchoRequest(message="f", fail_code=UNAVAILABLE)
SERVICE = "lbclient.testing.echo.v1.Echo"
# A rate budget with no reserve: retries only from the deposits of calls (half a retry
# each); a ttl far longer than any test, so nothing expires.
DEPOSITS_ONLY = {"ttl": "60s", "minRetriesPerSec": 0, "percentCanRetry": 0.5}


def budget_config(budget: dict[str, Any], **retry: Any) -> dict[str, Any]:
    config = retry_config(**{"attempts": 5, "initial": "0.001s", "maximum": "0.002s",
                             **retry})
    config["lbclient"] = {"retryBudget": budget}
    return config


def hedging_config(budget: dict[str, Any]) -> dict[str, Any]:
    return {"methodConfig": [{"name": [{"service": SERVICE, "method": "Unary"}],
                              "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.05s",
                                                "nonFatalStatusCodes": ["UNAVAILABLE"]}}],
            "lbclient": {"retryBudget": budget}}


def test_sync_unary_calls_answered_at_once_deposit_in_the_rate_budget(fleet: Fleet) -> None:
    """The blocking hot path makes no retry plan for a call whose first attempt succeeds,
    but must still deposit: 20 such calls fund 10 retries, which one failing call then
    uses (4: maxAttempts 5). Without those deposits it would have half a retry: none."""
    with lbclient.insecure_channel(fleet.target,
                                   service_config=budget_config(DEPOSITS_ONLY)) as ch:
        wait_ready(ch, 3)
        budget = ch._ctx.throttle
        assert isinstance(budget, RateRetryBudget)
        stub = echo_pb2_grpc.EchoStub(ch)
        for _ in range(10):
            stub.Unary(REQ, timeout=5)
            stub.Unary.with_call(REQ, timeout=5)
        assert budget.balance == pytest.approx(10.0)
        fleet.reset_counters()
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(FAILING, timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert sum(fleet.calls().values()) == 5
        assert (ch.retries_granted, ch.retries_refused) == (4, 0)
        assert budget.balance == pytest.approx(6.5)


def test_envoy_budget_takes_its_share_of_the_attempts_in_flight(fleet: Fleet) -> None:
    """budgetPercent 50 and no floor: with 8 slow calls in flight on the channel, 4
    retries may wait at once (each failing call holds one through its 5 s backoff); a
    5th failing call is not retried. With nothing in flight, none would be."""
    config = budget_config({"budgetPercent": 50, "minRetryConcurrency": 0},
                           initial="5s", maximum="5s")
    with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
        wait_ready(ch, 3)
        budget = ch._ctx.throttle
        assert isinstance(budget, ConcurrencyRetryBudget)
        assert budget.limit() == 0
        stub = echo_pb2_grpc.EchoStub(ch)
        slow = [stub.Unary.future(echo_pb2.EchoRequest(message="s", sleep_ms=20000),
                                  timeout=30) for _ in range(8)]
        failing: list[Any] = []
        try:
            wait_until(lambda: sum(e.in_flight for e in ch.endpoints()) == 8, 10,
                       message="8 attempts in flight")
            wait_until(lambda: budget.limit() == 4, 5, message="the limit follows them")
            for n in range(1, 5):
                failing.append(stub.Unary.future(FAILING, timeout=30))
                wait_until(lambda n=n: budget.in_flight == n, 10,
                           message=f"retry {n} waiting in its backoff")
            refused = stub.Unary.future(FAILING, timeout=30)
            with pytest.raises(grpc.RpcError):
                refused.result(timeout=10)          # at once, not after a 5 s backoff
            assert refused.code() is grpc.StatusCode.UNAVAILABLE
            assert (ch.retries_granted, ch.retries_refused) == (4, 1)
            assert budget.in_flight == 4
        finally:
            for f in slow + failing:
                f.cancel()
        wait_until(lambda: budget.in_flight == 0, 5, message="the retries given back")


@pytest.mark.parametrize(("budget", "attempts", "granted", "refused"), [
    # one hedge in flight at most: the first attempt plus one hedge per call
    ({"budgetPercent": 0, "minRetryConcurrency": 1}, [2, 2], 2, 2),
    # half a hedge deposited per call: the first call can't hedge, the second once
    (DEPOSITS_ONLY, [1, 2], 1, 2),
], ids=["envoy", "finagle"])
def test_hedged_calls_ask_the_budget_for_every_hedge(
        fleet_factory: Any, budget: dict[str, Any], attempts: list[int], granted: int,
        refused: int) -> None:
    """Backends answer in 0.5 s, hedges are due every 50 ms (maxAttempts 3): without a
    budget every call would make 3 attempts."""
    fleet: Fleet = fleet_factory(3, latency=0.5)
    with lbclient.insecure_channel(fleet.target, service_config=hedging_config(budget)) \
            as ch:
        wait_ready(ch, 3)
        gate = ch._ctx.throttle
        assert gate is not None
        stub = echo_pb2_grpc.EchoStub(ch)
        made = []
        for _ in attempts:
            fleet.reset_counters()
            stub.Unary(REQ, timeout=10)
            made.append(sum(fleet.calls().values()))
        assert made == attempts
        assert (ch.retries_granted, ch.retries_refused) == (granted, refused)
        if isinstance(gate, ConcurrencyRetryBudget):
            assert gate.in_flight == 0              # the won calls gave their hedges back


def test_sync_response_streams_deposit_and_ask_the_budget(fleet: Fleet) -> None:
    """10 server streams failing before their first message, half a retry deposited
    per stream: every second stream is retried once (5 retries, 15 attempts)."""
    for b in fleet:
        b.set_error_rate(1.0)
    with lbclient.insecure_channel(fleet.target,
                                   service_config=budget_config(DEPOSITS_ONLY)) as ch:
        wait_ready(ch, 3)
        stub = echo_pb2_grpc.EchoStub(ch)
        fleet.reset_counters()
        for _ in range(10):
            stream = stub.ServerStream(echo_pb2.EchoRequest(message="s", count=2), timeout=5)
            with pytest.raises(grpc.RpcError):
                list(stream)
            assert stream.code() is grpc.StatusCode.UNAVAILABLE
        assert sum(fleet.calls().values()) == 15
        assert (ch.retries_granted, ch.retries_refused) == (5, 10)


def test_a_committed_stream_gives_its_retry_back_before_it_ends(fleet_factory: Any) -> None:
    """A stream whose first attempt failed is retried on the healthy backend; once its
    first message arrives it is committed and holds no retry, though still open."""
    fleet: Fleet = fleet_factory(2, latency=0.3)
    fleet[0].set_error_rate(1.0)
    config = budget_config({"budgetPercent": 0, "minRetryConcurrency": 1})
    with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
        wait_ready(ch, 2)
        budget = ch._ctx.throttle
        assert isinstance(budget, ConcurrencyRetryBudget)
        stub = echo_pb2_grpc.EchoStub(ch)
        for _ in range(4):        # round_robin: within two streams one starts on fleet[0]
            stream = stub.ServerStream(echo_pb2.EchoRequest(message="s", count=3),
                                       timeout=10)
            first = next(stream)
            if stream.previous_rpc_attempts == 1:
                break
            stream.cancel()
        else:
            pytest.fail("no stream started on the failing backend")
        assert first.backend == fleet[1].name
        assert ch.retries_granted == 1
        assert stream.is_active()              # two more messages to come
        assert budget.in_flight == 0
        assert [m.index for m in stream] == [1, 2]


class _Interrupted(Exception):
    pass


def test_a_stream_dropped_in_its_backoff_gives_its_retry_back_when_collected(
        fleet: Fleet) -> None:
    """The reader of a failing stream is interrupted (as by Ctrl-C) while it sleeps the
    retry's backoff, so the stream never learns it is over, and is dropped: its retry
    slot comes back when it is garbage-collected (the budget holds it weakly)."""
    for b in fleet:
        b.set_error_rate(1.0)
    config = budget_config({"budgetPercent": 0, "minRetryConcurrency": 1},
                           initial="30s", maximum="30s")

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted

    main = threading.get_ident()
    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
            wait_ready(ch, 3)
            budget = ch._ctx.throttle
            assert isinstance(budget, ConcurrencyRetryBudget)
            stub = echo_pb2_grpc.EchoStub(ch)
            stream = stub.ServerStream(echo_pb2.EchoRequest(message="s"), timeout=60)

            def interrupt_the_backoff() -> None:
                wait_until(lambda: budget.in_flight == 1, 10, message="the retry held")
                signal.pthread_kill(main, signal.SIGUSR1)

            helper = threading.Thread(target=interrupt_the_backoff)
            helper.start()
            interrupted = False
            try:
                next(stream)
            except _Interrupted:
                interrupted = True
            helper.join(10)
            assert interrupted
            assert budget.in_flight == 1              # nobody will end it: it is dropped
            del stream
            gc.collect()
            assert budget.in_flight == 0
            assert ch.retries_granted == 1
    finally:
        signal.signal(signal.SIGUSR1, previous)
