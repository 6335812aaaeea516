"""Unit tests of the policy building blocks: the shared helpers, EndpointStats'
pick-time counting and read-time decay, and edge cases of single policies."""

from __future__ import annotations

import collections
import random

import pytest
from helpers import set_in_flight
from test_policy_support import (
    METHOD,
    ManualClock,
    candidates,
    counts,
    info,
    make_policy,
    run_threads,
)

from lbclient import ServiceConfigError
from lbclient.balancer.picker import CallOutcome, EndpointStats, PickInfo
from lbclient.endpoint import Endpoint
from lbclient.policies._common import (
    WeightedSampler,
    header_value,
    parse_header,
    parse_weights,
    untried_choice,
)
from lbclient.policies._hash_base import hash_key
from lbclient.policies.maglev import is_prime


# ------------------------------------------------------------------ EndpointStats
def test_try_begin_is_a_compare_and_increment() -> None:
    stats = EndpointStats(ManualClock())
    assert stats.try_begin(0) and stats.in_flight == 1 and stats.picks == 1
    assert not stats.try_begin(0) and stats.in_flight == 1 and stats.picks == 1
    assert stats.try_begin(1) and stats.in_flight == 2


def test_try_begin_under_8_threads_never_double_counts() -> None:
    stats = EndpointStats(ManualClock())
    wins = collections.Counter()

    def work(t: int) -> None:
        for _ in range(2000):
            seen = stats.in_flight
            if stats.try_begin(seen):
                wins[t] += 1

    run_threads(8, work)
    assert stats.in_flight == stats.picks == sum(wins.values())


def test_peak_ewma_at_before_any_call() -> None:
    assert EndpointStats(ManualClock()).peak_ewma_at(5.0) is None


# ------------------------------------------------------------------ shared helpers
def test_weighted_sampler() -> None:
    rng = random.Random(4)
    uniform = WeightedSampler([2, 2, 2])
    assert uniform.uniform
    c = collections.Counter(uniform.index(rng) for _ in range(30000))
    assert all(abs(v / 30000 - 1 / 3) < 0.015 for v in c.values())
    skewed = WeightedSampler([1, 0.5, 8.5])
    assert not skewed.uniform
    c = collections.Counter(skewed.index(rng) for _ in range(30000))
    assert [round(c[i] / 30000, 2) for i in range(3)] == [0.1, 0.05, 0.85]


def test_untried_choice() -> None:
    rng = random.Random(1)
    cands = candidates(3, [1, 1, 8])
    pi = info(exclude={cands[2].address})
    got = {untried_choice(cands, pi, rng, [1, 1, 8]).address for _ in range(100)}
    assert got == {cands[0].address, cands[1].address}
    everyone = info(exclude={c.address for c in cands})
    assert untried_choice(cands, everyone, rng) in cands


def test_parse_weights_and_headers() -> None:
    assert parse_weights({}, "p") == ()
    assert parse_weights({"weights": {"b:2": 2, "a:1": 1.5}}, "p") == (("a:1", 1.5),
                                                                         ("b:2", 2.0))
    with pytest.raises(ServiceConfigError, match=r"p\.weights\.a:1: must be greater than 0"):
        parse_weights({"weights": {"a:1": -3}}, "p")
    assert parse_header({"h": "X-User_ID.v2"}, "h", "p") == "x-user_id.v2"
    assert parse_header({"h": ""}, "h", "p") is None
    assert parse_header({}, "h", "p") is None
    for bad in ("x y", "é", ":authority"):
        with pytest.raises(ServiceConfigError, match="not a valid header name"):
            parse_header({"h": bad}, "h", "p")


