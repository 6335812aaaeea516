"""Picker rebuilds that stay cheap at 10,000 endpoints without changing what they build:
the weighted round robin cycle per weight class, ring edits in place, Maglev tables
filled in slices on the scheduler, cached members, groups and subsets. Each fast path is
checked against the plain computation it replaces."""

from __future__ import annotations

import collections
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_policy_support import ManualClock, ManualScheduler, candidates, info, make_policy

from lbclient.balancer.picker import Candidate, EndpointStats
from lbclient.endpoint import Endpoint
from lbclient.policies import weighted_round_robin as wrr
from lbclient.policies.maglev import MaglevTable, build_table
from lbclient.policies.subsetting_deterministic import deterministic_subset
from lbclient.policies.subsetting_random import rendezvous_subset


# ------------------------------------------------------------------ weighted round robin
def naive_smooth(ints: list[int]) -> list[int]:
    """nginx's smooth weighted round robin as written: O(n) per step."""
    total, current, order = sum(ints), [0] * len(ints), []
    for _ in range(total):
        current = [c + w for c, w in zip(current, ints, strict=True)]
        best = max(range(len(ints)), key=current.__getitem__)
        current[best] -= total
        order.append(best)
    return order


def naive_edf(ints: list[int]) -> list[int]:
    return [i for _, i in sorted(((k + 0.5) / w, i) for i, w in enumerate(ints)
                                 for k in range(w))]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([1, 1, 2, 3, 4, 5, 7, 12, 25]), min_size=1, max_size=14))
def test_cycles_by_weight_class_equal_the_plain_algorithms(ints: list[int]) -> None:
    assert wrr.smooth_schedule(ints) == naive_smooth(ints)
    assert wrr.edf_schedule(ints) == naive_edf(ints)


@pytest.mark.parametrize(("n", "smooth"), [(300, True), (10_000, False)])
def test_large_fleets_get_exact_cycles(n: int, smooth: bool) -> None:
    ints = [1 + i % 5 for i in range(n)]
    cycle = wrr.schedule(ints)
    assert collections.Counter(cycle) == dict(enumerate(ints))
    if smooth:   # 900 entries x 5 classes: within the smooth cycle's budget
        assert cycle[:2 * n] == naive_smooth(ints)[:2 * n]
    else:
        assert cycle == naive_edf(ints)


def test_wrr_results_are_made_once_per_endpoint_connection() -> None:
    policy = make_policy("weighted_round_robin")
    cands = candidates(3, [1, 2, 3])
    first = policy.build_picker(cands)
    again = policy.build_picker([c.with_weight(c.weight) for c in cands])
    assert {id(r) for r in first._results} == {id(r) for r in again._results}
    moved = Candidate(cands[0].endpoint, 1, EndpointStats(cands[0].stats.clock), None)
    fresh = policy.build_picker([moved, *cands[1:]])
    assert any(r.candidate is moved for r in fresh._results)


