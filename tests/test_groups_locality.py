"""Locality weights (active-active) and zone-aware routing on real backends, plus group
attributes delivered by a resolver (the contract in docs/groups.md)."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from helpers import wait_ready, wait_until

import lbclient
from lbclient import Endpoint, Resolver, ResolverListener, ResolverState, Target
from lbclient.testing import Backend, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")


def spread(stub: echo_pb2_grpc.EchoStub, n: int) -> collections.Counter[str]:
    return collections.Counter(stub.Unary(REQ, timeout=5).address for _ in range(n))


def share(counts: collections.Counter[str], backends: Sequence[Backend]) -> float:
    return sum(counts[b.address] for b in backends) / sum(counts.values())


def wait_eligible(ch: lbclient.LoadBalancedChannel, n: int, timeout: float = 10.0) -> None:
    wait_ready(ch, n, timeout)
    wait_until(lambda: sum(bool(e.eligible) for e in ch.endpoints()) >= n, timeout,
               message=f"{n} eligible endpoints")


def wait_down(ch: lbclient.LoadBalancedChannel, backends: Sequence[Backend]) -> None:
    gone = {b.address for b in backends}
    wait_until(lambda: not any(e.eligible for e in ch.endpoints() if e.address in gone), 10,
               message=f"{sorted(gone)} no longer eligible")


def zones(mapping: Mapping[str, Sequence[Backend]]) -> dict[str, dict[str, str]]:
    return {b.address: {"zone": zone} for zone, group in mapping.items() for b in group}


def test_locality_weights_70_30_hold_within_3_percent(fleet_factory: Any) -> None:
    fleet = fleet_factory(5)
    east, west = fleet[:3], fleet[3:]
    cfg = {"loadBalancingConfig": [{"weighted_target": {
        "targets": {"east": {"weight": 70}, "west": {"weight": 30}},
        "endpoints": zones({"east": east, "west": west})}}]}
    with lbclient.insecure_channel(fleet.target, service_config=cfg) as ch:
        wait_eligible(ch, 5)
        counts = spread(echo_pb2_grpc.EchoStub(ch), 2000)
    assert abs(share(counts, east) - 0.70) <= 0.03, counts
    assert sum(counts.values()) == 2000
    # each locality is balanced by its own round_robin child
    east_calls = [counts[b.address] for b in east]
    west_calls = [counts[b.address] for b in west]
    assert max(east_calls) - min(east_calls) <= 0.1 * 1400, counts
    assert abs(west_calls[0] - west_calls[1]) <= 0.1 * 600, counts


def test_locality_without_ready_endpoints_drops_out_of_the_split(fleet_factory: Any) -> None:
    fleet = fleet_factory(4)
    east, west = fleet[:2], fleet[2:]
    cfg = {"loadBalancingConfig": [{"weighted_target": {
        "targets": {"east": {"weight": 70}, "west": {"weight": 30}},
        "endpoints": zones({"east": east, "west": west})}}]}
    with lbclient.insecure_channel(fleet.target, service_config=cfg) as ch:
        wait_eligible(ch, 4)
        stub = echo_pb2_grpc.EchoStub(ch)
        for b in east:
            b.stop()
        wait_down(ch, east)
        counts = spread(stub, 200)
    assert share(counts, west) == 1.0, counts


def test_zone_aware_prefers_local_zone_and_spills_when_it_loses_capacity(
        fleet_factory: Any) -> None:
    fleet = fleet_factory(5)
    local, remote = fleet[:2], fleet[2:]
    cfg = {"loadBalancingConfig": [{"zone_aware": {
        "localZone": "az-1", "endpoints": zones({"az-1": local, "az-2": remote})}}]}
    with lbclient.insecure_channel(fleet.target, service_config=cfg) as ch:
        wait_eligible(ch, 5)
        stub = echo_pb2_grpc.EchoStub(ch)
        # 1. The local zone takes everything.
        counts = spread(stub, 200)
        assert set(counts) == {b.address for b in local}, counts
        assert counts[local[0].address] == counts[local[1].address] == 100
        # 2. Half of it is lost: 1/2 x 1.4 = 70% stays local, 30% spills across zones.
        local[0].stop()
        wait_down(ch, local[:1])
        counts = spread(stub, 1000)
        assert abs(share(counts, local) - 0.70) < 0.05, counts
        assert {b.address for b in remote} <= set(counts), counts
        # 3. The zone is gone: everything goes to the other zone.
        local[1].stop()
        wait_down(ch, local)
        counts = spread(stub, 300)
        assert share(counts, remote) == 1.0, counts
        # 4. The zone comes back: traffic returns to it.
        for b in local:
            b.restart()
        wait_eligible(ch, 5, 30)
        counts = spread(stub, 200)
        assert share(counts, local) == 1.0, counts


# ------------------------------------------------------------------ resolver attributes
class _Feed(Resolver):
    """A resolver the test pushes snapshots into (``feedgroups:///name``)."""

    feeds: dict[str, _Feed] = {}

    def __init__(self, target: Target, listener: ResolverListener,
                 options: Mapping[str, Any]) -> None:
        super().__init__(target, listener, options)
        self.name = target.endpoint
        _Feed.feeds[self.name] = self
        self.closed = False

    def start(self) -> None:
        pass

    def push(self, endpoints: Sequence[Endpoint]) -> None:
        self.listener.on_resolved(ResolverState(endpoints=tuple(endpoints)))

    def close(self) -> None:
        self.closed = True
        _Feed.feeds.pop(self.name, None)


lbclient.register_resolver("feedgroups", _Feed)
_names = itertools.count()


def test_resolver_attributes_drive_groups_and_updates_regroup_live(fleet_factory: Any) -> None:
    """Priority and locality come from the resolver's endpoint attributes (no per-address
    map); a new snapshot that swaps priorities moves the traffic at once."""
    fleet = fleet_factory(4)
    a, b = fleet[:2], fleet[2:]
    name = f"groups{next(_names)}"
    cfg = {"loadBalancingConfig": [{"priority": {"childPolicy": [{"weighted_target": {
        "targets": {"us/east": {"weight": 3}, "us/west": {"weight": 1}}}}]}}]}

    def snapshot(primary: Sequence[Backend]) -> list[Endpoint]:
        return [Endpoint(x.address, 1, {
            "priority": 0 if x in primary else "1",           # ints or decimal strings
            "locality": {"region": "us", "zone": "east"} if i % 2 == 0 else "us/west"})
            for i, x in enumerate(fleet)]

    with lbclient.insecure_channel(f"feedgroups:///{name}", service_config=cfg) as ch:
        feed = _Feed.feeds[name]
        feed.push(snapshot(a))
        wait_eligible(ch, 4)
        stub = echo_pb2_grpc.EchoStub(ch)
        counts = spread(stub, 400)
        # level 0 = a; inside it a[0] is us/east (weight 3), a[1] is us/west (weight 1)
        assert set(counts) == {x.address for x in a}, counts
        assert abs(counts[a[0].address] - 300) <= 5, counts
        feed.push(snapshot(b))
        counts = spread(stub, 400)
        assert set(counts) == {x.address for x in b}, counts
        assert abs(counts[b[0].address] - 300) <= 5, counts
    assert feed.closed