def test_header_value_and_hash_key() -> None:
    md = (("x-key", "a"), ("X-KEY", "b"))
    assert header_value(PickInfo(METHOD, md), "x-key") == "a,b"
    assert header_value(PickInfo(METHOD, ()), "x-key") is None
    assert hash_key(Endpoint("10.0.0.1:80")) == "10.0.0.1:80"
    assert hash_key(Endpoint("10.0.0.1:80", 1, {"hash_key": "pod-0"})) == "pod-0"
    assert hash_key(Endpoint("10.0.0.1:80", 1, {"hash_key": 7})) == "10.0.0.1:80"
    assert hash_key(Endpoint("10.0.0.1:80", 1, {"hash_key": ""})) == "10.0.0.1:80"


def test_several_header_values_hash_as_one_joined_key() -> None:
    cands = candidates(5)
    for name in ("ring_hash", "maglev"):
        policy = make_policy(name, {"requestHashHeader": "x-key", "tableSize": 101}
                             if name == "maglev" else {"requestHashHeader": "x-key"})
        policy.endpoints_changed([c.endpoint for c in cands])
        picker = policy.build_picker(cands)
        for i in range(30):
            joined = picker.pick(info(f"a{i},b{i}")).candidate
            multi = picker.pick(PickInfo(METHOD, (("x-key", f"a{i}"), ("x-key", f"b{i}"))))
            assert multi.candidate is joined


def test_is_prime() -> None:
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert is_prime(65537) and is_prime(5000011) and not is_prime(65535)


# ------------------------------------------------------------------ single policies
@pytest.mark.parametrize("name", ["least_request", "peak_ewma", "random",
                                  "least_connections", "weighted_round_robin"])
def test_single_endpoint(name: str) -> None:
    cands = candidates(1)
    picker = make_policy(name).build_picker(cands)
    for _ in range(5):
        r = picker.pick(info())
        assert r.candidate is cands[0]
        if r.counted:
            set_in_flight(r.candidate.stats, r.candidate.stats.in_flight - 1)


def test_peak_ewma_cost_is_divided_by_weight() -> None:
    clock = ManualClock()
    cands = candidates(2, [1, 4], clock=clock)
    for c in cands:
        c.stats.begin()
        c.stats.end(CallOutcome("OK", 0.050), False)
    set_in_flight(cands[0].stats, 2)
    set_in_flight(cands[1].stats, 5)  # 0.05*3/1 > 0.05*6/4
    picker = make_policy("peak_ewma", clock=clock).build_picker(cands)
    assert counts(picker, 100) == {cands[1].address: 100}


def test_least_request_choice_count_ten_nearly_always_finds_the_idle_one() -> None:
    cands = candidates(3)
    set_in_flight(cands[0].stats, 3)
    set_in_flight(cands[1].stats, 3)
    picker = make_policy("least_request", {"choiceCount": 25}).build_picker(cands)
    share = counts(picker, 5000)[cands[2].address] / 5000
    assert abs(share - (1 - (2 / 3) ** 10)) < 0.01  # clamped to 10 samples


def test_wrr_remaining_endpoints_keep_exact_counts_after_one_leaves() -> None:
    policy = make_policy("weighted_round_robin")
    cands = candidates(3, [5, 3, 2])
    policy.build_picker(cands)
    picker = policy.build_picker([cands[0], cands[2]])
    got = counts(picker, 700)
    assert got == {cands[0].address: 500, cands[2].address: 200}
    everyone = info(exclude={cands[0].address, cands[2].address})
    assert picker.pick(everyone).candidate in (cands[0], cands[2])


def test_least_connections_sees_calls_begun_and_ended_outside_its_picker() -> None:
    """A call begun by another picker (sticky's remembered sessions, an old picker) or
    ended on another thread reaches the index through the endpoint's in-flight watcher:
    the next pick sees it without any rescan."""
    cands = candidates(2)
    picker = make_policy("least_connections").build_picker(cands)
    cands[0].stats.begin()                      # e.g. a sticky session's call
    assert picker.pick(info()).candidate is cands[1]
    cands[0].stats.record(0.01, False)          # it ends: A is idle again
    assert picker.pick(info()).candidate is cands[0]
    assert [c.stats.in_flight for c in cands] == [1, 1]
