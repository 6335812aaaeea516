"""least_connections: exact weighted least in-flight in O(log n) (the index of
``lbclient.balancer.load_index``), table-driven cases, a model check of random operation
sequences, the in-flight watchers of EndpointStats, and threads hammering pick and done."""

from __future__ import annotations

import collections
import itertools
import random
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import set_in_flight
from hypothesis import given, settings
from hypothesis import strategies as st
from test_policy_support import candidates, info, make_policy, run_threads

from lbclient.balancer.load_index import LoadIndex
from lbclient.balancer.picker import CallOutcome, Candidate, EndpointStats

pytestmark = pytest.mark.timeout(120)

OK = CallOutcome("OK", 0.001)


def build(weights: list[float], in_flight: list[int], seed: int = 1
          ) -> tuple[Any, Any, list[Candidate]]:
    cands = candidates(len(weights), weights)
    for c, n in zip(cands, in_flight, strict=True):
        set_in_flight(c.stats, n)
    policy = make_policy("least_connections", seed=seed)
    return policy, policy.build_picker(cands), cands


def undo(result: Any) -> None:
    """End a pick at once (what the channel does when the call ends)."""
    assert result.counted
    result.candidate.stats.record(0.001, False)


def tree_is_consistent(index: LoadIndex) -> bool:
    """Tree: every node holds the least score of its children and the weight tied at
    it. Buckets: every slot is where its count says, and the least bucket is known."""
    with index._lock:
        return not index.problems()


# ------------------------------------------------------------------ table-driven
CASES = [
    # (weights, in-flight before, excluded indexes, allowed winners)
    pytest.param([5, 2, 3], [5, 3, 4], (), {0}, id="seed example: 1.0 < 1.33 < 1.5"),
    pytest.param([1, 1, 1], [2, 0, 1], (), {1}, id="equal weights: fewest in flight"),
    pytest.param([1, 1, 1], [0, 0, 3], (), {0, 1}, id="tie among the idle"),
    pytest.param([1, 4], [1, 3], (), {1}, id="weight 4 with 3 beats weight 1 with 1"),
    pytest.param([1, 2], [1, 2], (), {0, 1}, id="equal scores tie"),
    pytest.param([1, 1, 1], [0, 1, 2], (0,), {1}, id="a retry skips the tried one"),
    pytest.param([1, 1, 1], [0, 5, 5], (0, 1, 2), {0}, id="all tried: least of all"),
    pytest.param([1, 1, 1], [3, 3, 0], (0, 1), {2}, id="the untried one even if busy"),
    pytest.param([0.25, 1], [0, 1], (), {0}, id="fractional weight (slow start)"),
    pytest.param([0.25, 1], [1, 3], (), {1}, id="4 per unit vs 3 per unit"),
]


@pytest.mark.parametrize(("weights", "loads", "tried", "allowed"), CASES)
def test_picks_the_least_score(weights: list[float], loads: list[int],
                               tried: tuple[int, ...], allowed: set[int]) -> None:
    _, picker, cands = build(weights, loads)
    exclude = {cands[i].address for i in tried}
    for _ in range(30):
        r = picker.pick(info(exclude=exclude))
        assert cands.index(r.candidate) in allowed
        assert r.counted and r.candidate.stats.in_flight == loads[cands.index(r.candidate)] + 1
        undo(r)
    assert [c.stats.in_flight for c in cands] == loads


@pytest.mark.parametrize(("weights", "expected"), [
    ([1, 1, 1, 3], [1 / 6, 1 / 6, 1 / 6, 1 / 2]),
    ([2, 1, 1], [0.5, 0.25, 0.25]),
    ([1] * 10, [0.1] * 10),
])
def test_idle_ties_follow_the_weights(weights: list[int], expected: list[float]) -> None:
    _, picker, cands = build(weights, [0] * len(weights), seed=7)
    got: collections.Counter[str] = collections.Counter()
    for _ in range(6000):
        r = picker.pick(info())
        got[r.candidate.address] += 1
        undo(r)
    for c, share in zip(cands, expected, strict=True):
        assert abs(got[c.address] / 6000 - share) < 0.03, (got, expected)


def test_under_load_calls_follow_the_weights_exactly() -> None:
    """No call ends: after k picks every endpoint is within one call of its share."""
    _, picker, cands = build([1, 2, 3], [0, 0, 0])
    for _ in range(600):
        picker.pick(info())
    assert [c.stats.in_flight for c in cands] == [100, 200, 300]


def test_rebuild_moves_only_what_changed() -> None:
    policy, picker, cands = build([1, 1, 1, 1], [0, 0, 0, 0])
    index: LoadIndex = policy.index
    # Eligibility: B leaves; picks never reach it, and its later ends do not matter.
    set_in_flight(cands[1].stats, 0)
    policy.build_picker([cands[0], cands[2], cands[3]])
    for _ in range(9):
        assert picker.pick(info()).candidate is not cands[1]   # the old picker too
    assert [c.stats.in_flight for c in cands] == [3, 0, 3, 3]
    assert cands[1].address not in index.slot_scores()
    # B comes back with a call in flight begun elsewhere: it is seen.
    cands[1].stats.begin()
    policy.build_picker(cands)
    assert index.slot_scores()[cands[1].address] == (1.0, 1)
    got = [cands.index(picker.pick(info()).candidate) for _ in range(2)]
    assert got == [1, 1]
    # Slow start: a weight change takes effect at the next build.
    policy.build_picker([cands[0].with_weight(4), *cands[1:]])
    assert picker.pick(info()).candidate.address == cands[0].address   # 3/4 < 3
    assert tree_is_consistent(index)


