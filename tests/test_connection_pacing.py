"""A sync channel opens the connections of a large update a slice at a time and bounds
its connection-error probes (lbclient._sync.pacing): a manual scheduler and clock for
the exact slices, real grpc channels for the probes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from helpers import code_of, wait_until

import lbclient
from lbclient import Connectivity, Endpoint
from lbclient._sync.pacing import Opener, TokenBucket
from lbclient._sync.scheduler import ThreadScheduler
from lbclient._sync.subchannel import SubchannelFactory
from lbclient.testing import echo_pb2, echo_pb2_grpc


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Timer:
    def __init__(self, delay: float, fn: Callable[[], None]) -> None:
        self.delay, self.fn, self.cancelled = delay, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    def __init__(self) -> None:
        self.timers: list[Timer] = []

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        self.timers.append(Timer(delay, fn))
        return self.timers[-1]

    def run_next(self) -> Timer | None:
        live = [t for t in self.timers if not t.cancelled]
        self.timers = []
        for t in live:
            t.fn()
        return live[0] if live else None


class Conn:
    """Opening it costs 100 us of the fake clock."""

    def __init__(self, clock: Clock, log: list[int], i: int) -> None:
        self.clock, self.log, self.i = clock, log, i

    def open(self) -> None:
        self.clock.t += 0.0001
        self.log.append(self.i)


def test_a_small_update_is_opened_at_once() -> None:
    sched, clock, log = Scheduler(), Clock(), []
    opener = Opener(sched, clock)
    for i in range(40):
        opener.add(Conn(clock, log, i))
    assert len(sched.timers) == 1 and sched.timers[0].delay == 0.0
    sched.run_next()
    assert log == list(range(40)) and not sched.timers


def test_a_large_update_is_opened_a_slice_at_a_time() -> None:
    sched, clock, log = Scheduler(), Clock(), []
    opener = Opener(sched, clock)
    n = Opener.FAST + 1000
    for i in range(n):
        opener.add(Conn(clock, log, i))
    sched.run_next()
    # the burst's first FAST at once (to the end of its last 1 ms slice of 100 us opens)
    assert Opener.FAST <= len(log) <= Opener.FAST + 11
    slices = 0
    while sched.timers:
        assert [t.delay for t in sched.timers] == [Opener.PAUSE]
        before = len(log)
        sched.run_next()
        slices += 1
        assert len(log) - before <= 11      # 1 ms of 100 us opens (+1: float rounding)
    assert log == list(range(n))                      # in order, every one
    assert slices >= 1000 // 10
    # the queue emptied: the next burst starts fast again
    for i in range(20):
        opener.add(Conn(clock, log, n + i))
    sched.run_next()
    assert log[-20:] == list(range(n, n + 20)) and not sched.timers


def test_a_closed_opener_opens_nothing_more() -> None:
    sched, clock, log = Scheduler(), Clock(), []
    opener = Opener(sched, clock)
    for i in range(Opener.FAST + 50):
        opener.add(Conn(clock, log, i))
    sched.run_next()
    opener.close()
    assert all(t.cancelled for t in sched.timers)
    opened = len(log)
    opener.add(Conn(clock, log, -1))
    sched.run_next()
    assert len(log) == opened < Opener.FAST + 50 and opener.pending() == 0


def test_token_bucket() -> None:
    clock = Clock()
    bucket = TokenBucket(8.0, 8, clock)
    assert [bucket.take() for _ in range(10)] == [True] * 8 + [False] * 2
    clock.t += 0.25                    # two tokens back
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    clock.t += 100.0                   # never more than the burst
    assert sum(bucket.take() for _ in range(20)) == 8


def test_a_connection_shut_down_before_it_opened_never_opens() -> None:
    sched = Scheduler()
    factory = SubchannelFactory(None, [], sched)  # type: ignore[arg-type]
    states: list[Connectivity] = []
    sub = factory.create(Endpoint("127.0.0.1:1"), states.append)
    assert sub.channel is None and factory.opener.pending() == 1
    sub.request_connection()                     # nothing to do yet (connects when open)
    assert sub.poll() is False and sub.connection_error() is None
    sub.shutdown()
    sched.run_next()
    assert sub.channel is None and sub.closed and states == []
    factory.close()


def test_connections_open_and_connect_on_the_scheduler() -> None:
    scheduler = ThreadScheduler()
    factory = SubchannelFactory(None, [], scheduler)
    try:
        states: list[Connectivity] = []
        sub = factory.create(Endpoint("127.0.0.1:1"), states.append)   # refuses
        wait_until(lambda: Connectivity.TRANSIENT_FAILURE in states, 10,
                   message="the refused connection's TRANSIENT_FAILURE")
        assert sub.channel is not None
        wait_until(lambda: sub.connection_error() is not None, 10,
                   message="grpc's account of the failure")
    finally:
        factory.close()
        scheduler.close()


def test_connection_error_probes_are_bounded() -> None:
    """200 refusing endpoints: at most the bucket's burst of probes at first, and a
    failing call still names grpc's reason."""
    addresses = [f"127.0.0.1:{port}" for port in range(1, 201)]
    with lbclient.insecure_channel("ipv4:" + ",".join(addresses)) as ch:
        factory: Any = ch._factory
        probes: list[str] = []
        take = factory.diagnoses.take

        def counting() -> bool:
            ok: bool = take()
            if ok:
                probes.append("x")
            return ok

        factory.diagnoses.take = counting
        t0 = time.monotonic()
        wait_until(lambda: sum(r.connectivity is Connectivity.TRANSIENT_FAILURE
                               for r in ch._balancer.records()) == 200, 20,
                   message="every endpoint failed")
        elapsed = time.monotonic() - t0
        assert len(probes) <= 8 + 8 * (elapsed + 1.0), (len(probes), elapsed)
        stub = echo_pb2_grpc.EchoStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(echo_pb2.EchoRequest(message="x"), timeout=5)
        assert code_of(info.value) is grpc.StatusCode.UNAVAILABLE
        wait_until(lambda: "last connection error" in _details(stub), 10,
                   message="a failed call naming the connection error")


def _details(stub: Any) -> str:
    try:
        stub.Unary(echo_pb2.EchoRequest(message="x"), timeout=5)
    except grpc.RpcError as exc:
        return str(exc.details())         # type: ignore[attr-defined]
    return ""
