"""The asyncio channel hands the balancer the connectivity changes of one turn of the
loop together: one picker rebuild for all of them (the sync channel batches per sweep,
tests/test_connectivity_sweep.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any

from helpers import ConnectionStub

import lbclient.aio
from lbclient import Connectivity, Endpoint
from lbclient._async.subchannel import AioSubchannelFactory
from lbclient.balancer.balancer import Balancer
from lbclient.balancer.picker import Candidate, Picker
from lbclient.balancer.policy import Policy, PolicySpec
from lbclient.policies.round_robin import RoundRobinPicker
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


class Counting(Policy):
    builds = 0

    def build_picker(self, candidates: Sequence[Candidate]) -> Picker:
        Counting.builds += 1
        return RoundRobinPicker(candidates, 0)


COUNTING = PolicySpec("counting", lambda raw, path: raw, Counting)


class Handle(ConnectionStub):
    """Reports its changes the way AioSubchannel's watching task does."""

    def __init__(self, factory: AioSubchannelFactory, address: str,
                 on_state: Callable[[Connectivity], None]) -> None:
        self.factory, self.address, self.on_state = factory, address, on_state

    def report(self, state: Connectivity) -> None:
        self.factory.deliver(self.on_state, state)

    def request_connection(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class FakeConnections(AioSubchannelFactory):
    def __init__(self) -> None:
        super().__init__(None, [], None)
        self.handles: dict[str, Handle] = {}

    def create(self, endpoint: Endpoint, on_state: Callable[[Connectivity], None]) -> Any:
        self.handles[endpoint.address] = Handle(self, endpoint.address, on_state)
        return self.handles[endpoint.address]


class NoTimers:
    class Timer:
        def cancel(self) -> None:
            pass

    def call_later(self, delay: float, fn: Callable[[], None]) -> Any:
        return self.Timer()


def test_the_changes_of_one_turn_cost_one_rebuild() -> None:
    async def scenario() -> None:
        factory = FakeConnections()
        bal = Balancer(factory, scheduler=NoTimers(), rng=random.Random(1))
        bal.set_policy(COUNTING, {})
        addresses = [f"10.3.0.{i}:80" for i in range(1, 51)]
        bal.update_endpoints([Endpoint(a) for a in addresses])
        builds = Counting.builds
        for handle in factory.handles.values():
            handle.report(Connectivity.CONNECTING)
            handle.report(Connectivity.READY)
        assert Counting.builds == builds          # delivered at the end of the turn
        assert all(r.connectivity is Connectivity.IDLE for r in bal.records())
        await asyncio.sleep(0)
        assert Counting.builds == builds + 1
        assert [i.address for i in bal.snapshot() if i.eligible] == addresses
        # one endpoint's changes keep their order within a turn
        first = factory.handles[addresses[0]]
        first.report(Connectivity.IDLE)
        first.report(Connectivity.CONNECTING)
        first.report(Connectivity.TRANSIENT_FAILURE)
        await asyncio.sleep(0)
        assert bal.records()[0].connectivity is Connectivity.TRANSIENT_FAILURE
        assert Counting.builds == builds + 2
        bal.close()

    run(scenario())


def test_a_failing_delivery_does_not_lose_the_others() -> None:
    async def scenario() -> None:
        factory = FakeConnections()
        got: list[Connectivity] = []

        def broken(state: Connectivity) -> None:
            raise RuntimeError("listener bug")

        factory.deliver(broken, Connectivity.READY)
        factory.deliver(got.append, Connectivity.CONNECTING)
        await asyncio.sleep(0)
        assert got == [Connectivity.CONNECTING]

    run(scenario())


def test_real_aio_connections_deliver_inside_a_batch() -> None:
    """Every change a real grpc.aio endpoint connection reports reaches the balancer
    inside a batch (so a turn's changes cost one rebuild), and calls still flow."""
    async def scenario(addresses: list[str]) -> None:
        async with lbclient.aio.insecure_channel("ipv4:" + ",".join(addresses)) as ch:
            bal = ch._balancer
            deliveries: list[bool] = []
            original = bal.on_connectivity

            def spy(rec: Any, state: Connectivity) -> None:
                deliveries.append(bal._batch_depth > 0)
                original(rec, state)

            # nothing has reached the loop yet (the resolver's answer comes through it)
            bal.on_connectivity = spy              # type: ignore[method-assign]
            stub = echo_pb2_grpc.EchoStub(ch)
            for _ in range(6):
                await stub.Unary(echo_pb2.EchoRequest(message="x"), timeout=5,
                                 wait_for_ready=True)
            while sum(r.connectivity is Connectivity.READY for r in bal.records()) < 3:
                await asyncio.sleep(0.01)
            assert deliveries and all(deliveries), deliveries

    with Fleet(3) as fleet:
        run(scenario([b.address for b in fleet]))
