"""Invariants of the simulator over every built-in policy and over random scenarios
(hypothesis): every call is begun and ended exactly once on the SDK's EndpointStats,
every request is accounted for, figures stay within their bounds, and a seed always
gives the same report."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbclient import simulate
from lbclient.health.codes import SERVER_FAILURE_CODES
from lbclient.simulate.engine import Simulation

POLICIES = json.loads((pathlib.Path(__file__).resolve().parent.parent / "examples"
                       / "policies.json").read_text())
ADDRESSES = [f"10.0.0.{i}:50051" for i in range(1, 6)]
LOCALITY = [{"region": "r1", "zone": "z1"}, {"region": "r1", "zone": "z2"},
            {"region": "r2", "zone": "z3"}, {"region": "r1", "zone": "z1"},
            {"region": "r2", "zone": "z3"}]


def simulate_one(raw: dict[str, Any], seed: int = 1) -> Simulation:
    sc = simulate.parse_scenario(raw)
    sim = Simulation(sc, sc.variants[0], seed)
    sim.run()
    return sim


def check_accounting(sim: Simulation) -> None:
    """The SDK's own counters agree with the simulator's: begin/end exactly once."""
    report = simulate.report.build_run_report(sim, 0.0)
    assert report.ok + report.failed + report.unfinished == report.requests
    assert sum(report.codes.values()) == report.ok + report.failed
    for b in sim.backends:
        in_flight, calls, failures = sim.final_stats[b.name]
        assert in_flight == b.n, b.name                # still in flight when stopped
        assert calls == b.ok + b.failed, b.name        # every placed call ended once...
        assert calls + in_flight == b.placed, b.name   # ...or is still running
        assert failures <= b.failed
    if report.unfinished == 0:
        assert all(s[0] == 0 for s in sim.final_stats.values())
    for fig in report.backends:
        assert 0 <= fig.mean_concurrency <= fig.peak_concurrency
        assert 0 <= fig.mean_queue_wait <= fig.max_queue_wait
    lat = report.latency
    if lat.p50 is not None:
        assert 0 <= lat.p50 <= lat.p90 <= lat.p99 <= lat.max  # type: ignore[operator]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_builtin_policy_runs_in_the_simulator(name: str) -> None:
    """examples/policies.json's config for each policy, over 5 backends with discovery
    attributes, one of them failing for a while, with keyed traffic."""
    config = dict(POLICIES[name])
    backends = [{"name": a, "serviceTime": {"type": "exponential", "mean": 0.01},
                 "attributes": {"locality": LOCALITY[i], "priority": 0 if i < 3 else 1}}
                for i, a in enumerate(ADDRESSES)]
    backends[0]["faults"] = [{"kind": "errors", "start": 2, "end": 4},
                             {"kind": "down", "start": 6, "end": 7}]
    raw = {"backends": backends,
           "requests": {"rate": 200, "until": 10, "deadline": 1,
                        "keys": {"header": "x-user-id", "count": 50}},
           "serviceConfig": config}
    sim = simulate_one(raw)
    check_accounting(sim)
    assert sim.finished == sim.seq > 1500
    assert sum(1 for b in sim.backends if b.placed) >= 1
    ok = sim.codes.get("OK", 0)
    assert ok > 0.5 * sim.seq, sim.codes
    assert set(sim.codes) <= {"OK", *SERVER_FAILURE_CODES}


# ---------------------------------------------------------------------------- hypothesis

POLICY_NAMES = ["round_robin", "least_connections", "least_request", "random",
                "weighted_round_robin", "peak_ewma", "pick_first"]

distributions = st.one_of(
    st.floats(0, 0.5),
    st.builds(lambda lo, span: {"type": "uniform", "min": lo, "max": lo + span},
              st.floats(0, 0.2), st.floats(0, 0.5)),
    st.builds(lambda m: {"type": "exponential", "mean": m}, st.floats(0.001, 0.3)),
    st.builds(lambda m, s: {"type": "lognormal", "median": m, "sigma": s},
              st.floats(0.001, 0.2), st.floats(0, 1.5)),
    st.builds(lambda f, s, p: {"type": "bimodal", "fast": f, "slow": s, "slowFraction": p},
              st.floats(0, 0.05), st.floats(0.1, 1), st.floats(0, 1)),
)


@st.composite
def faults(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["down", "errors", "notServing", "slow"]))
        start = draw(st.floats(0, 5))
        fault: dict[str, Any] = {"kind": kind, "start": start}
        if draw(st.booleans()):
            fault["end"] = start + draw(st.floats(0, 5))
        if kind == "errors":
            fault["rate"] = draw(st.floats(0, 1))
        if kind == "slow":
            fault["factor"] = draw(st.floats(0.5, 10))
        out.append(fault)
    return out


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 5))
    backends = [{"weight": draw(st.integers(1, 4)),
                 "capacity": draw(st.one_of(st.none(), st.integers(1, 5))),
                 "serviceTime": draw(distributions),
                 "connectTime": draw(st.sampled_from([0, 0, 0.1, 1.0])),
                 "faults": draw(faults())} for _ in range(n)]
    stream: dict[str, Any] = {"rate": draw(st.floats(1, 200)), "count": draw(st.integers(0, 300)),
                              "arrivals": draw(st.sampled_from(["poisson", "uniform"])),
                              "duration": draw(distributions)}
    if draw(st.booleans()):
        stream["deadline"] = draw(st.floats(0.05, 2))
    if draw(st.booleans()):
        stream["keys"] = {"header": "x-k", "count": draw(st.integers(1, 20))}
    config: dict[str, Any] = {"loadBalancingConfig": [{draw(st.sampled_from(POLICY_NAMES)): {}}]}
    if draw(st.booleans()):
        config["healthCheckConfig"] = {"mode": draw(st.sampled_from(["watch", "poll"])),
                                       "interval": "1s"}
    if draw(st.booleans()):
        config["loadBalancingConfig"] = [{"outlier_detection": {
            "consecutiveFailures": draw(st.integers(1, 5)), "interval": "1s",
            "baseEjectionTime": "1s", "maxEjectionPercent": 100,
            "failurePercentageEjection": {"minimumHosts": 1, "requestVolume": 5},
            "childPolicy": config["loadBalancingConfig"]}}]
    raw: dict[str, Any] = {"backends": backends, "requests": stream, "serviceConfig": config}
    if draw(st.booleans()):
        raw["until"] = draw(st.floats(0.5, 20))
    return raw


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=scenarios(), seed=st.integers(0, 2**31))
def test_random_scenarios_keep_the_books(raw: dict[str, Any], seed: int) -> None:
    sim = simulate_one(raw, seed)
    check_accounting(sim)
    if "until" not in raw:
        assert sim.finished == sim.seq == raw["requests"]["count"]
    for b in sim.backends:
        cap = b.spec.capacity
        assert b.active == 0 or b.n > 0
        if cap is not None:
            assert b.active <= cap


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=scenarios(), seed=st.integers(0, 2**31))
def test_random_scenarios_are_deterministic(raw: dict[str, Any], seed: int) -> None:
    assert simulate.run(raw, seed=seed).to_dict() == simulate.run(raw, seed=seed).to_dict()
