"""The algorithms' distribution tests and the active health scenarios (tables in
tests/scenarios.py), played against grpc.aio backends (``Fleet(aio=True)``) through
``lbclient.aio`` and, from the same tables, through the sync channel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from scenarios import (
    DISTRIBUTIONS,
    HEALTH,
    Distribution,
    HealthScenario,
    prepare_health,
)
from scenarios import run_health as play

import lbclient
import lbclient.aio
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")
KINDS = ["aio", "sync"]


class _Client:
    """One channel of either kind behind the scenarios' ``Client`` protocol."""

    def __init__(self, kind: str, target: str, config: dict[str, Any]) -> None:
        self.kind = kind
        self.events: list[tuple[float, Any]] = []
        if kind == "aio":
            self.channel: Any = lbclient.aio.insecure_channel(target, service_config=config)
        else:
            self.channel = lbclient.insecure_channel(target, service_config=config)
        self.channel.add_event_listener(lambda e: self.events.append((time.monotonic(), e)))
        self.stub = echo_pb2_grpc.EchoStub(self.channel)

    async def call(self, metadata: Any = None) -> str:
        return (await self.batch([metadata]))[0]

    async def batch(self, metadata: list[Any]) -> list[str]:
        """One call per entry, all in flight together; the answering addresses."""
        if self.kind == "aio":
            replies = await asyncio.gather(*(self.stub.Unary(REQ, timeout=10, metadata=md)
                                             for md in metadata))
        else:
            futures = [self.stub.Unary.future(REQ, timeout=10, metadata=md)
                       for md in metadata]
            replies = [f.result() for f in futures]
        return [str(r.address) for r in replies]

    async def calls(self, n: int) -> list[str]:
        return [await self.call() for _ in range(n)]

    def endpoints(self) -> list[Any]:
        return self.channel.endpoints()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def ready(self, n: int) -> None:
        for _ in range(2000):
            if sum(e.connectivity == "READY" for e in self.endpoints()) >= n:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"{n} endpoints not READY")

    async def close(self) -> None:
        if self.kind == "aio":
            await self.channel.close()
        else:
            self.channel.close()


@asynccontextmanager
async def client(kind: str, target: str, config: dict[str, Any]) -> AsyncIterator[_Client]:
    c = _Client(kind, target, config)
    try:
        yield c
    finally:
        await c.close()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture(scope="module")
def aio_fleet() -> Iterator[Fleet]:
    with Fleet(3, aio=True) as fleet:
        yield fleet


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scenario", DISTRIBUTIONS, ids=lambda d: d.name)
def test_distribution(scenario: Distribution, kind: str, aio_fleet: Fleet) -> None:
    addresses = aio_fleet.addresses

    async def body() -> None:
        config = {"loadBalancingConfig": [scenario.lb(addresses)]}
        async with client(kind, aio_fleet.target, config) as c:
            await c.ready(3)
            keys = [scenario.key(i) for i in range(scenario.calls)]
            routes: list[tuple[str | None, str]] = []
            for at in range(0, len(keys), scenario.batch):
                chunk = keys[at:at + scenario.batch]
                got = await c.batch([((scenario.header, k),) if scenario.header else None
                                     for k in chunk])
                routes += zip(chunk, got, strict=True)
            scenario.check(routes, addresses)
            assert all(e.in_flight == 0 for e in c.endpoints())

    run(body())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scenario", HEALTH, ids=lambda h: h.name)
def test_health(scenario: HealthScenario, kind: str, fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(0, aio=True)
    for kwargs in scenario.backends:
        fleet.add(**kwargs)
    prepare_health(scenario, fleet)

    async def body() -> None:
        async with client(kind, fleet.target, scenario.config) as c:
            await play(scenario, fleet, c)

    run(body())


def test_the_tables_can_fail(aio_fleet: Fleet) -> None:
    """The predicates reject wrong distributions and the interpreter wrong outcomes."""
    a = aio_fleet.addresses
    checks = {d.name: d.check for d in DISTRIBUTIONS}
    with pytest.raises(AssertionError):
        checks["round_robin"]([(None, a[0])] * 2 + [(None, a[1])], a)
    with pytest.raises(AssertionError):
        checks["ring_hash"]([("k", a[0]), ("k", a[1]), ("j", a[2])], a)
    with pytest.raises(AssertionError):
        checks["pick_first"]([(None, a[1])], a)
    wrong = HealthScenario("wrong", {"loadBalancingConfig": [{"round_robin": {}}]},
                           (("calls_reach", {0}, 9),))

    async def body() -> None:
        async with client("aio", aio_fleet.target, wrong.config) as c:
            await c.ready(3)
            await play(wrong, aio_fleet, c)

    with pytest.raises(AssertionError):
        run(body())