def test_an_address_added_again_with_new_stats_gets_a_fresh_slot() -> None:
    policy, picker, cands = build([1, 1], [2, 1])
    fresh = Candidate(cands[0].endpoint, 1, EndpointStats(cands[0].stats.clock), None)
    policy.build_picker([fresh, cands[1]])
    r = picker.pick(info())
    assert r.candidate is fresh and fresh.stats.in_flight == 1   # 0 < 1
    set_in_flight(cands[0].stats, 0)   # the old record's calls end: no effect
    assert policy.index.slot_scores()[fresh.address] == (1.0, 1)


def test_many_endpoints_grow_and_shrink() -> None:
    policy = make_policy("least_connections")
    cands = candidates(300, prefix="10.1.")
    picker = policy.build_picker(cands[:3])
    for size in (5, 40, 300, 17, 290, 1):
        chosen = cands[:size]
        policy.build_picker(chosen)
        assert len(policy.index) == size
        assert tree_is_consistent(policy.index)
        rs = [picker.pick(info()) for _ in range(size)]
        assert {r.candidate.address for r in rs} == {c.address for c in chosen}
        for r in rs:
            undo(r)


def test_equal_weights_use_buckets_and_switch_back_and_forth() -> None:
    policy, picker, cands = build([1, 1, 1], [2, 0, 1])
    index: LoadIndex = policy.index
    assert index.bucketed
    assert picker.pick(info()).candidate is cands[1]              # 0 < 1 < 2
    policy.build_picker([cands[0].with_weight(4), *cands[1:]])   # slow start ends: 2/4
    assert not index.bucketed and tree_is_consistent(index)
    assert picker.pick(info()).candidate.address == cands[0].address   # 0.5 < 1
    policy.build_picker(cands)
    assert index.bucketed and tree_is_consistent(index)
    assert {a: n for a, (_, n) in index.slot_scores().items()} == {
        cands[0].address: 3, cands[1].address: 1, cands[2].address: 1}


def test_close_stops_watching() -> None:
    policy, picker, cands = build([1, 1], [0, 0])
    assert cands[0].stats._watcher is not None
    policy.close()
    assert all(c.stats._watcher is None for c in cands)


# ------------------------------------------------------------------ EndpointStats watchers
def test_watchers_run_after_every_change_of_in_flight() -> None:
    stats = EndpointStats(lambda: 0.0)
    seen: list[tuple[str, int]] = []
    a = lambda: seen.append(("a", stats.in_flight))  # noqa: E731
    b = lambda: seen.append(("b", stats.in_flight))  # noqa: E731
    stats.watch_in_flight(a)
    stats.begin()
    stats.record(0.01, False)
    assert stats.try_begin(0)
    stats.discard()
    assert seen == [("a", 1), ("a", 0), ("a", 1), ("a", 0)]
    seen.clear()
    stats.watch_in_flight(b)
    stats.begin()
    stats.begin_unwatched()          # the watcher's owner counts this one itself
    stats.end(OK, False)
    assert seen == [("a", 1), ("b", 1), ("a", 1), ("b", 1)]
    stats.unwatch_in_flight(a)
    stats.unwatch_in_flight(a)       # twice: no-op
    seen.clear()
    stats.discard()
    assert seen == [("b", 0)]
    stats.unwatch_in_flight(b)
    assert stats._watcher is None


def test_two_policies_watching_one_endpoint_both_stay_exact() -> None:
    cands = candidates(2)
    p1, p2 = make_policy("least_connections"), make_policy("least_connections")
    k1, k2 = p1.build_picker(cands), p2.build_picker(cands)
    r = k1.pick(info())
    assert k2.pick(info()).candidate is not r.candidate   # p2 saw p1's pick
    undo(r)
    assert p1.index.slot_scores() == p2.index.slot_scores() == {
        c.address: (float(c.stats.in_flight), c.stats.in_flight) for c in cands}


