"""gRFC A96 per-call retry metrics on every call path, read with the OTel SDK's
InMemoryMetricReader after real calls on real backends:

* ``grpc.client.call.retry_delay``: "total time of delay while there is no active
  attempt" - a retry's backoff (fixed here by a ``grpc-retry-pushback-ms`` trailer), or
  the wait after every hedged attempt failed; not a hedging delay that runs while an
  attempt is in flight;
* ``grpc.client.call.transparent_retries``: picks made again because the picked
  endpoint was removed before the attempt could start.

Sync (blocking, ``with_call``, futures, response streams) and asyncio (unary, streams),
without a method config, with one that has no policy, with a retryPolicy and with a
hedgingPolicy. A test policy makes every ordering deterministic: it picks the first
endpoint of its configured order the call has not tried yet, and runs a test's hook from
inside the pick (after choosing), which is how an endpoint is removed between the pick
and the start of the attempt.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import pytest
from helpers import wait_ready, wait_until
from retry_servers import ScriptedServer

import lbclient
import lbclient.aio
from lbclient import ResolverState
from lbclient._core.channel_base import ChannelBase
from lbclient._core.hedging import Arm, HedgePlan, Send, Win
from lbclient._core.retry_plan import RetryPlan
from lbclient.balancer import policy as registry
from lbclient.balancer.picker import PickInfo, PickResult
from lbclient.balancer.policy import Policy, PolicySpec
from lbclient.endpoint import Endpoint
from lbclient.method_config import HedgingPolicy, RetryPolicy
from lbclient.testing import echo_pb2, echo_pb2_grpc
from lbclient.testing.pytest_plugin import FleetFactory

pytest.importorskip("opentelemetry.sdk.metrics")
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from test_metrics_grpc_names import SERVICE, STREAM, UNARY, metrics, points, total  # noqa: E402

import lbclient.metrics.opentelemetry as lbotel  # noqa: E402

pytestmark = pytest.mark.timeout(60)

PUSHBACK = 0.3                       # the scripted server's grpc-retry-pushback-ms, in s
SLACK = 1.0                          # how late a backoff may end on a loaded machine
RETRY = {"retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s",
                         "maxBackoff": "0.05s", "backoffMultiplier": 2,
                         "retryableStatusCodes": ["UNAVAILABLE"]}}
HEDGE = {"hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "10s",
                           "nonFatalStatusCodes": ["UNAVAILABLE"]}}
CONFIGS = {"no_config": None, "timeout_only": {"timeout": "5s"}, "retry": RETRY,
           "hedging": HEDGE}


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> list[Callable[[], None]]:
    """Registers the policy "test_first_listed" (config ``{"order": [addresses]}``) for
    this test; returns its hook list: each hook runs once, from inside the next pick of
    the first address of the order, after that endpoint was chosen."""
    pending: list[Callable[[], None]] = []

    class Picker:
        def __init__(self, candidates: Sequence[Any], order: list[str]) -> None:
            rank = {address: i for i, address in enumerate(order)}
            self._candidates = sorted(candidates,
                                      key=lambda c: rank.get(c.address, len(rank)))
            self._first = order[0]

        def pick(self, info: PickInfo) -> PickResult:
            chosen = next((c for c in self._candidates if c.address not in info.exclude),
                          self._candidates[0])
            if chosen.address == self._first and pending:
                pending.pop()()
            result: PickResult = chosen.result
            return result

    class FirstListed(Policy):
        def build_picker(self, candidates: Sequence[Any]) -> Any:
            return Picker(candidates, self.config["order"])

    registry.registered_policies()          # the built-ins first; then ours, for this test
    monkeypatch.setitem(registry._registry, "test_first_listed",
                        PolicySpec("test_first_listed", lambda raw, path: raw, FirstListed))
    return pending


def service_config(order: list[str], method_config: dict[str, Any] | None) -> dict[str, Any]:
    config: dict[str, Any] = {"loadBalancingConfig": [{"test_first_listed": {"order": order}}]}
    if method_config is not None:
        config["methodConfig"] = [{"name": [{"service": SERVICE}], **method_config}]
    return config


REQUEST = echo_pb2.EchoRequest(message="x", count=2)


def sync_call(stub: echo_pb2_grpc.EchoStub, kind: str) -> tuple[list[str], Any]:
    """One call of ``kind``: the addresses that answered, and the call object (kept alive
    by the test until its end is recorded)."""
    if kind == "blocking":
        return [stub.Unary(REQUEST, timeout=10).address], None
    if kind == "with_call":
        reply, call = stub.Unary.with_call(REQUEST, timeout=10)
        return [reply.address], call
    if kind == "future":
        future = stub.Unary.future(REQUEST, timeout=10)
        return [future.result(timeout=10).address], future
    stream = stub.ServerStream(REQUEST, timeout=10)
    return [reply.address for reply in stream], stream


async def aio_call(stub: echo_pb2_grpc.EchoStub, kind: str) -> tuple[list[str], Any]:
    if kind == "unary":
        call = stub.Unary(REQUEST, timeout=10)
        return [(await call).address], call
    call = stub.ServerStream(REQUEST, timeout=10)
    return [reply.address async for reply in call], call


async def aio_ready(ch: Any, n: int = 2) -> None:
    """Until ``n`` endpoints of an asyncio channel are READY (bounded)."""
    for _ in range(1000):
        if sum(e.connectivity == "READY" for e in ch.endpoints()) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{n} READY endpoints")


async def recorded(reader: InMemoryMetricReader, calls: int = 1) -> None:
    """Until ``calls`` calls are recorded (their ends are reported from done callbacks)."""
    for _ in range(1000):
        if total(reader, "grpc.client.call.duration") >= calls:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the call's end was not recorded")


def method_of(kind: str) -> str:
    return STREAM if kind == "stream" else UNARY


def one_transparent_retry(reader: InMemoryMetricReader, method: str, target: str) -> None:
    """The call made one transparent retry, one attempt, no retry or hedge, and ended OK."""
    (transparent,) = points(reader, "grpc.client.call.transparent_retries")
    assert dict(transparent.attributes) == {"grpc.method": method, "grpc.target": target}
    assert transparent.count == 1 and transparent.sum == 1
    assert total(reader, "grpc.client.attempt.started") == 1
    assert total(reader, "grpc.client.call.duration", **{"grpc.status": "OK"}) == 1
    assert points(reader, "grpc.client.call.retries") == []
    assert points(reader, "grpc.client.call.hedges") == []
    assert metrics(reader)["grpc.client.call.transparent_retries"].unit == \
        "{transparent_retry}"


# ------------------------------------------------------------------ transparent retries
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("kind", ["blocking", "with_call", "future", "stream"])
def test_sync_transparent_retries(kind: str, config: str, fleet_factory: FleetFactory,
                                  reader: InMemoryMetricReader,
                                  hooks: list[Callable[[], None]]) -> None:
    """The picked endpoint is removed (a resolver update) between the pick and the start
    of the attempt: the call picks again - one transparent retry - on every path."""
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(2)
    first, second = fleet.addresses
    with lbclient.insecure_channel(
            fleet.target, service_config=service_config([first, second], CONFIGS[config])
    ) as ch:
        lbotel.enable(ch, meter_provider=provider)
        wait_ready(ch, 2)
        hooks.append(lambda: ch.on_resolved(ResolverState((Endpoint(second),))))
        stub = echo_pb2_grpc.EchoStub(ch)
        answered, call = sync_call(stub, kind)
        assert not hooks, "the first endpoint was not picked"
        assert answered and set(answered) == {second}
        wait_until(lambda: total(reader, "grpc.client.call.duration") >= 1,
                   message="the call's end recorded")
        one_transparent_retry(reader, method_of(kind), fleet.target)
        if call is not None and kind != "with_call":
            assert call.transparent_retries == 1       # lbclient's call object says so too
        del call


def test_no_transparent_retry_when_the_endpoint_stays(fleet_factory: FleetFactory,
                                                      reader: InMemoryMetricReader,
                                                      hooks: list[Callable[[], None]]
                                                      ) -> None:
    """0 is not recorded (A96): the same calls without a removal record nothing."""
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(2)
    with lbclient.insecure_channel(
            fleet.target, service_config=service_config(fleet.addresses, RETRY)) as ch:
        lbotel.enable(ch, meter_provider=provider)
        wait_ready(ch, 2)
        stub = echo_pb2_grpc.EchoStub(ch)
        calls = [sync_call(stub, kind) for kind in ("blocking", "future", "stream")]
        wait_until(lambda: total(reader, "grpc.client.call.duration") >= 3,
                   message="three calls recorded")
        assert all(set(answered) == {fleet.addresses[0]} for answered, _ in calls)
        assert points(reader, "grpc.client.call.transparent_retries") == []


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("kind", ["unary", "stream"])
def test_aio_transparent_retries(kind: str, config: str, fleet_factory: FleetFactory,
                                 reader: InMemoryMetricReader,
                                 hooks: list[Callable[[], None]]) -> None:
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(2)
    first, second = fleet.addresses

    async def main() -> None:
        async with lbclient.aio.insecure_channel(
                fleet.target, service_config=service_config([first, second],
                                                            CONFIGS[config])) as ch:
            lbotel.enable(ch, meter_provider=provider)
            await aio_ready(ch)
            # on the loop, as the channel applies a resolver's update, but right now
            hooks.append(lambda: ChannelBase.on_resolved(
                ch, ResolverState((Endpoint(second),))))
            stub = echo_pb2_grpc.EchoStub(ch)
            answered, call = await aio_call(stub, kind)
            assert not hooks, "the first endpoint was not picked"
            assert answered and set(answered) == {second}
            await recorded(reader)
            assert call.transparent_retries == 1

    asyncio.run(main())
    one_transparent_retry(reader, method_of(kind), fleet.target)


# ------------------------------------------------------------------------- retry delay
def _scripted_first(fleet_factory: FleetFactory,
                    method_config: dict[str, Any]) -> tuple[ScriptedServer, str, str,
                                                            dict[str, Any]]:
    """A server failing every call UNAVAILABLE with a PUSHBACK trailer, listed first,
    and a good backend: (server, good address, target, service config)."""
    scripted = ScriptedServer(code=grpc.StatusCode.UNAVAILABLE,
                              pushback=str(int(PUSHBACK * 1000)))
    good = fleet_factory(1)[0].address
    target = f"ipv4:{scripted.address},{good}"
    return scripted, good, target, service_config([scripted.address, good], method_config)


def one_delayed_call(reader: InMemoryMetricReader, target: str, method: str, *,
                     hedged: bool = False) -> float:
    """One call, retried (or hedged) once after the pushback: its retry_delay point."""
    base = {"grpc.method": method, "grpc.target": target}
    (again,) = points(reader, "grpc.client.call.hedges" if hedged
                      else "grpc.client.call.retries")
    assert dict(again.attributes) == base and again.count == 1 and again.sum == 1
    (delay,) = points(reader, "grpc.client.call.retry_delay")
    assert dict(delay.attributes) == base and delay.count == 1
    assert metrics(reader)["grpc.client.call.retry_delay"].unit == "s"
    assert PUSHBACK <= delay.sum < PUSHBACK + SLACK, delay.sum
    return float(delay.sum)


@pytest.mark.parametrize("kind", ["blocking", "with_call", "future", "stream"])
def test_sync_retry_delay_is_the_backoff_between_attempts(
        kind: str, fleet_factory: FleetFactory, reader: InMemoryMetricReader,
        hooks: list[Callable[[], None]]) -> None:
    provider = MeterProvider(metric_readers=[reader])
    scripted, good, target, config = _scripted_first(fleet_factory, RETRY)
    with scripted, lbclient.insecure_channel(target, service_config=config) as ch:
        lbotel.enable(ch, meter_provider=provider)
        wait_ready(ch, 2)
        answered, call = sync_call(echo_pb2_grpc.EchoStub(ch), kind)
        assert answered and set(answered) == {good} and scripted.calls == 1
        wait_until(lambda: total(reader, "grpc.client.call.duration") >= 1,
                   message="the call's end recorded")
        delay = one_delayed_call(reader, target, method_of(kind))
        if call is not None:
            assert call.retry_delay == pytest.approx(delay)   # the call object's own
        del call


def test_sync_retry_delay_of_a_failed_call(fleet_factory: FleetFactory,
                                           reader: InMemoryMetricReader,
                                           hooks: list[Callable[[], None]]) -> None:
    """A call whose retry fails too reports the delay between its attempts (and on the
    error it raises)."""
    provider = MeterProvider(metric_readers=[reader])
    scripted = ScriptedServer(code=grpc.StatusCode.UNAVAILABLE,
                              pushback=str(int(PUSHBACK * 1000)))
    other = ScriptedServer(code=grpc.StatusCode.UNAVAILABLE, pushback="-1")  # don't retry
    target = f"ipv4:{scripted.address},{other.address}"
    config = service_config([scripted.address, other.address], RETRY)
    with scripted, other, lbclient.insecure_channel(target, service_config=config) as ch:
        lbotel.enable(ch, meter_provider=provider)
        wait_ready(ch, 2)
        with pytest.raises(grpc.RpcError) as failed:
            echo_pb2_grpc.EchoStub(ch).Unary(REQUEST, timeout=10)
        assert scripted.calls == 1 and other.calls == 1
        assert total(reader, "grpc.client.call.duration",
                     **{"grpc.status": "UNAVAILABLE"}) == 1
        delay = one_delayed_call(reader, target, UNARY)
        assert getattr(failed.value, "retry_delay", None) == pytest.approx(delay)


@pytest.mark.parametrize("kind", ["unary", "stream"])
def test_aio_retry_delay_is_the_backoff_between_attempts(
        kind: str, fleet_factory: FleetFactory, reader: InMemoryMetricReader,
        hooks: list[Callable[[], None]]) -> None:
    provider = MeterProvider(metric_readers=[reader])
    scripted, good, target, config = _scripted_first(fleet_factory, RETRY)

    async def main() -> Any:
        async with lbclient.aio.insecure_channel(target, service_config=config) as ch:
            lbotel.enable(ch, meter_provider=provider)
            await aio_ready(ch)
            answered, call = await aio_call(echo_pb2_grpc.EchoStub(ch), kind)
            assert answered and set(answered) == {good}
            await recorded(reader)
            return call.retry_delay

    with scripted:
        seen = asyncio.run(main())
        assert scripted.calls == 1
    assert seen == pytest.approx(one_delayed_call(reader, target, method_of(kind)))


def test_aio_retry_delay_of_a_failed_call(fleet_factory: FleetFactory,
                                          reader: InMemoryMetricReader,
                                          hooks: list[Callable[[], None]]) -> None:
    provider = MeterProvider(metric_readers=[reader])
    scripted = ScriptedServer(code=grpc.StatusCode.UNAVAILABLE,
                              pushback=str(int(PUSHBACK * 1000)))
    other = ScriptedServer(code=grpc.StatusCode.UNAVAILABLE, pushback="-1")
    target = f"ipv4:{scripted.address},{other.address}"
    config = service_config([scripted.address, other.address], RETRY)

    async def main() -> Any:
        async with lbclient.aio.insecure_channel(target, service_config=config) as ch:
            lbotel.enable(ch, meter_provider=provider)
            await aio_ready(ch)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await echo_pb2_grpc.EchoStub(ch).Unary(REQUEST, timeout=10)
            await recorded(reader)
            return failed.value

    with scripted, other:
        error = asyncio.run(main())
    delay = one_delayed_call(reader, target, UNARY)
    assert getattr(error, "retry_delay", None) == pytest.approx(delay)


PUSHED_HEDGE = {"hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "10s",
                                  "nonFatalStatusCodes": ["UNAVAILABLE"]}}
QUICK_HEDGE = {"hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.05s",
                                 "nonFatalStatusCodes": ["UNAVAILABLE"]}}


@pytest.mark.parametrize("flavour", ["sync", "aio"])
def test_hedging_retry_delay_is_the_wait_with_no_attempt_in_flight(
        flavour: str, fleet_factory: FleetFactory, reader: InMemoryMetricReader,
        hooks: list[Callable[[], None]]) -> None:
    """The only attempt fails non-fatally with a pushback: the hedge goes after it, and
    that wait (no attempt in flight) is the call's retry_delay."""
    provider = MeterProvider(metric_readers=[reader])
    scripted, good, target, config = _scripted_first(fleet_factory, PUSHED_HEDGE)
    with scripted:
        if flavour == "sync":
            with lbclient.insecure_channel(target, service_config=config) as ch:
                lbotel.enable(ch, meter_provider=provider)
                wait_ready(ch, 2)
                assert echo_pb2_grpc.EchoStub(ch).Unary(REQUEST, timeout=10).address == good
        else:
            async def main() -> None:
                async with lbclient.aio.insecure_channel(target, service_config=config) as ch:
                    lbotel.enable(ch, meter_provider=provider)
                    await aio_ready(ch)
                    assert (await echo_pb2_grpc.EchoStub(ch).Unary(REQUEST,
                                                                   timeout=10)).address == good
                    await recorded(reader)
            asyncio.run(main())
        assert scripted.calls == 1
    one_delayed_call(reader, target, UNARY, hedged=True)


