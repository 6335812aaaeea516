"""Policy contracts beyond the happy path: layouts rebuilt only when the endpoint list
changes, policies told nothing about the full list, retries for every policy, wrappers
forwarding hooks, weight sources, pruning of per-endpoint state, and the policies on the
asyncio channel and on real backends that stop and come back."""

from __future__ import annotations

import asyncio
import collections

import pytest
from helpers import set_in_flight, wait_until
from test_policy_support import (
    POLICY_CONFIGS,
    REQ,
    ManualClock,
    ManualScheduler,
    candidates,
    channel,
    info,
    make_policy,
)

import lbclient.aio
from lbclient.balancer.picker import CallOutcome
from lbclient.endpoint import Endpoint
from lbclient.policies import ring_hash
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

NAMES = sorted(POLICY_CONFIGS)


# ------------------------------------------------------------------ hash layouts
@pytest.mark.parametrize("name", ["ring_hash", "maglev"])
def test_layout_is_built_once_per_endpoint_list(name: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    policy = make_policy(name, POLICY_CONFIGS[name])
    builds: list[int] = []
    real = policy.make_layout

    def counting(members: list) -> object:  # type: ignore[type-arg]
        builds.append(len(members))
        return real(members)

    monkeypatch.setattr(policy, "make_layout", counting)
    cands = candidates(5)
    policy.endpoints_changed([c.endpoint for c in cands])
    for eligible in (cands, cands[1:], cands[2:], cands):  # eligibility changes only
        policy.build_picker(eligible)
    assert builds == [5]
    policy.endpoints_changed([c.endpoint for c in cands[:4]])  # discovery removes one
    policy.build_picker(cands[:4])
    assert builds == [5, 4]
    heavier = [Endpoint(c.address, 3 if i == 0 else 1) for i, c in enumerate(cands[:4])]
    policy.endpoints_changed(heavier)  # a weight change re-lays the slots
    policy.build_picker(cands[:4])
    assert builds == [5, 4, 4]


@pytest.mark.parametrize("name", ["ring_hash", "maglev"])
def test_candidates_unknown_to_the_resolver_join_the_layout(name: str) -> None:
    policy = make_policy(name, POLICY_CONFIGS[name])
    cands = candidates(4)
    # Never told the full list (a parent that does not forward endpoints_changed).
    picker = policy.build_picker(cands)
    got = collections.Counter(picker.pick(info(f"k{i}")).candidate.address
                              for i in range(2000))
    assert set(got) == {c.address for c in cands}


def test_member_without_ring_points_still_gets_calls_when_alone() -> None:
    # gRPC's cumulative rounding can leave an endpoint without a ring point when the
    # ring is tiny; when it is the only eligible endpoint, calls still go to it.
    assert ring_hash.point_counts([3, 1, 3], 1, 2) == [1, 1, 0]
    policy = make_policy("ring_hash", {"requestHashHeader": "x-key", "minRingSize": 1,
                                       "maxRingSize": 2})
    cands = candidates(3, [3, 1, 3])
    policy.endpoints_changed([c.endpoint for c in cands])
    policy.build_picker(cands)
    ring = policy._layout
    owners = {ring.members[m] for m in ring.owners}
    pointless = [c for c in cands if c.address not in owners]
    assert len(pointless) == 1
    only = policy.build_picker(pointless)
    assert {only.pick(info(f"k{i}")).candidate.address for i in range(20)} == {
        pointless[0].address}


# ------------------------------------------------------------------ retries
@pytest.mark.parametrize("name", NAMES)
def test_retry_never_reuses_a_tried_endpoint_while_another_is_left(name: str) -> None:
    cands = candidates(4, [1, 2, 3, 4])
    policy = make_policy(name, POLICY_CONFIGS[name], seed=11)
    policy.endpoints_changed([c.endpoint for c in cands])
    picker = policy.build_picker(cands)
    header = "x-session" if name == "sticky" else "x-key"
    for i in range(200):
        tried = {cands[i % 4].address, cands[(i + 1) % 4].address}
        r = picker.pick(info(f"key-{i % 13}", header, tried))
        assert r.candidate.address not in tried
        if r.counted:
            set_in_flight(r.candidate.stats, r.candidate.stats.in_flight - 1)
    everything = {c.address for c in cands}
    r = picker.pick(info("k", header, everything))  # all tried: any eligible one
    assert r.candidate.address in everything


# ------------------------------------------------------------------ weights
@pytest.mark.parametrize("name", ["weighted_round_robin", "least_connections",
                                  "least_request", "random", "ring_hash", "maglev",
                                  "peak_ewma"])
def test_weights_map_overrides_discovered_weight(name: str) -> None:
    cfg = {**POLICY_CONFIGS[name], "weights": {"10.0.0.2:50051": 7.5}}
    policy = make_policy(name, cfg)
    a, b = candidates(2, [3, 1])
    assert policy.endpoint_weight(a) == 3
    assert policy.endpoint_weight(b) == 7.5


def test_sticky_forwards_hooks_to_its_child() -> None:
    policy = make_policy("sticky", {"sessionHeader": "x-session", "childPolicy": [
        {"ring_hash": {"requestHashHeader": "x-key", "weights": {"10.0.0.1:50051": 4}}}]})
    cands = candidates(3)
    assert policy.endpoint_weight(cands[0]) == 4
    policy.endpoints_changed([c.endpoint for c in cands])
    assert policy.child._all == tuple(c.endpoint for c in cands)
    picker = policy.build_picker(cands)
    # Without a session the ring child hashes x-key: the same key, the same endpoint.
    assert len({picker.pick(info("user-1")).candidate.address for _ in range(20)}) == 1
    policy.close()


# ------------------------------------------------------------------ per-endpoint state
def test_wrr_forgets_load_of_endpoints_that_left() -> None:
    clock = ManualClock()
    policy = make_policy("weighted_round_robin", {"blackoutPeriod": "0s"}, clock=clock,
                         scheduler=ManualScheduler(clock))
    cands = candidates(3)
    picker = policy.build_picker(cands)
    from lbclient._proto.orca_load_report_pb2 import OrcaLoadReport

    data = OrcaLoadReport(cpu_utilization=0.5, rps_fractional=10).SerializeToString()
    for _ in range(9):
        r = picker.pick(info())
        r.on_done(CallOutcome("OK", 0.001, (("x-endpoint-load-metrics-bin", data),)))
    assert set(policy._loads) == {c.address for c in cands}
    policy.build_picker(cands[:2])
    assert set(policy._loads) == {c.address for c in cands[:2]}


def test_wrr_without_scheduler_still_learns_at_rebuilds() -> None:
    clock = ManualClock()
    policy = make_policy("weighted_round_robin", {"blackoutPeriod": "0s"}, clock=clock)
    cands = candidates(2)
    picker = policy.build_picker(cands)
    from lbclient._proto.orca_load_report_pb2 import OrcaLoadReport

    fast = OrcaLoadReport(cpu_utilization=0.25, rps_fractional=10).SerializeToString()
    slow = OrcaLoadReport(cpu_utilization=0.75, rps_fractional=10).SerializeToString()
    for _ in range(4):
        r = picker.pick(info())
        data = fast if r.candidate is cands[0] else slow
        r.on_done(CallOutcome("OK", 0.001, (("endpoint-load-metrics-bin", data),)))
    assert policy.build_picker(cands).weights == (40, pytest.approx(40 / 3))


def test_sticky_table_stays_bounded_under_8_threads() -> None:
    from test_policy_support import run_threads

    policy = make_policy("sticky", {"sessionHeader": "x-session", "maxSessions": 50})
    cands = candidates(3)
    picker = policy.build_picker(cands)

    def work(t: int) -> None:
        for i in range(300):
            r = picker.pick(info(f"s{t}-{i % 40}", "x-session"))
            assert r.candidate in cands

    run_threads(8, work)
    assert len(policy.sessions) <= 50
    # Every remembered session still maps to a live endpoint.
    assert {policy.session_endpoint(k) for k in list(policy.sessions)} <= {
        c.address for c in cands}


# ------------------------------------------------------------------ real backends
@pytest.mark.parametrize("name", ["ring_hash", "maglev"])
def test_stopped_backend_moves_only_its_keys_and_gets_them_back(name: str,
                                                                fleet: Fleet) -> None:
    cfg = {name: {"requestHashHeader": "x-key", **(
        {"tableSize": 1009} if name == "maglev" else {})}}
    keys = [f"user-{i}" for i in range(60)]
    with channel(fleet, cfg) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)

        def route() -> dict[str, str]:
            return {k: stub.Unary(REQ, timeout=10, metadata=(("x-key", k),)).address
                    for k in keys}

        before = route()
        victim = fleet.by_address(before["user-0"])
        index = fleet.addresses.index(victim.address)
        victim.stop()
        wait_until(lambda: ch.endpoints()[index].connectivity != "READY", 10,
                   message="stopped backend leaves READY")
        during = route()
        for k in keys:
            if before[k] == victim.address:
                assert during[k] != victim.address
            else:
                assert during[k] == before[k], "a key of a healthy backend moved"
        victim.restart()
        wait_until(lambda: ch.endpoints()[index].connectivity == "READY", 20,
                   message="restarted backend READY again")
        assert route() == before


