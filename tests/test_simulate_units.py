"""Units of the simulator: the virtual event loop, distributions, scenario validation
(errors name the JSON path), the simulator-only modulo policy, the fake connections and
health checkers on the virtual clock, backend queueing/deadlines, and the analysis."""

from __future__ import annotations

import ast
import pathlib
import random
from typing import Any

import pytest

import lbclient.simulate
from lbclient import ServiceConfigError, simulate
from lbclient.balancer.picker import Candidate, EndpointStats, PickInfo
from lbclient.balancer.policy import PolicyContext, get_policy
from lbclient.config import HealthCheckConfig
from lbclient.connectivity import Connectivity
from lbclient.endpoint import Endpoint
from lbclient.simulate import modulo_hash
from lbclient.simulate.analysis import _marks, percentile
from lbclient.simulate.backend import SimBackend, SimChecker, SimConnection
from lbclient.simulate.clock import EventLoop
from lbclient.simulate.distributions import parse_distribution
from lbclient.simulate.scenario import BackendSpec, Fault, parse_scenario

# ---------------------------------------------------------------------------- event loop


def test_event_loop_runs_in_time_then_fifo_order_and_honours_cancel() -> None:
    loop = EventLoop()
    seen: list[tuple[float, str]] = []
    loop.call_at(2.0, lambda: seen.append((loop(), "b")))
    loop.call_at(1.0, lambda: seen.append((loop(), "a1")))
    loop.call_at(1.0, lambda: seen.append((loop(), "a2")))
    loop.call_later(1.5, lambda: seen.append((loop(), "x"))).cancel()
    loop.call_at(0.5, lambda: loop.call_soon(lambda: seen.append((loop(), "soon"))))
    loop.run(10.0)
    assert seen == [(0.5, "soon"), (1.0, "a1"), (1.0, "a2"), (2.0, "b")]
    assert loop.events == 5 and loop() == 10.0     # the clock moves on to ``until``


def test_event_loop_stops_at_until_and_on_stop() -> None:
    loop = EventLoop()
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(loop())
        loop.call_later(1.0, tick)

    loop.call_soon(tick)
    loop.run(3.5)
    assert ticks == [0.0, 1.0, 2.0, 3.0] and loop() == 3.5
    loop.call_later(0.1, loop.stop)
    loop.run(100.0)
    assert loop.stopped and loop() == pytest.approx(3.6) and ticks[-1] == 3.0
    # a timer in the past runs "now", never earlier
    assert loop.call_at(1.0, lambda: None).when == loop()


# ---------------------------------------------------------------------------- distributions


@pytest.mark.parametrize("raw, mean", [
    (0.25, 0.25), ("2s", 2.0), ({"type": "fixed", "value": 3}, 3.0),
    ({"type": "uniform", "min": 1, "max": 20}, 10.5),
    ({"type": "exponential", "mean": "0.1s"}, 0.1),
    ({"type": "lognormal", "median": 0.05, "sigma": 0.5}, 0.05 * 1.1331484530668263),
    ({"type": "bimodal", "fast": 1, "slow": 10, "slowFraction": 0.2}, 2.8),
    ({"type": "bimodal", "fast": {"type": "uniform", "min": 0, "max": 2},
      "slow": {"type": "exponential", "mean": 5}}, 3.0),
])
def test_distributions_have_their_mean(raw: Any, mean: float) -> None:
    d = parse_distribution(raw, "d")
    assert d.mean == pytest.approx(mean)
    rng = random.Random(4)
    samples = [d.sample(rng) for _ in range(20000)]
    assert min(samples) >= 0
    assert sum(samples) / len(samples) == pytest.approx(mean, rel=0.05)