# ------------------------------------------------------------------ model check
OPS = st.lists(st.tuples(st.sampled_from(["pick", "end", "begin", "build"]),
                         st.integers(0, 5), st.integers(0, 63)), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(weights=st.lists(st.sampled_from([1, 2, 3, 0.5]), min_size=1, max_size=6), ops=OPS)
def test_every_pick_takes_a_least_scored_eligible_endpoint(weights: list[float],
                                                           ops: list[Any]) -> None:
    cands = candidates(len(weights), weights)
    policy = make_policy("least_connections", seed=3)
    eligible = list(cands)
    picker = policy.build_picker(eligible)
    for op, k, bits in ops:
        if op == "pick":
            tried = {c.address for i, c in enumerate(eligible) if bits >> i & 1}
            pool = [c for c in eligible if c.address not in tried] or eligible
            best = min(c.stats.in_flight / c.weight for c in pool)
            r = picker.pick(info(exclude=tried))
            assert r.candidate.address in {c.address for c in pool}
            assert (r.candidate.stats.in_flight - 1) / r.candidate.weight == best
        elif op == "end":
            busy = [c for c in cands if c.stats.in_flight]
            if busy:
                busy[k % len(busy)].stats.record(0.001, False)
        elif op == "begin":                  # a call begun by another picker (sticky)
            cands[k % len(cands)].stats.begin()
        else:                                # eligibility and slow-start weights change
            eligible = [c.with_weight(c.weight * (1 + (bits >> i & 1)))
                        for i, c in enumerate(cands) if bits >> (i + 3) & 1 or i == k % 2]
            eligible = eligible or [cands[0]]
            policy.build_picker(eligible)
        scores = policy.index.slot_scores()
        assert {a: s for a, (s, _) in scores.items()} == {
            c.address: c.stats.in_flight / c.weight for c in eligible}
        assert tree_is_consistent(policy.index)


# ------------------------------------------------------------------ threads
@pytest.fixture
def often_switching() -> Iterator[None]:
    """Threads switch every microsecond, so interleavings a quiet 5 ms GIL slice would
    rarely produce happen thousands of times."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@pytest.mark.usefixtures("often_switching")
@pytest.mark.parametrize("weights", [[1, 2, 3, 1, 5], [1, 1, 1, 1, 1]], ids=["tree", "buckets"])
def test_picks_from_many_threads_are_linearizable(weights: list[int]) -> None:
    """Only picks, no ends: each pick took the least score at its moment, so for every
    pair i, j the last call placed on i was placed while i's score was at most j's:
    (n_i - 1) / w_i <= n_j / w_j. The compare and the count are one step, so this holds
    exactly, with 8 threads."""
    policy, picker, cands = build(weights, [0] * 5)
    assert policy.index.bucketed == (len(set(weights)) == 1)
    run_threads(8, lambda _: [picker.pick(info()) for _ in range(300)])
    loads = [c.stats.in_flight for c in cands]
    assert sum(loads) == 2400
    for ci, wi in zip(loads, weights, strict=True):
        for cj, wj in zip(loads, weights, strict=True):
            assert (ci - 1) / wi <= cj / wj, (loads, weights)


@pytest.mark.usefixtures("often_switching")
@pytest.mark.parametrize("weights", [[1, 2, 1, 3, 1, 2], [2] * 6], ids=["tree", "buckets"])
def test_threads_hammering_pick_and_done_keep_exact_counts(weights: list[int]) -> None:
    """8 threads pick and end calls (ending them in random order, and sometimes ending
    the call on another thread); a monitor checks under the index's lock that the tree is
    consistent and that no endpoint counts fewer calls than it has in flight, nor more
    than its ends still on their way (counter decremented, watcher not run yet)."""
    policy, picker, cands = build(weights, [0] * 6)
    index: LoadIndex = policy.index
    pending = {c.address: [] for c in cands}    # tokens: ends in progress per endpoint
    handed: list[Any] = []                      # calls handed to another thread to end
    stop = threading.Event()
    violations: list[str] = []
    checks = itertools.count()
    picks = itertools.count()

    def end(r: Any) -> None:
        tokens = pending[r.candidate.address]
        tokens.append(None)
        r.candidate.stats.end(OK, False)
        tokens.pop()

    def worker(i: int) -> None:
        rng = random.Random(i)
        mine: list[Any] = []
        for _ in range(1500):
            mine.append(picker.pick(info()))
            next(picks)
            while mine and rng.random() < 0.45:
                r = mine.pop(rng.randrange(len(mine)))
                if rng.random() < 0.2:
                    handed.append(r)
                else:
                    end(r)
            while handed and rng.random() < 0.5:
                try:
                    end(handed.pop())
                except IndexError:
                    break
        for r in mine:
            end(r)

    def monitor() -> None:
        while not stop.is_set():
            with index._lock:
                for c, w in zip(cands, weights, strict=True):
                    counted = round(index._held(index._slot[c.address]) * w)
                    actual = c.stats.in_flight
                    if not 0 <= counted - actual <= len(pending[c.address]):
                        violations.append(f"{c.address}: counted {counted}, "
                                          f"in flight {actual}")
            if not tree_is_consistent(index):
                violations.append("tree inconsistent")
            next(checks)

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    try:
        run_threads(8, worker, timeout=90)
        while handed:
            end(handed.pop())
    finally:
        stop.set()
        watcher.join(10)
    assert not violations, violations[:5]
    assert next(checks) > 10
    assert next(picks) == 8 * 1500
    assert all(c.stats.in_flight == 0 for c in cands)
    assert sum(c.stats.picks for c in cands) == sum(c.stats.calls for c in cands) == 12000
    assert set(index.slot_scores().values()) == {(0.0, 0)}
    assert tree_is_consistent(index)