@pytest.mark.parametrize("flavour", ["sync", "aio"])
def test_a_hedging_delay_with_an_attempt_in_flight_is_no_retry_delay(
        flavour: str, fleet_factory: FleetFactory, reader: InMemoryMetricReader,
        hooks: list[Callable[[], None]]) -> None:
    """Both backends answer slowly: the hedge is sent after the hedging delay while the
    first attempt still runs - a call with one hedge and a retry_delay of 0."""
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(2)
    for backend in fleet:
        backend.set_latency(0.3)
    config = service_config(fleet.addresses, QUICK_HEDGE)
    if flavour == "sync":
        with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
            lbotel.enable(ch, meter_provider=provider)
            wait_ready(ch, 2)
            echo_pb2_grpc.EchoStub(ch).Unary(REQUEST, timeout=10)
    else:
        async def main() -> None:
            async with lbclient.aio.insecure_channel(fleet.target,
                                                     service_config=config) as ch:
                lbotel.enable(ch, meter_provider=provider)
                await aio_ready(ch)
                await echo_pb2_grpc.EchoStub(ch).Unary(REQUEST, timeout=10)
                await recorded(reader)
        asyncio.run(main())
    assert total(reader, "grpc.client.attempt.started") == 2
    (hedges,) = points(reader, "grpc.client.call.hedges")
    assert hedges.count == 1 and hedges.sum == 1
    (delay,) = points(reader, "grpc.client.call.retry_delay")
    assert delay.count == 1 and delay.sum == 0