def test_uniform_and_bimodal_shapes() -> None:
    rng = random.Random(1)
    u = parse_distribution({"type": "uniform", "min": 1, "max": 20}, "d")
    s = [u.sample(rng) for _ in range(5000)]
    assert 1 <= min(s) < 1.1 and 19.9 < max(s) <= 20
    b = parse_distribution({"type": "bimodal", "fast": 1, "slow": 10, "slowFraction": 0.3}, "d")
    s = [b.sample(rng) for _ in range(5000)]
    assert set(s) == {1.0, 10.0} and s.count(10.0) / len(s) == pytest.approx(0.3, abs=0.03)


@pytest.mark.parametrize("raw, message", [
    (-1, "d: must be non-negative"),
    ("fast", 'd: must be a duration like "1.5s"'),
    ({"type": "gamma"}, "d.type: must be one of fixed, uniform, exponential, lognormal, "
                        "bimodal; got 'gamma'"),
    ({"type": "uniform", "min": 5, "max": 1}, "d.min: must not exceed max"),
    ({"type": "uniform", "min": 1}, "d.max: is required"),
    ({"type": "exponential", "mean": 1, "rate": 2}, "d.rate: unknown field"),
    ({"type": "bimodal", "fast": 1}, "d.slow: is required"),
    ({"type": "bimodal", "fast": 1, "slow": 2, "slowFraction": 2},
     "d.slowFraction: must be at most 1"),
    ({"type": "bimodal", "fast": {"type": "fixed"}, "slow": 2}, "d.fast.value: is required"),
    ({"type": "lognormal", "median": 1, "sigma": -1}, "d.sigma: must be at least 0"),
    ([1, 2], "d: must be a JSON object"),
])
def test_distribution_errors_name_the_path(raw: Any, message: str) -> None:
    with pytest.raises(ServiceConfigError) as exc:
        parse_distribution(raw, "d")
    assert str(exc.value).startswith(message)


# ---------------------------------------------------------------------------- scenarios

BACKENDS = [{"replicas": 2}]
STREAM = {"rate": 10, "count": 10}


def scenario(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"backends": BACKENDS, "requests": STREAM}
    raw.update(overrides)
    return raw


