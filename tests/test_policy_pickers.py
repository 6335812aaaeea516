"""Pure picker tests for every balancing policy (seeded randomness, fake candidates):
never an ineligible endpoint (hypothesis), safe under 8 threads, the seed's worked
examples, retries avoiding tried endpoints, and each algorithm's distribution."""

from __future__ import annotations

import collections
import itertools
import random
import threading

import pytest
from helpers import set_in_flight
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy_support import (
    METHOD,
    POLICY_CONFIGS,
    ManualClock,
    candidates,
    counts,
    info,
    make_policy,
    run_threads,
)

from lbclient.balancer.picker import CallOutcome, EndpointStats, PickInfo

NAMES = sorted(POLICY_CONFIGS)


# ------------------------------------------------------------------ every policy
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_never_returns_an_ineligible_endpoint(name: str, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 10), label="endpoints")
    weights = data.draw(st.lists(st.integers(1, 5), min_size=n, max_size=n), label="weights")
    every = candidates(n, weights)
    mask = data.draw(st.lists(st.booleans(), min_size=n, max_size=n).filter(any),
                     label="eligible")
    eligible = [c for c, ok in zip(every, mask, strict=True) if ok]
    for c in every:
        set_in_flight(c.stats, data.draw(st.integers(0, 4)))
    policy = make_policy(name, POLICY_CONFIGS[name], seed=data.draw(st.integers(0, 99)))
    policy.endpoints_changed([c.endpoint for c in every])   # the resolver knows them all
    picker = policy.build_picker([c.with_weight(policy.endpoint_weight(c)) for c in eligible])
    allowed = {c.address for c in eligible}
    for _ in range(data.draw(st.integers(1, 15), label="picks")):
        key = data.draw(st.one_of(st.none(), st.text(max_size=8)), label="key")
        tried = data.draw(st.sets(st.sampled_from(sorted(allowed))), label="exclude")
        header = "x-session" if name == "sticky" else "x-key"
        result = picker.pick(info(key, header, tried))
        assert result.candidate.address in allowed
        if allowed - tried:  # another untried endpoint exists: a retry must use one
            assert result.candidate.address not in tried


def _channel_like(result: object) -> None:
    """Do what the channel does with a pick: count it, end it, call on_done."""
    c = result.candidate  # type: ignore[attr-defined]
    if not result.counted:  # type: ignore[attr-defined]
        c.stats.begin()
    outcome = CallOutcome("OK", 0.001)
    c.stats.end(outcome, False)
    if result.on_done is not None:  # type: ignore[attr-defined]
        result.on_done(outcome)


@pytest.mark.parametrize("name", NAMES)
def test_eight_threads_pick_concurrently(name: str) -> None:
    cands = candidates(5, [1, 2, 3, 1, 2])
    policy = make_policy(name, POLICY_CONFIGS[name])
    policy.endpoints_changed([c.endpoint for c in cands])
    picker = policy.build_picker(cands)
    allowed = {c.address for c in cands}
    seen: list[collections.Counter[str]] = [collections.Counter() for _ in range(8)]

    def work(t: int) -> None:
        for i in range(400):
            r = picker.pick(info(f"k{(t * 400 + i) % 37}",
                                 "x-session" if name == "sticky" else "x-key"))
            assert r.candidate.address in allowed
            seen[t][r.candidate.address] += 1
            _channel_like(r)

    run_threads(8, work)
    total = sum(seen, collections.Counter())
    assert sum(total.values()) == 3200
    assert all(c.stats.in_flight == 0 for c in cands)
    assert sum(c.stats.calls for c in cands) == 3200


# ------------------------------------------------------------------ weighted round robin
def test_wrr_seed_example_5_3_2() -> None:
    policy = make_policy("weighted_round_robin")
    picker = policy.build_picker(candidates(3, [5, 3, 2]))
    seq = [picker.pick(info()).candidate.address[-7] for _ in range(200)]
    for start in range(len(seq) - 10):  # every 10 consecutive picks, wherever they start
        window = collections.Counter(seq[start:start + 10])
        assert sorted(window.values()) == [2, 3, 5], window
    longest = max(len(list(g)) for _, g in itertools.groupby(seq))
    assert longest <= 2, "picks of the heaviest endpoint must be interleaved"