# ------------------------------------------------------------------ ring_hash
@settings(max_examples=40, deadline=None)
@given(st.data())
def test_ring_edits_equal_a_ring_built_from_scratch(data: st.DataObject) -> None:
    """After any sequence of updates the edited ring is exactly the sorted points of its
    members for the point counts it chose (which follow gRPC's rule or the kept scale;
    tests/test_policy_hashing.py checks those), hashed afresh."""
    pool = [Endpoint(f"10.1.{i // 200}.{i % 200}:80", data.draw(st.sampled_from([1, 2, 3])))
            for i in range(data.draw(st.integers(2, 120)))]
    cfg = {"requestHashHeader": "x-key", "minRingSize": data.draw(st.sampled_from([8, 512]))}
    policy = make_policy("ring_hash", cfg)
    current = pool[: len(pool) // 2 + 1]
    for _ in range(6):
        changes = data.draw(st.lists(st.sampled_from(pool), max_size=3))
        for e in changes:
            if e in current and len(current) > 1:
                current.remove(e)
            elif e not in current:
                current.append(e)
        policy.endpoints_changed(current)
        ring = policy.layout_for([])
        fresh = make_policy("ring_hash", cfg)
        points = sorted((h, a, a) for a, (_, count, _) in policy._ring_counts.items()
                        for h in fresh._point_hashes(a, count)[:count])
        assert {e.address for e in current} == set(policy._ring_counts)
        assert ring.hashes == [h for h, _, _ in points]
        assert [ring.members[o] for o in ring.owners] == [a for _, _, a in points]


@pytest.mark.parametrize(("cfg", "before", "after"), [
    ({}, 100, 99),                           # one leaves (4,096 points: the scale stays)
    ({"maxRingSize": 8192}, 99, 100),         # one joins while the ring may grow
])
def test_one_endpoint_more_or_less_edits_the_ring_in_place(cfg: dict[str, Any],
                                                           before: int, after: int) -> None:
    policy = make_policy("ring_hash", {"requestHashHeader": "x-key", **cfg})
    eps = [Endpoint(f"10.6.0.{i}:80") for i in range(1, 101)]
    policy.endpoints_changed(eps[:before])
    policy.layout_for([])
    points, counts = policy._sorted, dict(policy._ring_counts)
    policy.endpoints_changed(eps[:after])
    ring = policy.layout_for([])
    assert policy._sorted is points                       # edited, not rebuilt
    assert {a: c for a, c in policy._ring_counts.items() if a in counts} == \
        {a: c for a, c in counts.items() if a in policy._ring_counts}   # nobody else moved
    owners = collections.Counter(ring.members[o] for o in ring.owners)
    assert owners == {a: c for a, (_, c, _) in policy._ring_counts.items() if c}


def test_eligibility_changes_reuse_the_layout_object() -> None:
    for name in ("ring_hash", "maglev"):
        policy = make_policy(name, {"requestHashHeader": "x-key"} | (
            {"tableSize": 251} if name == "maglev" else {}))
        cands = candidates(6)
        policy.endpoints_changed([c.endpoint for c in cands])
        layouts = {id(policy.layout_for(cands)), id(policy.layout_for(cands[2:])),
                   id(policy.layout_for(cands[:1]))}
        assert len(layouts) == 1, name


# ------------------------------------------------------------------ maglev
def maglev_with_scheduler(table: int = 1009) -> tuple[Any, ManualScheduler, list[int]]:
    clock = ManualClock()
    sched = ManualScheduler(clock)
    rebuilds: list[int] = []
    policy = make_policy("maglev", {"requestHashHeader": "x-key", "tableSize": table},
                         clock=clock, scheduler=sched, rebuild=lambda: rebuilds.append(1))
    return policy, sched, rebuilds


def test_maglev_fills_later_tables_in_slices_and_keeps_the_old_one_meanwhile() -> None:
    policy, sched, rebuilds = maglev_with_scheduler(table=65537)
    cands = candidates(20)
    policy.endpoints_changed([c.endpoint for c in cands])
    first = policy.build_picker(cands)                 # the first table: at once
    assert not policy.layout_pending and sched.timers == []
    keys = [f"user-{i}" for i in range(400)]
    before = {k: first.pick(info(k)).candidate.address for k in keys}
    # One endpoint leaves, another joins: the old table serves, the leaver is skipped.
    joined = candidates(21)[20:]
    now = [*cands[1:], *joined]
    policy.endpoints_changed([c.endpoint for c in now])
    during = policy.build_picker(now)
    assert policy.layout_pending
    moved = {k for k in keys if during.pick(info(k)).candidate.address != before[k]}
    assert all(before[k] == cands[0].address for k in moved)        # only its keys
    assert all(during.pick(info(k)).candidate is not joined[0] for k in keys)
    slices = 0
    while sched.run_due():
        slices += 1
    assert slices > 3 and rebuilds == [1]             # several slices, then one rebuild
    after = policy.build_picker(now)
    assert not policy.layout_pending
    table = policy._layout
    assert isinstance(table, MaglevTable)
    members = sorted(c.address for c in now)
    assert table.owners == build_table(members, [1.0] * len(members), 65537)
    assert any(after.pick(info(k)).candidate is joined[0] for k in keys)


def test_maglev_superseded_fill_is_dropped() -> None:
    policy, sched, rebuilds = maglev_with_scheduler()
    cands = candidates(8)
    policy.endpoints_changed([c.endpoint for c in cands])
    policy.build_picker(cands)
    policy.endpoints_changed([c.endpoint for c in cands[1:]])
    policy.build_picker(cands[1:])
    policy.endpoints_changed([c.endpoint for c in cands[2:]])     # before the first ends
    policy.build_picker(cands[2:])
    while sched.run_due():
        pass
    assert rebuilds == [1]
    policy.build_picker(cands[2:])
    members = sorted(c.address for c in cands[2:])
    assert policy._layout.owners == build_table(members, [1.0] * 6, 1009)


def test_maglev_without_a_scheduler_fills_at_once_and_finish_layout_completes() -> None:
    policy = make_policy("maglev", {"requestHashHeader": "x-key", "tableSize": 251})
    cands = candidates(5)
    policy.endpoints_changed([c.endpoint for c in cands])
    policy.build_picker(cands)
    policy.endpoints_changed([c.endpoint for c in cands[:4]])
    policy.build_picker(cands[:4])
    assert not policy.layout_pending and not policy.finish_layout()
    members = sorted(c.address for c in cands[:4])
    assert policy._layout.owners == build_table(members, [1.0] * 4, 251)


def test_maglev_close_stops_a_fill() -> None:
    policy, sched, rebuilds = maglev_with_scheduler()
    cands = candidates(8)
    policy.endpoints_changed([c.endpoint for c in cands])
    policy.build_picker(cands)
    policy.endpoints_changed([c.endpoint for c in cands[1:]])
    policy.build_picker(cands[1:])
    policy.close()
    while sched.run_due():
        pass
    assert rebuilds == []


# ------------------------------------------------------------------ members, groups
def test_members_are_recomputed_only_for_changed_endpoints() -> None:
    policy = make_policy("ring_hash", {"requestHashHeader": "x-key"})
    eps = [Endpoint(f"10.2.0.{i}:80") for i in range(1, 30)]
    policy.endpoints_changed(eps)
    first = policy.members([])
    heavier = Endpoint(eps[3].address, 4)
    policy.endpoints_changed([*eps[:3], heavier, *eps[4:], Endpoint("10.2.1.1:80")])
    second = policy.members([])
    assert len(second) == 30 and second == sorted(second)
    assert (eps[3].address, eps[3].address, 4.0) in second
    assert all(a is b for a, b in zip(first[:3], second[:3], strict=True))   # reused


def test_group_keys_are_cached_until_the_endpoint_changes() -> None:
    policy = make_policy("zone_aware", {"localZone": "a"})
    e = Endpoint("10.3.0.1:80", attributes={"zone": "a"})
    calls: list[Endpoint] = []
    real = policy.group_of

    def counting(endpoint: Endpoint) -> Any:
        calls.append(endpoint)
        return real(endpoint)

    policy.group_of = counting
    assert policy.group(e) == policy.group(e) == 0
    assert len(calls) == 1
    moved = Endpoint(e.address, attributes={"zone": "b"})
    assert policy.group(moved) == 2 and len(calls) == 2


def test_weighted_target_names_each_childs_locality() -> None:
    from lbclient.balancer.lb_metrics import LOCALITY_OPTION
    policy = make_policy("weighted_target", {"targets": {
        "east": {"weight": 1}, "west": {"weight": 1}}})
    eps = [Endpoint("10.4.0.1:80", attributes={"zone": "east"}),
           Endpoint("10.4.0.2:80", attributes={"zone": "west"})]
    policy.endpoints_changed(eps)
    assert {k: c.ctx.options[LOCALITY_OPTION]
            for k, c in policy.children._children.items()} == {"east": "east",
                                                                "west": "west"}


# ------------------------------------------------------------------ subsetting
@settings(max_examples=30, deadline=None)
@given(st.data())
def test_subsets_follow_updates_exactly_as_the_pure_functions(data: st.DataObject) -> None:
    pool = [f"10.5.{i // 100}.{i % 100}:80" for i in range(data.draw(st.integers(5, 300)))]
    size = data.draw(st.integers(1, 12))
    index = data.draw(st.integers(0, 40))
    det = make_policy("deterministic_subsetting", {
        "clientIndex": index, "subsetSize": size, "childPolicy": [{"round_robin": {}}]})
    rnd = make_policy("random_subsetting", {
        "subsetSize": size, "childPolicy": [{"round_robin": {}}]})
    rng = random.Random(data.draw(st.integers(0, 99)))
    current = list(pool[: len(pool) // 2])
    for _ in range(5):
        for _ in range(rng.choice([0, 1, 2, 40])):
            a = rng.choice(pool)
            if a in current and len(current) > 1:
                current.remove(a)
            elif a not in current:
                current.append(a)
        eps = [Endpoint(a) for a in current]
        got = [e.address for e in det.select_endpoints(eps)]
        assert got == deterministic_subset(current, index, size)
        got = [e.address for e in rnd.select_endpoints(eps)]
        assert got == rendezvous_subset(current, size, rnd.seed)