@pytest.mark.parametrize("overrides, message", [
    ({"backends": None}, "backends: is required"),
    ({"backends": []}, "backends: must list at least one backend"),
    ({"backends": [{"name": "a:1"}, {"name": "a:1"}]}, "backends: duplicate backend name 'a:1'"),
    ({"backends": [{"weight": 0}]}, "backends[0].weight: must be at least 1"),
    ({"backends": [{"capacity": 1.5}]}, "backends[0].capacity: must be an integer"),
    ({"backends": [{"colour": "red"}]}, "backends[0].colour: unknown field"),
    ({"backends": [{"faults": [{"kind": "fire", "start": 1}]}]},
     "backends[0].faults[0].kind: must be one of down, errors, notServing, slow"),
    ({"backends": [{"faults": [{"kind": "down"}]}]}, "backends[0].faults[0].start: is required"),
    ({"backends": [{"faults": [{"kind": "down", "start": 5, "end": 1}]}]},
     "backends[0].faults[0].end: must not be before start"),
    ({"backends": [{"faults": [{"kind": "errors", "start": 1, "code": "OK"}]}]},
     "backends[0].faults[0].code: must be a non-OK status code name"),
    ({"backends": [{"faults": [{"kind": "down", "start": 1, "rate": 0.5}]}]},
     "backends[0].faults[0].rate: unknown field"),
    ({"backends": [{"faults": [{"kind": "errors", "start": 1, "rate": 2}]}]},
     "backends[0].faults[0].rate: must be at most 1"),
    ({"requests": None}, "requests: is required"),
    ({"requests": {"count": 3}}, "requests.rate: is required"),
    ({"requests": {"rate": 0, "count": 3}}, "requests.rate: must be greater than 0"),
    ({"requests": {"rate": 1}}, 'requests: needs "count" or "until"'),
    ({"requests": [STREAM, {"rate": 1, "count": 1, "arrivals": "bursty"}]},
     'requests[1].arrivals: must be "poisson" or "uniform"'),
    ({"requests": {**STREAM, "keys": {"count": 3}}}, "requests.keys.header: is required"),
    ({"requests": {**STREAM, "keys": {"header": "k", "order": "zipf"}}},
     'requests.keys.order: must be "random" or "sequential"'),
    ({"requests": {**STREAM, "deadline": 0}}, "requests.deadline: must be greater than 0"),
    ({"policies": []}, "policies: must name at least one policy"),
    ({"policies": ["round_robin", "round_robin"]}, "policies[1]: duplicate label 'round_robin'"),
    ({"policies": ["round_robin", {"policy": {"round_robin": {"x": 1}}}]},
     "policies[1].loadBalancingConfig[0].round_robin.x: unknown field"),
    ({"policies": [{"policy": {"a": {}, "b": {}}}]},
     "policies[0].policy: must have exactly one key"),
    ({"policies": ["nosuch"]},
     'policies[0].loadBalancingConfig: no supported policy in ["nosuch"]'),
    ({"serviceConfig": {"healthCheckConfig": {"mode": "push"}}},
     'serviceConfig.healthCheckConfig.mode: must be "watch" or "poll"'),
    ({"serviceConfig": {"lbclient": {"panicThreshold": 200}}},
     "serviceConfig.lbclient.panicThreshold: must be at most 100"),
    ({"policies": [{"policy": {"modulo_hash": {"requestHashHeader": "a-bin"}}}]},
     "policies[0].loadBalancingConfig[0].modulo_hash.requestHashHeader: 'a-bin' is a binary"),
    ({"seed": "x"}, "seed: must be an integer"),
    ({"sampleInterval": 0}, "sampleInterval: must be greater than 0"),
    ({"extra": 1}, "extra: unknown field"),
])
def test_scenario_errors_name_the_json_path(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ServiceConfigError) as exc:
        parse_scenario(scenario(**overrides))
    assert str(exc.value).startswith(message), str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_scenario_defaults_names_and_variants() -> None:
    sc = parse_scenario(scenario(
        backends=[{"weight": 3}, {"name": "x:1", "replicas": 2, "capacity": 4}, {},
                  {"name": "plain", "replicas": 2}],
        serviceConfig={"healthCheckConfig": {"mode": "poll"}, "lbclient": {"panicThreshold": 0}},
        policies=["round_robin", {"label": "lc", "policy": {"least_connections": {}}},
                  {"label": "own", "serviceConfig": {"healthCheckConfig": None}}]))
    assert [b.name for b in sc.backends] == ["s1:80", "x-1:1", "x-2:1", "s4:80", "plain-1",
                                             "plain-2"]
    assert [b.capacity for b in sc.backends] == [None, 4, 4, None, None, None]
    assert sc.backends[0].weight == 3 and sc.seed == 1
    assert [v.label for v in sc.variants] == ["round_robin", "lc", "own"]
    rr, lc, own = sc.variants
    assert rr.config.health_check == HealthCheckConfig(mode="poll")
    assert rr.options.panic_threshold == 0
    assert lc.config.lb.name == "least_connections"
    assert own.config.health_check is None and own.config.lb.name == "round_robin"
    # --policy: labels are kept, other names get their defaults over serviceConfig
    picked = sc.with_policies(["lc", "random"])
    assert [v.label for v in picked.variants] == ["lc", "random"]
    assert picked.variants[1].config.health_check == HealthCheckConfig(mode="poll")


def test_load_scenario_names_it_after_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "my_case.json"
    path.write_text('{"backends": [{}], "requests": {"rate": 1, "count": 1}}')
    assert simulate.load_scenario(path).name == "my_case"
    assert simulate.run(str(path)).scenario == "my_case"


# ---------------------------------------------------------------------------- modulo_hash


def candidates(n: int) -> list[Candidate]:
    return [Candidate(Endpoint(f"10.0.0.{i}:80"), 1, EndpointStats(lambda: 0.0), None)
            for i in range(n)]