def test_wrr_exact_under_8_threads() -> None:
    picker = make_policy("weighted_round_robin").build_picker(candidates(3, [5, 3, 2]))
    got: list[str] = []
    lock = threading.Lock()

    def work(_: int) -> None:
        mine = [picker.pick(info()).candidate.address for _ in range(250)]
        with lock:
            got.extend(mine)

    run_threads(8, work)
    assert sorted(collections.Counter(got).values()) == [400, 600, 1000]


def test_wrr_equal_weights_is_round_robin_and_large_weights_quantize() -> None:
    picker = make_policy("weighted_round_robin").build_picker(candidates(4))
    assert sorted(counts(picker, 400).values()) == [100] * 4
    big = make_policy("weighted_round_robin").build_picker(candidates(2, [30000, 10000]))
    c = counts(big, 40000)
    assert abs(c["10.0.0.1:50051"] / 40000 - 0.75) < 0.001


def test_wrr_weights_map_overrides_discovery() -> None:
    policy = make_policy("weighted_round_robin", {"weights": {"10.0.0.2:50051": 4}})
    cands = [c.with_weight(policy.endpoint_weight(c)) for c in candidates(2)]
    assert [c.weight for c in cands] == [1, 4]
    assert sorted(counts(policy.build_picker(cands), 500).values()) == [100, 400]


def test_wrr_retry_skips_tried_endpoint() -> None:
    picker = make_policy("weighted_round_robin").build_picker(candidates(3, [5, 3, 2]))
    for _ in range(30):
        assert picker.pick(info(exclude={"10.0.0.1:50051"})).candidate.address != \
            "10.0.0.1:50051"


# ------------------------------------------------------------------ least connections
def test_least_connections_seed_example() -> None:
    cands = candidates(3, [5, 2, 3])
    for c, n in zip(cands, [5, 3, 4], strict=True):
        set_in_flight(c.stats, n)
    picker = make_policy("least_connections").build_picker(cands)
    for _ in range(20):  # scores 1.0 / 1.5 / 1.33: always A
        r = picker.pick(info())
        assert r.candidate is cands[0] and r.counted
        # undo the pick-time count
        set_in_flight(r.candidate.stats, r.candidate.stats.in_flight - 1)


def test_least_connections_counts_at_pick_time_under_8_threads() -> None:
    cands = candidates(3)
    picker = make_policy("least_connections").build_picker(cands)
    run_threads(8, lambda _: [picker.pick(info()) for _ in range(30)])
    loads = [c.stats.in_flight for c in cands]  # no call ended: all 240 are in flight
    assert sum(loads) == 240 and max(loads) - min(loads) <= 1, loads


def test_least_connections_ties_are_not_always_the_first() -> None:
    cands = candidates(4, [1, 1, 1, 3])
    picker = make_policy("least_connections", seed=7).build_picker(cands)
    firsts = collections.Counter()
    for _ in range(3000):
        r = picker.pick(info())
        firsts[r.candidate.address] += 1
        # stay idle: every pick is a 4-way tie
        set_in_flight(r.candidate.stats, r.candidate.stats.in_flight - 1)
    assert len(firsts) == 4
    assert abs(firsts["10.0.0.4:50051"] / 3000 - 0.5) < 0.05  # ties follow weight


def test_least_connections_retry_avoids_tried() -> None:
    cands = candidates(3)
    picker = make_policy("least_connections").build_picker(cands)
    r = picker.pick(info(exclude={"10.0.0.1:50051", "10.0.0.2:50051"}))
    assert r.candidate.address == "10.0.0.3:50051"


# ------------------------------------------------------------------ least request
def test_least_request_power_of_two_choices_shares() -> None:
    cands = candidates(3)
    set_in_flight(cands[1].stats, 5)
    set_in_flight(cands[2].stats, 5)
    for choices, expected in ((2, 1 - (2 / 3) ** 2), (5, 1 - (2 / 3) ** 5)):
        picker = make_policy("least_request", {"choiceCount": choices}).build_picker(cands)
        share = counts(picker, 20000)["10.0.0.1:50051"] / 20000
        assert abs(share - expected) < 0.02, (choices, share, expected)


def test_least_request_unequal_weights_idle_follow_weight() -> None:
    cands = candidates(2, [1, 3])
    picker = make_policy("least_request").build_picker(cands)
    share = counts(picker, 20000)["10.0.0.2:50051"] / 20000
    assert abs(share - 0.75) < 0.02