# ------------------------------------------------------------- a stream's end, observed
def test_retried_streams_read_to_the_end_while_their_end_is_observed(
        fleet_factory: FleetFactory, reader: InMemoryMetricReader,
        hooks: list[Callable[[], None]]) -> None:
    """The observer hears of a stream's end on grpc's channel thread, maybe while the
    reader still waits (holding the stream's lock) for that thread to deliver the last
    read. Every read must end and every end be recorded. (It deadlocked: the observer
    asked code(), which took the reader's lock; the order of grpc's two events decides,
    so many streams are read: one in a few deadlocked.)"""
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(1)
    streams = 150
    with lbclient.insecure_channel(
            fleet.target, service_config=service_config(fleet.addresses, RETRY)) as ch:
        lbotel.enable(ch, meter_provider=provider)
        wait_ready(ch, 1)
        stub = echo_pb2_grpc.EchoStub(ch)
        kept: list[Any] = []
        for i in range(streams):
            stream = stub.ServerStream(REQUEST, timeout=10)
            kept.append(stream)
            got: list[Any] = []
            reading = threading.Thread(target=lambda s=stream, g=got: g.extend(s),
                                       daemon=True)
            reading.start()
            reading.join(10)
            assert not reading.is_alive(), f"stream {i}: the reader never saw its end"
            assert len(got) == 2
        wait_until(lambda: total(reader, "grpc.client.call.duration",
                                 **{"grpc.status": "OK"}) == streams,
                   message="every stream's end recorded")