def test_modulo_hash_is_the_simulators_alone() -> None:
    assert get_policy("modulo_hash") is None
    assert simulate.SIM_POLICIES[simulate.MODULO_HASH] is modulo_hash.SPEC


def test_modulo_hash_maps_keys_by_hash_mod_n_over_sorted_candidates() -> None:
    from lbclient.policies._hashing import xxhash64

    cfg = modulo_hash.parse_config({"requestHashHeader": "X-Key"}, "p")
    assert cfg.request_hash_header == "x-key"
    policy = modulo_hash.SPEC.create(cfg, PolicyContext(clock=lambda: 0.0, rng=random.Random(1)))
    cs = candidates(5)
    picker = policy.build_picker(list(reversed(cs)))
    for key in ("a", "b", "user-42"):
        got = picker.pick(PickInfo("/m", (("x-key", key),))).candidate
        assert got is cs[xxhash64(key) % 5]
    # without the header: random, over every candidate
    seen = {picker.pick(PickInfo("/m")).candidate.address for _ in range(200)}
    assert len(seen) == 5
    # one fewer endpoint: most keys move (the reason it is only a baseline)
    smaller = policy.build_picker(cs[:4])
    keys = [f"k{i}" for i in range(2000)]
    moved = sum(picker.pick(PickInfo("/m", (("x-key", k),))).candidate.address
                != smaller.pick(PickInfo("/m", (("x-key", k),))).candidate.address
                for k in keys)
    assert moved / len(keys) > 0.7
    with pytest.raises(ServiceConfigError, match="p.seed: unknown field"):
        modulo_hash.parse_config({"seed": 1}, "p")


# ---------------------------------------------------------------------------- fakes


class _Sim:
    """Just enough of a Simulation for one SimBackend."""

    def __init__(self) -> None:
        self.loop = EventLoop()
        self.finished: list[tuple[float, int, str]] = []

    def finish(self, call: Any, code: str) -> None:
        call.state = 3
        self.finished.append((self.loop(), call.seq, code))
        call.backend.ended(call, code == "OK")


class _Call:
    def __init__(self, seq: int, duration: float, backend: SimBackend) -> None:
        self.seq, self.duration, self.backend = seq, duration, backend
        self.t_admit = 0.0
        self.timer: Any = None
        self.state = 0


def backend(**kw: Any) -> tuple[_Sim, SimBackend]:
    sim = _Sim()
    spec = BackendSpec(name="b:1", **kw)
    return sim, SimBackend(spec, 0, sim, random.Random(1), random.Random(2))  # type: ignore[arg-type]


def test_capacity_queues_excess_calls_fifo() -> None:
    sim, b = backend(capacity=2)
    calls = [_Call(i, 1.0, b) for i in range(5)]
    for c in calls:
        b.admit(c)  # type: ignore[arg-type]
    assert (b.active, len(b.queue), b.n, b.peak) == (2, 3, 5, 5)
    sim.loop.run(100)
    assert [(t, s) for t, s, _ in sim.finished] == [(1, 0), (1, 1), (2, 2), (2, 3), (3, 4)]
    assert b.queued_calls == 3 and b.queue_wait_max == 2.0 and b.queue_wait_total == 4.0
    assert b.n == 0 and b.area == pytest.approx(5 + 3 + 1)   # 5 in flight, then 3, then 1


def test_cancel_frees_the_slot_and_skips_queued_calls() -> None:
    sim, b = backend(capacity=1)
    a, q1, q2 = (_Call(i, 10.0, b) for i in range(3))
    for c in (a, q1, q2):
        b.admit(c)  # type: ignore[arg-type]
    b.cancel(q1)  # type: ignore[arg-type]
    sim.finish(q1, "DEADLINE_EXCEEDED")
    b.cancel(a)  # type: ignore[arg-type]
    sim.finish(a, "DEADLINE_EXCEEDED")
    assert b.active == 1 and q2.state == 2       # q2 went straight into service
    sim.loop.run(100)
    assert sim.finished[-1] == (10.0, 2, "OK")


