"""Whole simulated runs exercising the SDK's policies and health machinery through the
simulator: weights and attributes reach the policies, panic threshold, slow start,
latency-aware and group policies react to simulated faults, outlier readmission waits
for active health, streams, keys and arrivals behave as specified."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lbclient import simulate
from lbclient.simulate.engine import Simulation

FAST = {"type": "exponential", "mean": 0.01}


def run(raw: dict[str, Any], seed: int = 1) -> simulate.RunReport:
    report = simulate.run(raw, seed=seed)
    assert len(report.runs) == 1
    return report.runs[0]


def runs(raw: dict[str, Any], seed: int = 1) -> dict[str, simulate.RunReport]:
    return {r.label: r for r in simulate.run(raw, seed=seed).runs}


def shares(r: simulate.RunReport) -> dict[str, float]:
    return {b.name: b.share for b in r.backends}


def requests_between(r: simulate.RunReport, name: str) -> dict[str, int]:
    return {b.name: b.requests for b in r.backends if b.name == name}


# ---------------------------------------------------------------------------- arrivals


def test_uniform_arrivals_are_exact_and_poisson_ones_follow_the_rate() -> None:
    uni = run({"backends": [{}], "requests": {"rate": 50, "until": 10, "arrivals": "uniform"}})
    assert uni.requests == 500
    poi = run({"backends": [{}], "requests": {"rate": 50, "until": 100}})
    assert poi.requests == pytest.approx(5000, rel=0.05)
    counted = run({"backends": [{}], "requests": {"rate": 50, "count": 123, "until": 1000}})
    assert counted.requests == 123
    capped = run({"backends": [{}], "requests": {"rate": 50, "count": 10_000, "until": 2,
                                                 "arrivals": "uniform"}})
    assert capped.requests == 100


def test_several_streams_add_up_and_keep_their_own_methods() -> None:
    raw = {"backends": [{"replicas": 2}],
           "requests": [{"rate": 10, "count": 30, "method": "/a.A/X"},
                        {"rate": 20, "count": 70, "start": 5, "method": "/b.B/Y",
                         "duration": 0.5}]}
    r = run(raw)
    assert r.requests == 100 and r.ok == 100
    # the second stream's durations show up in the latency figures
    assert r.latency.max == pytest.approx(0.5) and r.latency.p50 in (0.0, 0.5)


def test_a_stream_that_sends_nothing() -> None:
    r = run({"backends": [{}], "requests": {"rate": 10, "count": 0}})
    assert (r.requests, r.ok, r.latency.p50, r.imbalance) == (0, 0, None, None)
    r = run({"backends": [{}], "requests": {"rate": 10, "until": 5, "start": 5}})
    assert r.requests == 0


def test_a_different_seed_changes_the_traffic_not_its_shape() -> None:
    raw = {"backends": [{"replicas": 3, "serviceTime": FAST}],
           "requests": {"rate": 100, "until": 20}}
    a, b = run(raw, seed=1), run(raw, seed=2)
    assert a.requests != b.requests
    assert a.requests == pytest.approx(b.requests, rel=0.1)
    assert run(raw, seed=1) == a


def test_sequential_keys_cycle_and_random_keys_cover_the_space() -> None:
    raw: dict[str, Any] = {
        "backends": [{"replicas": 4}],
        "requests": {"rate": 100, "count": 400, "arrivals": "uniform",
                     "keys": {"header": "x-k", "count": 8, "order": "sequential"}},
        "serviceConfig": {"loadBalancingConfig": [{"ring_hash": {"requestHashHeader": "x-k"}}]}}
    sim = Simulation(simulate.parse_scenario(raw), simulate.parse_scenario(raw).variants[0], 1)
    sim.run()
    assert sorted(sim.keys) == [f"client-{i}" for i in range(8)]
    for times, servers in sim.keys.values():
        assert len(times) == 50 and len(set(servers)) == 1      # one key, one server
    raw["requests"]["keys"] = {"header": "x-k", "count": 50, "prefix": "u"}
    sc = simulate.parse_scenario(raw)
    sim = Simulation(sc, sc.variants[0], 1)
    sim.run()
    assert len(sim.keys) == 50 and all(k.startswith("u") for k in sim.keys)


# ---------------------------------------------------------------------------- weights


def test_discovery_weights_and_policy_weight_maps_reach_the_policies() -> None:
    raw = {"backends": [{"name": "a:1", "weight": 4}, {"name": "b:1"}],
           "requests": {"rate": 100, "count": 5000, "arrivals": "uniform"},
           "policies": ["weighted_round_robin", "round_robin", "random",
                        {"label": "wrr override",
                         "policy": {"weighted_round_robin": {"weights": {"a:1": 1,
                                                                         "b:1": 4}}}}]}
    r = runs(raw)
    assert shares(r["weighted_round_robin"])["a:1"] == pytest.approx(0.8, abs=0.001)
    assert shares(r["round_robin"])["a:1"] == pytest.approx(0.5, abs=0.001)
    assert shares(r["random"])["a:1"] == pytest.approx(0.8, abs=0.03)
    assert shares(r["wrr override"])["a:1"] == pytest.approx(0.2, abs=0.001)


def test_capacity_shows_up_as_queueing_when_the_policy_overloads_a_backend() -> None:
    raw = {"backends": [{"name": "big:1", "weight": 4, "capacity": 8},
                        {"name": "small:1", "capacity": 2}],
           "requests": {"rate": 40, "count": 2000, "duration": 0.2},
           "policies": ["round_robin", "weighted_round_robin"]}
    r = runs(raw)
    rr_small = r["round_robin"].backends[1]
    wrr_small = r["weighted_round_robin"].backends[1]
    assert rr_small.queued > 5 * max(wrr_small.queued, 1)
    assert rr_small.max_queue_wait > 0.2
    assert r["round_robin"].latency.p99 > r["weighted_round_robin"].latency.p99
    for run_ in r.values():
        assert run_.backends[1].peak_concurrency >= 2


# ---------------------------------------------------------------------------- health


def unhealthy_fleet(panic: float | None, mode: str = "watch") -> dict[str, Any]:
    """Three backends; two are NOT_SERVING (and failing) from t=2 on (just after a
    call, so the health change reaches the balancer before the next call)."""
    bad = [{"kind": "notServing", "start": 2.005}, {"kind": "errors", "start": 2.005}]
    sc: dict[str, Any] = {"healthCheckConfig": {"mode": mode, "interval": "1s"}}
    if panic is not None:
        sc["lbclient"] = {"panicThreshold": panic}
    return {"backends": [{"name": "ok:1", "serviceTime": FAST},
                         {"name": "bad:1", "serviceTime": FAST, "faults": bad, "replicas": 2}],
            "requests": {"rate": 100, "until": 12, "arrivals": "uniform"},
            "serviceConfig": sc}


def test_panic_threshold_ignores_health_when_too_few_are_healthy() -> None:
    panic = run(unhealthy_fleet(None))          # default 50%: 1 of 3 healthy -> panic
    calm = run(unhealthy_fleet(0))
    assert calm.failed == 0                     # everything went to the healthy one
    assert shares(calm)["ok:1"] > 0.8
    assert panic.failed == pytest.approx(10 * 100 * 2 / 3, rel=0.1)
    for d in panic.downtime:
        assert d.reason == "unhealthy"          # marked, yet picked: panic mode


def test_poll_health_needs_n_failed_probes_and_watch_none() -> None:
    poll = run(unhealthy_fleet(0, mode="poll"))
    watch = run(unhealthy_fleet(0, mode="watch"))
    assert watch.failed == 0
    assert all(d.detection_delay == 0 for d in watch.downtime)
    for d in poll.downtime:
        assert 2 * 0.8 <= d.detection_delay <= 3 * 1.2 + 0.01   # 3 probes, 1 s +-20%
    assert poll.failed > 100


def test_backend_without_health_service_counts_as_healthy() -> None:
    raw = {"backends": [{"name": "plain:1", "healthService": False, "serviceTime": FAST},
                        {"name": "checked:1", "serviceTime": FAST,
                         "faults": [{"kind": "notServing", "start": 0}]}],
           "requests": {"rate": 50, "count": 200},
           "serviceConfig": {"healthCheckConfig": {}, "lbclient": {"panicThreshold": 0}}}
    r = run(raw)
    assert r.ok == 200 and shares(r)["plain:1"] == 1.0


def test_ejection_readmission_waits_for_good_health_probes() -> None:
    """Outlier ejection of 2 s on a backend that is NOT_SERVING until t=10: the ejection
    time passes long before, but readmission needs healthyThreshold good probes."""
    raw = {"backends": [{"name": "x:1", "serviceTime": FAST,
                         "faults": [{"kind": "errors", "start": 1, "end": 10}]},
                        {"serviceTime": FAST, "replicas": 3}],
           "requests": {"rate": 200, "until": 20},
           "serviceConfig": {
               "loadBalancingConfig": [{"outlier_detection": {
                   "consecutiveFailures": 3, "baseEjectionTime": "2s", "interval": "1s",
                   "maxEjectionPercent": 50, "childPolicy": [{"round_robin": {}}]}}]},
           "policies": [{"label": "no health"},
                        {"label": "watch health",
                         "serviceConfig": {"healthCheckConfig": {"healthyThreshold": 3}}}]}
    raw["backends"][0]["faults"].append({"kind": "notServing", "start": 1.5, "end": 10})
    r = runs(raw)
    plain, checked = r["no health"].downtime[0], r["watch health"].downtime[0]
    assert plain.reason == "ejected" and plain.flaps >= 1     # readmitted, re-ejected
    assert checked.flaps == 0                                # held until healthy again
    # 3 good Check probes in a row, every 1 s +-20% while ejected
    assert 2 * 0.8 <= checked.readmission_delay <= 3 * 1.2 + 0.01
    assert r["watch health"].failed < r["no health"].failed
    kinds = [e["kind"] for e in r["watch health"].events if e["address"] == "x:1"]
    assert kinds[0] == "added" and kinds.count("ejected") == 1 and kinds[-1] == "readmitted"


# ---------------------------------------------------------------------------- slow start


def test_slow_start_ramps_a_backend_back_up_once_healthy_again() -> None:
    """Slow start applies to endpoints that are new, readmitted after an ejection, or
    healthy again after being unhealthy (not to a plain reconnect)."""
    raw = {"backends": [{"name": "x:1", "serviceTime": FAST,
                         "faults": [{"kind": "notServing", "start": 5, "end": 10}]},
                        {"serviceTime": FAST, "replicas": 3}],
           "requests": {"rate": 200, "until": 40, "arrivals": "uniform"},
           "serviceConfig": {"loadBalancingConfig": [{"weighted_round_robin": {}}],
                             "healthCheckConfig": {}},
           "policies": [{"label": "plain"},
                        {"label": "slow start",
                         "serviceConfig": {"lbclient": {"slowStartConfig": {
                             "slowStartWindow": "20s"}}}}]}
    r = runs(raw)
    back = r["plain"].downtime[0].readmitted_at
    assert back == 10.0 == r["slow start"].downtime[0].readmitted_at
    plain, slow = shares(r["plain"])["x:1"], shares(r["slow start"])["x:1"]
    assert plain == pytest.approx(0.25 * 35 / 40, abs=0.01)
    # ramping over 20 s from 10% of its weight costs it about a third of its share
    assert plain - 0.08 < slow < plain - 0.03
    ramp = [e for e in r["slow start"].events if e["address"] == "x:1"]
    assert [e["kind"] for e in ramp][-1] == "health_changed"


# ---------------------------------------------------------------------------- policies


def test_peak_ewma_moves_away_from_a_slowed_backend() -> None:
    raw = {"backends": [{"name": "x:1", "serviceTime": 0.02,
                         "faults": [{"kind": "slow", "start": 5, "end": 25, "factor": 20}]},
                        {"serviceTime": 0.02, "replicas": 3}],
           "requests": {"rate": 200, "until": 30},
           "policies": ["round_robin", "peak_ewma", "least_request"]}
    r = runs(raw)
    assert shares(r["round_robin"])["x:1"] == pytest.approx(0.25, abs=0.01)
    assert shares(r["peak_ewma"])["x:1"] < 0.12
    assert shares(r["least_request"])["x:1"] < 0.2
    assert r["peak_ewma"].latency.p90 < r["round_robin"].latency.p90


def test_priority_fails_over_to_the_standby_level_and_back() -> None:
    raw = {"backends": [
        {"name": "p0:1", "serviceTime": FAST, "replicas": 2,
         "faults": [{"kind": "down", "start": 5, "end": 15}]},
        {"name": "p1:1", "serviceTime": FAST, "replicas": 2, "attributes": {"priority": 1}}],
        "requests": {"rate": 100, "until": 30, "arrivals": "uniform"},
        "serviceConfig": {"loadBalancingConfig": [{"priority": {}}]}}
    r = run(raw)
    by = {b.name: b.requests for b in r.backends}
    standby = by["p1-1:1"] + by["p1-2:1"]
    # standby only while the primary level is down (about 10 s + reconnect of 30 s)
    assert 0.3 < standby / r.requests < 0.5
    assert r.failed <= 4


def test_pick_first_sticks_to_one_backend_until_it_fails() -> None:
    raw = {"backends": [{"name": "a:1", "serviceTime": FAST,
                         "faults": [{"kind": "down", "start": 5}]},
                        {"name": "b:1", "serviceTime": FAST}],
           "requests": {"rate": 100, "until": 10, "arrivals": "uniform"},
           "serviceConfig": {"loadBalancingConfig": [{"pick_first": {}}]}}
    r = run(raw)
    assert requests_between(r, "a:1") == {"a:1": 500}
    assert r.backends[1].requests == 500 - r.failed + 1 or r.backends[1].requests >= 495


def test_least_connections_counts_at_pick_time() -> None:
    """A burst of simultaneous calls on idle backends spreads evenly, because the picker
    counts each call before the next pick (PickResult.counted)."""
    raw = {"backends": [{"replicas": 5}],
           "requests": {"rate": 1e6, "count": 50, "arrivals": "uniform", "duration": 10},
           "serviceConfig": {"loadBalancingConfig": [{"least_connections": {}}]}}
    r = run(raw)
    assert [b.requests for b in r.backends] == [10] * 5
    assert [b.peak_concurrency for b in r.backends] == [10] * 5


def test_modulo_hash_and_ring_hash_on_the_same_keys() -> None:
    raw = {"backends": [{"replicas": 4, "serviceTime": FAST}],
           "requests": {"rate": 200, "count": 2000,
                        "keys": {"header": "x-k", "count": 100}},
           "policies": [{"label": "modulo", "policy": {"modulo_hash": {
               "requestHashHeader": "x-k"}}},
                        {"label": "ring", "policy": {"ring_hash": {
                            "requestHashHeader": "x-k"}}}]}
    r = runs(raw)
    for run_ in r.values():
        assert run_.ok == 2000 and all(b.requests > 200 for b in run_.backends)
    assert shares(r["modulo"]) != shares(r["ring"])


# ---------------------------------------------------------------------------- reporting


def test_events_are_ordered_and_count_finished_calls() -> None:
    raw = unhealthy_fleet(0, mode="poll")
    r = run(raw)
    times = [e["time"] for e in r.events]
    assert times == sorted(times)
    finished = [e["finished_calls"] for e in r.events]
    assert finished == sorted(finished) and finished[-1] <= r.requests
    kinds = {e["kind"] for e in r.events}
    assert {"added", "health_changed"} <= kinds


def test_report_is_json_serializable_and_complete() -> None:
    report = simulate.run(unhealthy_fleet(0))
    d = json.loads(json.dumps(report.to_dict(timing=True, timeline=True)))
    run_ = d["runs"][0]
    for key in ("label", "policy", "requests", "ok", "failed", "codes", "no_endpoint",
                "unfinished", "latency", "imbalance", "backends", "downtime", "affinity",
                "events", "sim_time", "loop_events", "timeline", "wall_seconds"):
        assert key in run_, key
    for key in ("name", "weight", "requests", "share", "ok", "failed", "peak_concurrency",
                "mean_concurrency", "queued", "mean_queue_wait", "max_queue_wait"):
        assert key in run_["backends"][0], key
    assert set(run_["latency"]) == {"p50", "p90", "p99", "mean", "max"}
    assert d["comparison"][0]["policy"] == run_["label"]
    assert d["backends"] == ["ok:1", "bad-1:1", "bad-2:1"]


def test_mean_concurrency_is_littles_law() -> None:
    """Without queueing, mean calls in flight = arrival rate x mean duration."""
    r = run({"backends": [{"replicas": 2}],
             "requests": {"rate": 40, "until": 200, "duration": {"type": "exponential",
                                                                  "mean": 0.5}}})
    total = sum(b.mean_concurrency for b in r.backends)
    assert total == pytest.approx(40 * 0.5, rel=0.08)
    assert r.latency.mean == pytest.approx(0.5, rel=0.08)