@pytest.mark.parametrize("name", ["least_connections", "sticky", "weighted_round_robin",
                                  "ring_hash"])
def test_policies_on_the_asyncio_channel(name: str, fleet: Fleet) -> None:
    header = "x-session" if name == "sticky" else "x-key"

    async def main() -> collections.Counter[str]:
        cfg = {"loadBalancingConfig": [{name: POLICY_CONFIGS[name]}]}
        async with lbclient.aio.insecure_channel(fleet.target, service_config=cfg) as ch:
            for _ in range(1000):
                if sum(e.connectivity == "READY" for e in ch.endpoints()) == 3:
                    break
                await asyncio.sleep(0.01)
            stub = echo_pb2_grpc.EchoStub(ch)
            replies = await asyncio.gather(*(
                stub.Unary(echo_pb2.EchoRequest(message="x"), timeout=10,
                           metadata=((header, f"k{i % 2}"),)) for i in range(60)))
            assert all(e.in_flight == 0 for e in ch.endpoints())
            return collections.Counter(r.address for r in replies)

    got = asyncio.run(asyncio.wait_for(main(), 60))
    assert sum(got.values()) == 60
    if name in ("sticky", "ring_hash"):  # two keys: at most two backends
        assert len(got) <= 2
    else:
        assert len(got) == 3