def test_faults_errors_slow_and_down() -> None:
    sim, b = backend(service_time=parse_distribution(0.5, "s"))
    errs = Fault("errors", 0, None, rate=0.5, code="INTERNAL")
    b.fault_begin(errs)
    for i in range(400):
        b.admit(_Call(i, 0.0, b))  # type: ignore[arg-type]
    failed = sum(1 for _, _, code in sim.finished if code == "INTERNAL")
    assert 150 < failed < 250 and b.failed == failed
    b.fault_end(errs)
    sim.loop.run(100)
    assert sim.finished[-1][2] == "OK" and b.n == 0
    sim.finished.clear()
    slow = Fault("slow", 0, None, factor=4.0)
    b.fault_begin(slow)
    start = sim.loop()
    b.admit(_Call(1000, 1.0, b))  # type: ignore[arg-type]
    sim.loop.run(200)
    [(end, seq, code)] = sim.finished
    assert (seq, code) == (1000, "OK")
    assert end - start == pytest.approx((1.0 + 0.5) * 4.0)   # (duration + service) x factor
    b.fault_end(slow)
    # down: every call in flight or queued fails UNAVAILABLE at once, in arrival order
    sim.finished.clear()
    for i in range(3):
        b.admit(_Call(2000 + i, 5.0, b))  # type: ignore[arg-type]
    b.fault_begin(Fault("down", 0, None))
    assert [(s, c) for _, s, c in sim.finished] == [(2000, "UNAVAILABLE"), (2001, "UNAVAILABLE"),
                                                    (2002, "UNAVAILABLE")]
    assert b.n == 0 and b.active == 0 and not b.up and not b.health_serving()


def test_connection_states_backoff_and_recovery() -> None:
    sim, b = backend(connect_time=0.2)
    states: list[tuple[float, Connectivity]] = []
    conn = SimConnection(b, lambda s: states.append((sim.loop(), s)), random.Random(1))
    b.conn = conn
    conn.request_connection()
    sim.loop.run(1.0)
    assert states == [(0.0, Connectivity.CONNECTING), (0.2, Connectivity.READY)]
    down = Fault("down", 1.0, 20.0)
    sim.loop.call_at(1.0, b.fault_begin, down)
    sim.loop.call_at(20.0, b.fault_end, down)
    sim.loop.run(60.0)
    after = [(t, s) for t, s in states if t >= 1.0]
    assert after[0] == (1.0, Connectivity.TRANSIENT_FAILURE)
    connects = [t for t, s in after if s is Connectivity.CONNECTING]
    gaps = [b_ - a for a, b_ in zip(connects, connects[1:], strict=False)]
    assert all(g2 > g1 for g1, g2 in zip(gaps, gaps[1:], strict=False))   # backing off
    assert 0.8 <= connects[0] - 1.0 <= 1.2                              # 1 s +-20%
    ready = [t for t, s in after if s is Connectivity.READY]
    assert len(ready) == 1 and 20.0 < ready[0] < 20.0 + 0.2 + gaps[-1] * 1.6 * 1.2 + 1
    conn.shutdown()
    b.fault_begin(Fault("down", 60, None))
    sim.loop.run(500.0)
    assert states[-1][1] is Connectivity.READY   # a closed connection reports nothing


def reports_of(mode: str, **kw: Any) -> tuple[_Sim, SimBackend, list[tuple[float, Any]],
                                              SimChecker]:
    sim, b = backend(**kw)
    got: list[tuple[float, Any]] = []
    config = HealthCheckConfig(mode=mode, interval=2.0, jitter=0.2)
    checker = SimChecker(b, config, lambda r: got.append((sim.loop(), r)), random.Random(3))
    assert got == []     # never reports from inside start
    return sim, b, got, checker


