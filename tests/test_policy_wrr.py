"""weighted_round_robin: the smooth cycle (property tests), ORCA load reports per gRFC A58
(weight formula, blackout, expiration, fallback, the update timer) and real backends that
send reports or get static weights."""

from __future__ import annotations

import collections
import time

import pytest
from helpers import wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from test_policy_support import (
    ManualClock,
    ManualScheduler,
    call_counts,
    candidates,
    channel,
    info,
    make_policy,
)

from lbclient._proto.orca_load_report_pb2 import OrcaLoadReport
from lbclient.balancer.picker import CallOutcome
from lbclient.policies._orca import load_report, orca_weight
from lbclient.policies.weighted_round_robin import edf_schedule, quantize, schedule
from lbclient.testing import Fleet


# ------------------------------------------------------------------ the cycle
@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 25), min_size=1, max_size=8))
def test_cycle_is_exact_and_smooth(weights: list[int]) -> None:
    ints = quantize(weights)
    cycle = schedule(weights)
    assert len(cycle) == sum(ints)
    assert collections.Counter(cycle) == {i: w for i, w in enumerate(ints)}
    total, seen = sum(ints), [0] * len(ints)
    for t, i in enumerate(cycle, 1):  # every prefix within two picks of the exact share
        seen[i] += 1
        assert all(abs(seen[j] - t * ints[j] / total) < 2.0 for j in range(len(ints)))
    twice = cycle + cycle  # any window of one cycle length, anywhere, is exact
    for start in range(0, len(cycle), max(1, len(cycle) // 7)):
        assert collections.Counter(twice[start:start + len(cycle)]) == collections.Counter(cycle)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 25), min_size=1, max_size=8))
def test_large_cycle_fallback_is_exact(weights: list[int]) -> None:
    cycle = edf_schedule(weights)
    assert collections.Counter(cycle) == {i: w for i, w in enumerate(weights)}
    total, seen = sum(weights), [0] * len(weights)
    for t, i in enumerate(cycle, 1):
        seen[i] += 1
        assert all(abs(seen[j] - t * weights[j] / total) < 3.0 for j in range(len(weights)))


def test_quantize() -> None:
    assert quantize([10, 20, 30]) == [1, 2, 3]
    assert quantize([2.5, 7.5]) == [250, 750]          # fractional: ~1,000-entry cycle
    assert sum(quantize([1e9, 1e9 + 1])) <= 16385
    assert min(quantize([1, 10**7])) == 1              # everyone keeps one turn


# ------------------------------------------------------------------ ORCA
def report(**fields: float) -> OrcaLoadReport:
    return OrcaLoadReport(**fields)


def outcome(rep: OrcaLoadReport | None, key: str = "x-endpoint-load-metrics-bin"
            ) -> CallOutcome:
    md = ((key, rep.SerializeToString()),) if rep is not None else ()
    return CallOutcome("OK", 0.001, trailing_metadata=md)


def test_orca_weight_formula() -> None:
    # weight = qps / (utilization + eps/qps * penalty), A58
    assert orca_weight(report(rps_fractional=100, cpu_utilization=0.5), 1.0) == 200
    assert orca_weight(report(rps_fractional=100, cpu_utilization=0.5, eps=10), 1.0) == \
        pytest.approx(100 / 0.6)
    assert orca_weight(report(rps_fractional=100, cpu_utilization=0.5, eps=10), 0.0) == 200
    # application_utilization wins over cpu_utilization when set (gRPC's choice).
    assert orca_weight(report(rps_fractional=100, cpu_utilization=0.5,
                              application_utilization=0.25), 1.0) == 400
    assert orca_weight(report(rps_fractional=0, cpu_utilization=0.5), 1.0) is None
    assert orca_weight(report(rps_fractional=10), 1.0) is None
    # Both trailer keys are read; garbage is ignored.
    rep = report(cpu_utilization=0.1)
    assert load_report(outcome(rep, "endpoint-load-metrics-bin")) == rep
    assert load_report(outcome(rep)) == rep
    assert load_report(CallOutcome("OK", 0, (("endpoint-load-metrics-bin", b"\xff\xff"),))) \
        is None
    assert load_report(CallOutcome("OK", 0)) is None


def _feed(picker: object, reports: dict[str, OrcaLoadReport], n: int = 30) -> None:
    """Pick n times and end each call with its endpoint's report."""
    for _ in range(n):
        r = picker.pick(info())  # type: ignore[attr-defined]
        if r.on_done is not None:
            r.on_done(outcome(reports.get(r.candidate.address)))