# ------------------------------------------------------------------ the plans (units)
class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_retry_plan_measures_each_backoff_until_the_next_attempt() -> None:
    clock = Clock()
    plan = RetryPlan(RetryPolicy(4, 0.1, 1.0, 2.0, frozenset({"UNAVAILABLE"}), None), None,
                     rng=random.Random(1), clock=clock)
    plan.start_attempt(())
    assert plan.retry_delay == 0.0
    assert plan.failed("UNAVAILABLE", [("grpc-retry-pushback-ms", "250")]) == 0.25
    clock.now += 0.3                     # the backoff, as it elapsed (a late timer)
    plan.start_attempt(())
    assert plan.retry_delay == pytest.approx(0.3)
    clock.now += 5.0                     # an attempt in flight: no delay
    assert plan.failed("UNAVAILABLE") is not None
    clock.now += 0.05
    plan.start_attempt(())
    assert plan.retry_delay == pytest.approx(0.35)
    clock.now += 1.0
    assert plan.failed("INTERNAL") is None   # the call ends: no delay after it
    clock.now += 1.0
    assert plan.retry_delay == pytest.approx(0.35)


def test_hedge_plan_counts_only_waits_with_no_attempt_in_flight() -> None:
    clock = Clock()
    plan = HedgePlan(HedgingPolicy(3, 0.5, frozenset({"UNAVAILABLE"})), clock=clock)
    assert plan.start()[0] == Send(0)
    clock.now += 0.5                     # the hedging delay, attempt 0 in flight
    assert plan.timer_fired(plan.armed)[0] == Send(1)
    clock.now += 0.1
    assert plan.ended(0, "UNAVAILABLE") == [Arm(0.0, plan.armed)]   # 1 still in flight
    assert plan.ended(1, "UNAVAILABLE", [("grpc-retry-pushback-ms", "200")]) == \
        [Arm(0.2, plan.armed)]           # none in flight now
    clock.now += 0.25
    assert plan.timer_fired(plan.armed)[0] == Send(2)
    assert plan.retry_delay == pytest.approx(0.25)
    clock.now += 1.0
    assert plan.ended(2, "OK") == [Win(2)]
    assert plan.retry_delay == pytest.approx(0.25)