def test_poll_checker_probes_with_jitter_and_follows_not_serving() -> None:
    sim, b, got, checker = reports_of("poll")
    ns = Fault("notServing", 5.0, 9.0)
    sim.loop.call_at(5.0, b.fault_begin, ns)
    sim.loop.call_at(9.0, b.fault_end, ns)
    sim.loop.run(20.0)
    times = [t for t, _ in got]
    assert times[0] == 0.0
    assert all(1.6 - 1e-9 <= b_ - a <= 2.4 + 1e-9 for a, b_ in zip(times, times[1:],
                                                                   strict=False))
    assert {r.kind for _, r in got} == {"probe"}
    assert all(r.serving == (not 5.0 <= t < 9.0) for t, r in got)
    checker.stop()
    n = len(got)
    sim.loop.run(40.0)
    assert len(got) == n


def test_watch_checker_sends_changes_and_probes_only_while_asked() -> None:
    sim, b, got, checker = reports_of("watch")
    ns = Fault("notServing", 5.0, 9.0)
    sim.loop.call_at(5.0, b.fault_begin, ns)
    sim.loop.call_at(9.0, b.fault_end, ns)
    sim.loop.run(20.0)
    assert [(t, r.kind, r.serving) for t, r in got] == [
        (0.0, "watch", True), (5.0, "watch", False), (9.0, "watch", True)]
    got.clear()
    checker.set_probing(True)        # ejected: Check probes every min(interval, 1 s)
    sim.loop.run(24.5)
    assert [r.kind for _, r in got] == ["probe"] * 5
    checker.set_probing(False)
    got.clear()
    sim.loop.run(40.0)
    assert got == []


def test_unimplemented_health_service_is_reported_once() -> None:
    sim, _, got, checker = reports_of("poll", health_service=False)
    checker.set_probing(True)
    sim.loop.run(30.0)
    assert [(t, r.kind) for t, r in got] == [(0.0, "unimplemented")]


def test_readmit_probe_interval_matches_the_real_prober() -> None:
    from lbclient._async import health as aio_health
    from lbclient._sync import health as sync_health
    from lbclient.simulate import backend as sim_backend

    assert sim_backend.READMIT_PROBE_INTERVAL == sync_health.READMIT_PROBE_INTERVAL \
        == aio_health.READMIT_PROBE_INTERVAL


# ---------------------------------------------------------------------------- whole runs


def run1(**overrides: Any) -> simulate.RunReport:
    return simulate.run(scenario(**overrides)).runs[0]


def test_calls_wait_for_connections_then_go_through() -> None:
    r = run1(backends=[{"connectTime": 2.0, "replicas": 2}],
             requests={"rate": 100, "count": 50, "arrivals": "uniform"})
    assert r.ok == 50 and r.no_endpoint == 0
    assert r.latency.max == pytest.approx(2.0)      # the first call waited for READY
    assert r.latency.p50 == pytest.approx(2.0 - 0.25, abs=0.01)


def test_deadlines_fail_calls_that_take_too_long() -> None:
    # one slot, 0.2 s per call, a call every 0.1 s, 0.35 s deadline: the first two make
    # it, then a FIFO queue under overload makes every later call wait too long
    r = run1(backends=[{"capacity": 1, "serviceTime": 0.2}],
             requests={"rate": 10, "count": 40, "arrivals": "uniform", "deadline": 0.35})
    assert r.codes == {"OK": 2, "DEADLINE_EXCEEDED": 38}
    assert r.latency.max == pytest.approx(0.3)
    # an expired call frees its slot: the backend never holds more than the queue
    assert r.backends[0].peak_concurrency <= 5
    slow = run1(backends=[{"capacity": 1, "serviceTime": 1.0}],
                requests={"rate": 10, "count": 20, "arrivals": "uniform", "deadline": 0.5})
    assert slow.codes == {"DEADLINE_EXCEEDED": 20}          # in service is no excuse