def test_blackout_expiration_and_fallback() -> None:
    clock = ManualClock()
    policy = make_policy("weighted_round_robin", {"blackoutPeriod": "5s",
                                                  "weightExpirationPeriod": "60s"},
                         clock=clock)
    cands = candidates(3, [1, 1, 2])
    picker = policy.build_picker(cands)
    reports = {cands[0].address: report(rps_fractional=100, cpu_utilization=0.25),  # 400
               cands[1].address: report(rps_fractional=100, cpu_utilization=1.0)}   # 100
    _feed(picker, reports)
    assert policy.effective_weights(cands) == [1, 1, 2]  # blackout: static weights
    clock.advance(5)
    _feed(picker, reports)
    # Usable now; the endpoint without reports gets the mean of the others (A58).
    assert policy.effective_weights(cands) == [400, 100, 250]
    clock.advance(61)
    assert policy.effective_weights(cands) == [1, 1, 2]  # expired: static again
    _feed(picker, reports)
    assert policy.effective_weights(cands) == [1, 1, 2]  # expiry restarts the blackout
    clock.advance(5)
    _feed(picker, reports)
    assert policy.effective_weights(cands) == [400, 100, 250]
    # An endpoint that leaves and comes back restarts its blackout.
    policy.build_picker(cands[1:])
    policy.build_picker(cands)
    _feed(policy.build_picker(cands), {cands[1].address: reports[cands[1].address]})
    assert policy.effective_weights(cands) == [1, 1, 2]  # only one usable weight left


def test_weight_timer_publishes_new_weights() -> None:
    clock = ManualClock()
    sched = ManualScheduler(clock)
    rebuilds: list[int] = []
    policy = make_policy("weighted_round_robin",
                         {"blackoutPeriod": "0s", "weightUpdatePeriod": "0.5s"},
                         clock=clock, scheduler=sched, rebuild=lambda: rebuilds.append(1))
    cands = candidates(2)
    picker = policy.build_picker(cands)
    assert sched.timers == []  # no report, no timer
    reports = {cands[0].address: report(rps_fractional=90, cpu_utilization=0.3),   # 300
               cands[1].address: report(rps_fractional=90, cpu_utilization=0.9)}   # 100
    _feed(picker, reports, 4)
    assert len(sched.timers) == 1  # the first report starts it, once
    clock.advance(0.5)
    assert sched.run_due() == 1 and rebuilds == [1]
    picker = policy.build_picker(cands)  # what the balancer does on request_rebuild()
    assert picker.weights == (300, 100)
    assert sorted(collections.Counter(picker.pick(info()).candidate.address
                                      for _ in range(400)).values()) == [100, 300]
    clock.advance(0.5)
    assert sched.run_due() == 1 and rebuilds == [1]  # unchanged weights: no rebuild
    policy.close()
    clock.advance(0.5)
    assert sched.run_due() == 0  # cancelled


# ------------------------------------------------------------------ real backends
def test_static_weights_map_on_real_backends(fleet: Fleet) -> None:
    a, b, c = fleet.addresses
    cfg = {"weighted_round_robin": {"weights": {a: 5, b: 3, c: 2}}}
    with channel(fleet, cfg) as ch:
        got = call_counts(ch, 1000)
    assert abs(got[a] - 500) <= 3 and abs(got[b] - 300) <= 3 and abs(got[c] - 200) <= 3, got


def test_orca_reports_from_real_backends_set_the_weights(fleet_factory: object) -> None:
    fleet: Fleet = fleet_factory(3)  # type: ignore[operator]
    for backend, cpu in zip(fleet, (0.2, 0.4, 0.8), strict=True):
        backend.set_orca(True, cpu_utilization=cpu, rps_fractional=100)  # 500/250/125
    cfg = {"weighted_round_robin": {"blackoutPeriod": "0s", "weightUpdatePeriod": "0.1s"}}
    with channel(fleet, cfg) as ch:
        call_counts(ch, 30)  # every endpoint reports at least once
        wait_until(lambda: getattr(ch._balancer.picker, "weights", ()) == (500, 250, 125),
                   10, message="ORCA weights published")
        got = call_counts(ch, 700)
    shares = [got[addr] / 700 for addr in fleet.addresses]
    assert [round(s, 1) for s in shares] == [0.6, 0.3, 0.1], shares  # 4 : 2 : 1


def test_orca_switch_can_be_turned_off(fleet: Fleet) -> None:
    backend = fleet[0]
    backend.set_orca(True, cpu_utilization=0.3)
    backend.set_orca(False)
    assert not backend.orca
    with pytest.raises(ValueError):
        backend.set_orca(True, eps=-1)
    cfg = {"weighted_round_robin": {"blackoutPeriod": "0s", "weightUpdatePeriod": "0.1s"}}
    with channel(fleet, cfg) as ch:
        call_counts(ch, 30)
        time.sleep(0.3)
        assert sorted(call_counts(ch, 300).values()) == [100, 100, 100]  # no reports