def test_least_request_bias_steers_toward_idle() -> None:
    cands = candidates(2, [1, 3])
    set_in_flight(cands[1].stats, 9)
    shares = {}
    for bias in (0.0, 1.0, 4.0):
        picker = make_policy("least_request", {"activeRequestBias": bias}).build_picker(cands)
        shares[bias] = counts(picker, 20000)["10.0.0.2:50051"] / 20000
    assert abs(shares[0.0] - 0.75) < 0.02  # bias 0: weighted random, load ignored
    assert shares[0.0] > shares[1.0] > shares[4.0]
    # Sampling is with replacement (A48), so both samples are the busy endpoint with
    # probability 0.75^2 = 0.5625: only then does it get the call at bias 4.
    assert 0.53 < shares[4.0] < 0.60


# ------------------------------------------------------------------ random
def test_random_follows_weights() -> None:
    picker = make_policy("random", seed=3).build_picker(candidates(3, [1, 2, 3]))
    c = counts(picker, 60000)
    for i, w in enumerate([1, 2, 3]):
        assert abs(c[f"10.0.0.{i + 1}:50051"] / 60000 - w / 6) < 0.01


# ------------------------------------------------------------------ peak EWMA
def _latency(stats: EndpointStats, seconds: float, n: int = 1) -> None:
    for _ in range(n):
        stats.begin()
        stats.end(CallOutcome("OK", seconds), False)


def test_peak_ewma_prefers_fast_and_weighs_queueing() -> None:
    clock = ManualClock()
    cands = candidates(3, clock=clock)
    for c, lat in zip(cands, [0.010, 0.200, 0.010], strict=True):
        _latency(c.stats, lat, 5)
    policy = make_policy("peak_ewma", clock=clock)
    picker = policy.build_picker(cands)
    assert counts(picker, 3000)["10.0.0.2:50051"] == 0  # 20x slower never wins a duel
    set_in_flight(cands[0].stats, 30)  # 0.01 x 31 > 0.2 x 1
    set_in_flight(cands[2].stats, 30)
    share = counts(picker, 3000)["10.0.0.2:50051"] / 3000
    assert 0.6 < share < 0.73  # it now wins every duel it is in: 2 of the 3 pairs


def test_peak_ewma_newcomer_is_neutral_and_decay_time_is_applied() -> None:
    clock = ManualClock()
    cands = candidates(2, clock=clock)
    _latency(cands[0].stats, 0.050, 3)
    policy = make_policy("peak_ewma", {"decayTime": "2s"}, clock=clock)
    picker = policy.build_picker(cands)
    assert cands[0].stats.decay_time == 2.0
    # No sample for the newcomer: it gets the other's estimate, in-flight decides.
    set_in_flight(cands[0].stats, 1)
    assert counts(picker, 200)["10.0.0.2:50051"] == 200
    set_in_flight(cands[0].stats, 0)
    set_in_flight(cands[1].stats, 1)
    assert counts(picker, 200)["10.0.0.1:50051"] == 200


def test_peak_ewma_jumps_up_and_decays_when_read() -> None:
    clock = ManualClock()
    stats = EndpointStats(clock)
    stats.track_peak(10.0)               # what peak_ewma's pickers ask for
    _latency(stats, 0.010, 5)
    _latency(stats, 0.500)
    assert stats.peak_ewma_at(clock()) == pytest.approx(0.5)  # a slow call counts at once
    clock.advance(10.0)
    assert stats.peak_ewma_at(clock()) == pytest.approx(0.5 * 0.36788, rel=1e-3)


# ------------------------------------------------------------------ common contract
def test_pick_info_header_rules_for_hash_keys() -> None:
    from lbclient.policies._common import header_value

    pi = PickInfo(METHOD, (("X-Key", "a"), ("other", "z"), ("x-key", b"b")))
    assert header_value(pi, "x-key") == "a,b"  # several values joined with "," (A76)
    assert header_value(PickInfo(METHOD, (("x-key", ""),)), "x-key") is None
    assert header_value(pi, None) is None


def test_policies_only_see_what_they_are_given() -> None:
    """Policies return candidates they were handed (identity), never copies."""
    for name in NAMES:
        cands = candidates(3)
        policy = make_policy(name, POLICY_CONFIGS[name], seed=random.randrange(100))
        picker = policy.build_picker(cands)
        picked = picker.pick(info("k")).candidate
        assert any(picked is c for c in cands), name