def test_no_endpoint_when_every_backend_is_down() -> None:
    r = run1(backends=[{"replicas": 2, "faults": [{"kind": "down", "start": 1, "end": 2}],
                        "serviceTime": 0.01}],
             requests={"rate": 100, "until": 4, "arrivals": "uniform"})
    # from the crash until a reconnect attempt after the restart (1 s backoff +-20%)
    assert 100 <= r.no_endpoint <= 100 + 120
    assert r.failed == r.codes["UNAVAILABLE"] and r.failed - r.no_endpoint <= 2
    assert all(d.detection_delay == 0 for d in r.downtime)


def test_until_stops_the_run_with_calls_in_flight() -> None:
    r = run1(until=4.95, requests={"rate": 10, "count": 100, "arrivals": "uniform",
                                   "duration": 3})
    assert r.sim_time == 4.95 and r.requests == 50 and r.ok == 20 and r.unfinished == 30


def test_timeline_and_report_dict() -> None:
    report = simulate.run(scenario(sampleInterval=0.5, requests={
        "rate": 4, "count": 8, "arrivals": "uniform", "duration": 1, "start": 0.1}))
    run = report.runs[0]
    assert [t for t, _ in run.timeline][:3] == [0.0, 0.5, 1.0]
    assert [sum(n) for _, n in run.timeline][:4] == [0, 2, 4, 4]
    d = report.to_dict(timeline=True)
    assert d["runs"][0]["timeline"][1] == [0.5, list(run.timeline[1][1])]
    assert "wall_seconds" not in d and "wall_seconds" in report.to_dict(timing=True)
    text = report.format_text()
    assert "-- round_robin (round_robin)" in text and "== comparison" not in text


@pytest.mark.parametrize("transitions, window, expected", [
    ([(0, True, "")], (10, 30), (None, "", None, 0)),
    ([(0, True, ""), (12, False, "ejected"), (31, True, "")], (10, 30), (12, "ejected", 31, 0)),
    ([(0, True, ""), (12, False, "ejected"), (20, True, ""), (21, False, "ejected"),
      (40, True, "")], (10, 30), (12, "ejected", 40, 1)),
    ([(0, True, ""), (12, False, "ejected"), (25, True, "")], (10, 30), (12, "ejected", 25, 0)),
    ([(0, True, ""), (12, False, "failed"), (50, True, "")], (10, None), (12, "failed", 50, 0)),
    ([(5, False, "unhealthy"), (8, True, ""), (11, False, "unhealthy")], (10, 30),
     (11, "unhealthy", None, 0)),
])
def test_marks(transitions: list[tuple[float, bool, str]], window: tuple[float, float | None],
               expected: tuple[Any, ...]) -> None:
    assert _marks(transitions, *window) == expected


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.99) == 4.0
    assert percentile([7.0], 0.1) == 7.0


def test_simulator_imports_no_grpc_threads_or_io() -> None:
    pkg = pathlib.Path(lbclient.simulate.__file__).parent
    for path in pkg.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top not in ("grpc", "grpc_health", "socket", "asyncio"), (path.name, name)
                # engine.py only reads threading.get_ident() to keep its logs quiet
                assert top != "threading" or path.name == "engine.py", (path.name, name)
                assert not name.startswith(("lbclient.channel", "lbclient._invoke")), name


def test_simulated_events_stay_out_of_the_process_logs(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    import logging
    import threading

    caplog.set_level(logging.DEBUG, logger="lbclient")
    r = run1(backends=[{"replicas": 3, "faults": [{"kind": "errors", "start": 0.5}]}],
             requests={"rate": 100, "count": 100},
             serviceConfig={"loadBalancingConfig": [{"outlier_detection": {
                 "consecutiveFailures": 2, "childPolicy": [{"round_robin": {}}]}}]})
    assert [e["kind"] for e in r.events].count("ejected") >= 1
    assert not [rec for rec in caplog.records if rec.name.startswith("lbclient.")]
    # other threads (real channels) still log while nothing filters them
    t = threading.Thread(target=lambda: logging.getLogger("lbclient.events").warning("real"))
    t.start()
    t.join(5)
    assert [rec.getMessage() for rec in caplog.records] == ["real"]
    assert not logging.getLogger("lbclient.events").filters
