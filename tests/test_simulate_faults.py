"""Fault windows in the simulator: overlapping and zero-length windows, several error
codes, stacked slowdowns, and how each kind reaches the balancer (connectivity, health,
call outcomes) — observed through whole runs."""

from __future__ import annotations

from typing import Any

import pytest

from lbclient import ServiceConfigError, simulate
from lbclient.simulate.engine import Simulation


def sim_of(raw: dict[str, Any], seed: int = 1) -> Simulation:
    sc = simulate.parse_scenario(raw)
    sim = Simulation(sc, sc.variants[0], seed)
    sim.run()
    return sim


def two(faults: list[dict[str, Any]], until: float = 20.0, **config: Any) -> Simulation:
    """Backend x:1 with ``faults`` and a healthy y:1; a call every 10 ms, 1 ms each."""
    return sim_of({"backends": [{"name": "x:1", "serviceTime": 0.001, "faults": faults},
                                {"name": "y:1", "serviceTime": 0.001}],
                   "requests": {"rate": 100, "until": until, "arrivals": "uniform",
                                "start": 0.005},
                   "serviceConfig": {"lbclient": {"panicThreshold": 0}, **config}})


def unfit_spans(sim: Simulation, name: str) -> list[tuple[float, float | None]]:
    spans: list[tuple[float, float | None]] = []
    for t, fit, _ in sim.by_name[name].transitions:
        if not fit:
            spans.append((t, None))
        elif spans and spans[-1][1] is None:
            spans[-1] = (spans[-1][0], t)
    return spans


def test_overlapping_down_windows_keep_the_backend_down_until_the_last_ends() -> None:
    sim = two([{"kind": "down", "start": 1, "end": 5}, {"kind": "down", "start": 3, "end": 8}])
    [(down, up)] = unfit_spans(sim, "x:1")
    assert down == 1 and up is not None and up > 8          # back only after t=8
    placed = sim.by_name["x:1"].placed
    assert placed == pytest.approx(100 * (20 - (up - 1)) / 2, abs=3)


def test_a_zero_length_down_window_still_drops_the_connection() -> None:
    sim = two([{"kind": "down", "start": 2, "end": 2}])
    [(down, up)] = unfit_spans(sim, "x:1")
    assert down == 2 and up is not None and 2 < up < 2 + 1.3   # the first reconnect works
    assert sim.codes.get("UNAVAILABLE", 0) <= 1


def test_overlapping_error_windows_fail_with_the_earliest_code() -> None:
    sim = two([{"kind": "errors", "start": 1, "end": 4, "code": "INTERNAL"},
               {"kind": "errors", "start": 2, "end": 6, "code": "UNKNOWN"}], until=8)
    # x:1 gets every other call: 1-4 s INTERNAL, 4-6 s UNKNOWN
    assert sim.codes["INTERNAL"] == pytest.approx(150, abs=2)
    assert sim.codes["UNKNOWN"] == pytest.approx(100, abs=2)
    assert unfit_spans(sim, "x:1") == []            # nothing detects call failures here


def test_partial_error_rate() -> None:
    sim = two([{"kind": "errors", "start": 0, "rate": 0.25}], until=40)
    x = sim.by_name["x:1"]
    assert x.failed / x.placed == pytest.approx(0.25, abs=0.03)
    assert sim.by_name["y:1"].failed == 0


def test_stacked_slow_windows_multiply() -> None:
    sim = sim_of({"backends": [{"serviceTime": 0.1, "faults": [
        {"kind": "slow", "start": 0, "end": 10, "factor": 2},
        {"kind": "slow", "start": 5, "end": 10, "factor": 3}]}],
        "requests": {"rate": 1, "count": 10, "arrivals": "uniform", "start": 0.5}})
    lat = sim.latencies
    assert lat[:5] == pytest.approx([0.2] * 5) and lat[5:] == pytest.approx([0.6] * 5)


def test_overlapping_not_serving_windows_with_watch_health() -> None:
    sim = two([{"kind": "notServing", "start": 1, "end": 4},
               {"kind": "notServing", "start": 3, "end": 6}], healthCheckConfig={})
    assert unfit_spans(sim, "x:1") == [(1, 6)]
    assert sim.codes == {"OK": sim.seq}


def test_not_serving_during_down_is_seen_after_the_reconnect() -> None:
    """Health checking stops while the connection is down; the first answer after the
    reconnect says NOT_SERVING, so the endpoint stays out until that window ends."""
    sim = two([{"kind": "down", "start": 1, "end": 2},
               {"kind": "notServing", "start": 1, "end": 9}], healthCheckConfig={})
    [(down, up)] = unfit_spans(sim, "x:1")
    assert (down, up) == (1, 9)
    reasons = [why for _, fit, why in sim.by_name["x:1"].transitions if not fit]
    assert reasons == ["failed"]


def test_faults_beyond_the_run_change_nothing() -> None:
    sim = two([{"kind": "down", "start": 100}], until=5)
    assert unfit_spans(sim, "x:1") == [] and sim.codes == {"OK": sim.seq}
    report = simulate.report.build_run_report(sim, 0.0)
    assert report.downtime == ()


def test_policy_names_twice_is_a_usage_error() -> None:
    sc = simulate.parse_scenario({"backends": [{}], "requests": {"rate": 1, "count": 1}})
    with pytest.raises(ServiceConfigError, match=r"^--policy random: named twice"):
        sc.with_policies(["random", "round_robin", "random"])


def test_event_loop_pending_counts_cancelled_timers_until_reached() -> None:
    from lbclient.simulate.clock import EventLoop

    loop = EventLoop()
    timers = [loop.call_at(float(i), lambda: None) for i in range(3)]
    timers[1].cancel()
    assert loop.pending() == 3
    loop.run(1.5)
    assert loop.pending() == 1 and loop.events == 1     # t=0 ran, t=1 was cancelled
