"""The simulator's report: downtime and affinity analysis on hand-built histories, the
text rendering, the comparison, the plot (with and without matplotlib), and the edges of
the fakes and the engine (pending calls, deadlines while waiting, reconnects)."""

from __future__ import annotations

import json
import pathlib
import random
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from lbclient import ServiceConfigError, simulate
from lbclient.cli import main
from lbclient.config import HealthCheckConfig
from lbclient.connectivity import Connectivity
from lbclient.simulate import analysis, report, text
from lbclient.simulate.backend import SimBackend, SimChecker, SimConnection
from lbclient.simulate.clock import EventLoop
from lbclient.simulate.scenario import BackendSpec, Fault

# ---------------------------------------------------------------------------- analysis


def fake_sim(backends: list[tuple[str, list[Fault], list[tuple[float, bool, str]]]],
             failures: list[tuple[float, int, str]] = (),  # type: ignore[assignment]
             keys: dict[str, tuple[list[float], list[int]]] | None = None,
             stopped_at: float = 100.0) -> Any:
    bs = [SimpleNamespace(name=name, index=i, spec=SimpleNamespace(faults=faults),
                          transitions=transitions)
          for i, (name, faults, transitions) in enumerate(backends)]
    return SimpleNamespace(backends=bs, failures=sorted(failures), keys=keys or {},
                           stopped_at=stopped_at)


def test_count_failures_in_a_window() -> None:
    f = [(1.0, 0, "X"), (2.0, 1, "X"), (2.0, 0, "X"), (3.0, -1, "X"), (5.0, 0, "X")]
    f.sort()
    assert analysis._count(f, 2.0, 5.0, None) == 3       # [2, 5): end excluded
    assert analysis._count(f, 2.0, 5.0, 0) == 1
    assert analysis._count(f, 0.0, 10.0, 0) == 3
    assert analysis._count(f, 6.0, 10.0, None) == 0


def test_windows_merge_faults_with_the_same_window_in_time_order() -> None:
    faults = [Fault("slow", 20, None, factor=2), Fault("notServing", 5, 9),
              Fault("errors", 5, 9), Fault("down", 1, 2)]
    assert analysis._windows(faults, analysis.DETECTABLE) == [
        ("down", 1, 2), ("notServing+errors", 5, 9), ("slow", 20, None)]
    assert analysis._windows(faults, ("down",)) == [("down", 1, 2)]


def test_downtime_rows() -> None:
    sim = fake_sim(
        [("a:1", [Fault("errors", 10, 20)],
          [(0, True, ""), (11, False, "ejected"), (15, True, ""), (16, False, "ejected"),
           (22, True, "")]),
         ("b:1", [Fault("down", 10, 20)], [(0, True, "")]),
         ("c:1", [Fault("notServing", 10, 20)],
          [(0, True, ""), (12, False, "unhealthy"), (18, True, "")]),
         ("d:1", [Fault("down", 150, 160)], [(0, True, "")])],
        failures=[(10.5, 0, "UNAVAILABLE"), (10.7, 0, "UNAVAILABLE"), (12, 0, "UNAVAILABLE"),
                  (10.1, 1, "UNAVAILABLE"), (13, -1, "UNAVAILABLE"), (25, 0, "UNAVAILABLE")])
    rows = {d.backend: d for d in analysis.downtimes(sim)}
    assert "d:1" not in rows                     # starts after the run stopped
    a = rows["a:1"]
    assert (a.marked_at, a.detection_delay, a.reason) == (11, 1, "ejected")
    assert (a.readmitted_at, a.readmission_delay, a.flaps) == (22, 2, 1)
    assert (a.failed_before_detection, a.failed_on_backend, a.failed_in_window) == (2, 3, 5)
    b = rows["b:1"]
    assert b.marked_at is None and b.reason == "" and b.readmitted_at is None
    assert b.failed_before_detection == b.failed_on_backend == 1
    c = rows["c:1"]
    assert c.readmission_delay == -2 and c.flaps == 0     # readmitted while failing


def key_sim(histories: dict[str, list[tuple[float, int]]], fault: Fault) -> Any:
    keys = {k: ([t for t, _ in h], [s for _, s in h]) for k, h in histories.items()}
    return fake_sim([("s0", [], []), ("s1", [fault], []), ("s2", [], [])], keys=keys)


def test_affinity_on_hand_built_key_histories() -> None:
    fault = Fault("down", 10, 20)
    sim = key_sim({
        "stayed": [(1, 0), (12, 0), (25, 0)],
        "had_to": [(2, 1), (11, 2), (19, 2), (23, 2), (26, 1)],     # back 6 s after end
        "needless": [(3, 2), (15, 0), (30, 0)],
        "never_back": [(4, 1), (14, 0), (40, 0)],
        "no_before": [(12, 0), (30, 0)],                            # not compared
        "no_during": [(5, 1), (25, 1)],                             # not compared
    }, fault)
    [a] = analysis.affinities(sim)
    assert (a.backend, a.start, a.end, a.keys) == ("s1", 10, 20, 4)
    assert a.moved == 3 / 4 and a.had_to_move == 2 / 4 and a.moved_needlessly == 1 / 4
    assert a.returned == 1 / 2 and a.return_p50 == 6 and a.return_p90 == 6
    assert a.home_at_end == 2 / 4                  # stayed, had_to back home; not the others


def test_affinity_without_recovery_or_keys() -> None:
    sim = key_sim({"k": [(1, 1), (15, 0)]}, Fault("down", 10, None))
    [a] = analysis.affinities(sim)
    assert a.end is None and a.moved == 1.0 and a.returned is None and a.home_at_end is None
    assert analysis.affinities(fake_sim([("s0", [Fault("down", 1, 2)], [])])) == []
    # slow faults are no affinity events
    assert analysis.affinities(key_sim({"k": [(1, 1)]}, Fault("slow", 1, 2))) == []


# ---------------------------------------------------------------------------- text


@pytest.mark.parametrize("value, expected", [
    (None, "-"), (0.0, "0ms"), (0.0123, "12.3ms"), (0.5, "500ms"), (1.0, "1s"),
    (12.34, "12.3s"), (250.0, "250s"), (-2.5, "-2.5s")])
def test_secs(value: float | None, expected: str) -> None:
    assert text.secs(value) == expected


def test_pct_num_and_table() -> None:
    assert (text.pct(None), text.pct(0.2134), text.pct(1.0)) == ("-", "21.3%", "100.0%")
    assert (text.num(None), text.num(1.234), text.num(3, "{:.0f}")) == ("-", "1.23", "3")
    out = text.table(["name", "n"], [["alpha", "1"], ["b", "100"]]).splitlines()
    assert out == ["name     n", "-----  ---", "alpha    1", "b      100"]


def one_report(**kw: Any) -> simulate.Report:
    raw: dict[str, Any] = {"backends": [{"replicas": 2, "serviceTime": 0.01}],
                           "requests": {"rate": 50, "count": 100}}
    raw.update(kw)
    return simulate.run(raw)


def test_text_shows_fault_and_key_tables_only_when_there_are_some() -> None:
    plain = one_report().format_text(timing=False)
    assert "fault on" not in plain and "keys vs fault on" not in plain
    assert "wall" not in plain and plain.startswith("== scenario (seed 1, 2 backends)")
    keyed = one_report(
        backends=[{"replicas": 3, "serviceTime": 0.01},
                  {"name": "x:1", "faults": [{"kind": "down", "start": 0.5, "end": 1}]}],
        requests={"rate": 50, "count": 100, "keys": {"header": "x-k", "count": 10}},
        serviceConfig={"loadBalancingConfig": [{"ring_hash": {"requestHashHeader": "x-k"}}]}
    ).format_text()
    assert "fault on" in keyed and "keys vs fault on" in keyed and "0.5-1" in keyed
    assert "wall" in keyed


def test_comparison_columns_follow_the_scenario() -> None:
    r = one_report(policies=["round_robin", "random"])
    rows = r.comparison()
    assert [row["policy"] for row in rows] == ["round_robin", "random"]
    assert not ({"detection_delay", "moved"} & set(rows[0]))
    headers, cells = report.comparison_rows(rows)
    assert headers[-1] == "mean wait" and len(cells) == 2
    assert "== comparison" in r.format_text()
    faulty = one_report(backends=[{"replicas": 2, "faults": [{"kind": "down", "start": 1,
                                                              "end": 1.5}]}],
                        policies=["round_robin", "random"])
    headers, _ = report.comparison_rows(faulty.comparison())
    assert "detected after" in headers and "keys moved" not in headers


# ---------------------------------------------------------------------------- plot


def test_plot_without_matplotlib_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: pathlib.Path) -> None:
    from lbclient.simulate import plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(RuntimeError, match=r"pip install 'lbclient\[simulate\]'"):
        plot.plot_concurrency(one_report(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_draws_every_variant(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("matplotlib")
    from lbclient.simulate import plot

    one = tmp_path / "one.png"
    plot.plot_concurrency(one_report(), one)
    three = tmp_path / "three.png"
    plot.plot_concurrency(one_report(policies=["round_robin", "random", "pick_first"]), three)
    from matplotlib import image

    h1, h3 = image.imread(one).shape[0], image.imread(three).shape[0]
    assert h3 > 2 * h1 > 0                       # one panel per variant


def test_cli_plot_error_exits_1(tmp_path: pathlib.Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"backends": [{}], "requests": {"rate": 1, "count": 2}}))
    assert main(["simulate", str(path), "--plot", str(tmp_path / "no" / "dir.png")]) == 1
    captured = capsys.readouterr()
    assert "-- round_robin" in captured.out and captured.err.startswith("error: ")


def test_cli_json_has_wall_clock_and_text_does_not_plot(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"backends": [{}], "requests": {"rate": 1, "count": 2}}))
    assert main(["simulate", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["scenario"] == "s" and data["wall_seconds"] >= 0
    assert data["runs"][0]["wall_seconds"] >= 0 and "timeline" not in data["runs"][0]
    assert main(["simulate", str(path)]) == 0
    assert "plot written" not in capsys.readouterr().err


def test_bad_json_file_names_the_root(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("[1,")
    with pytest.raises(ServiceConfigError, match=r"^<root>: invalid JSON"):
        simulate.load_scenario(path)
    path.write_text("[]")
    with pytest.raises(ServiceConfigError, match=r"^<root>: must be a JSON object"):
        simulate.load_scenario(path)


# ---------------------------------------------------------------------------- fakes' edges


class _Sim:
    def __init__(self) -> None:
        self.loop = EventLoop()

    def finish(self, call: Any, code: str) -> None:
        call.backend.ended(call, code == "OK")


def sim_backend(**kw: Any) -> tuple[_Sim, SimBackend]:
    sim = _Sim()
    return sim, SimBackend(BackendSpec(name="b:1", **kw), 0, sim,  # type: ignore[arg-type]
                           random.Random(1), random.Random(2))


def test_connection_fails_while_connecting_and_ignores_repeats() -> None:
    sim, b = sim_backend(connect_time=1.0)
    states: list[tuple[float, Connectivity]] = []
    conn = SimConnection(b, lambda s: states.append((sim.loop(), s)), random.Random(1))
    b.conn = conn
    conn.request_connection()
    conn.request_connection()                 # already on its way: ignored
    sim.loop.call_at(0.5, b.fault_begin, Fault("down", 0.5, None))
    sim.loop.run(1.0)
    assert states == [(0.0, Connectivity.CONNECTING), (0.5, Connectivity.TRANSIENT_FAILURE)]
    conn.lost()                               # already failed: nothing new
    assert len(states) == 2
    sim.loop.run(3.0)
    assert [s for _, s in states[2:4]] == [Connectivity.CONNECTING,
                                           Connectivity.TRANSIENT_FAILURE]
    assert 1.3 <= states[2][0] <= 1.7         # one backoff (1 s +-20%) after the failure


def test_connection_reports_why_it_failed_and_needs_no_polling() -> None:
    """The parts of the balancer's Connection protocol a pushed, loop-driven fake has."""
    sim, b = sim_backend(connect_time=0.5)
    conn = SimConnection(b, lambda s: None, random.Random(1))
    conn.request_connection()
    sim.loop.run(1.0)
    assert (conn.state, conn.connection_error(), conn.poll()) == (Connectivity.READY, None,
                                                                  False)
    b.conn = conn
    b.fault_begin(Fault("down", 1.0, None))
    assert conn.state is Connectivity.TRANSIENT_FAILURE
    assert "backend is down" in (conn.connection_error() or "")
    assert conn.poll() is False
    conn.shutdown()
    assert conn.closed


def test_checker_edges() -> None:
    sim, b = sim_backend()
    got: list[Any] = []
    poll = SimChecker(b, HealthCheckConfig(mode="poll", interval=1.0, jitter=0.0),
                      got.append, random.Random(1))
    assert poll.probing
    poll.set_probing(False)                   # poll mode always probes
    assert poll.probing
    sim.loop.run(2.5)
    assert [r.kind for r in got] == ["probe"] * 3
    assert b.checkers == [poll]
    poll.stop()
    poll.stop()                               # idempotent
    assert b.checkers == [] and not poll.probing
    watch = SimChecker(b, HealthCheckConfig(mode="watch"), got.append, random.Random(1))
    watch.stop()
    b.fault_begin(Fault("notServing", 0, None))
    sim.loop.run(10.0)
    assert [r.kind for r in got] == ["probe"] * 3      # nothing after stop


# ---------------------------------------------------------------------------- engine edges


def test_calls_waiting_for_a_connection_expire_at_their_deadline() -> None:
    r = simulate.run({"backends": [{"connectTime": 1.0}],
                      "requests": {"rate": 10, "count": 20, "arrivals": "uniform",
                                   "deadline": 0.45}}).runs[0]
    # every call waits for READY at 1.0: those sent before 0.55 expire first
    assert r.codes == {"DEADLINE_EXCEEDED": 6, "OK": 14}
    assert r.backends[0].requests == 14 and r.no_endpoint == 0


def test_calls_still_waiting_when_the_run_stops_are_unfinished() -> None:
    r = simulate.run({"until": 2, "backends": [{"connectTime": 5.0}],
                      "requests": {"rate": 10, "count": 10, "arrivals": "uniform"}}).runs[0]
    assert (r.requests, r.ok, r.failed, r.unfinished) == (10, 0, 0, 10)
    assert r.backends[0].requests == 0


def test_with_policies_keeps_the_order_asked() -> None:
    sc = simulate.parse_scenario({"backends": [{}], "requests": {"rate": 1, "count": 1},
                                  "policies": ["round_robin", "random", "pick_first"]})
    assert [v.label for v in sc.with_policies(["pick_first", "round_robin"]).variants] == [
        "pick_first", "round_robin"]
    with pytest.raises(ServiceConfigError, match=r"^--policy nope"):
        sc.with_policies(["nope"])


# ---------------------------------------------------------------------------- odds and ends


def test_default_sampling_takes_about_a_thousand_samples() -> None:
    r = one_report(requests={"rate": 10, "count": 600, "arrivals": "uniform"})
    run = r.runs[0]
    assert 900 <= len(run.timeline) <= 1100
    fine = one_report(sampleInterval=0.01,
                      requests={"rate": 10, "count": 50, "arrivals": "uniform"}).runs[0]
    gaps = {round(b[0] - a[0], 9) for a, b in zip(fine.timeline, fine.timeline[1:],
                                                    strict=False)}
    assert gaps == {0.01}


def test_modulo_hash_joins_repeated_headers_like_ring_hash() -> None:
    from test_simulate_units import candidates

    from lbclient.balancer.picker import PickInfo
    from lbclient.balancer.policy import PolicyContext
    from lbclient.policies._hashing import xxhash64
    from lbclient.simulate import modulo_hash

    policy = modulo_hash.SPEC.create(modulo_hash.parse_config({"requestHashHeader": "k"}, "p"),
                                     PolicyContext(clock=lambda: 0.0, rng=random.Random(1)))
    cs = candidates(7)
    picker = policy.build_picker(cs)
    got = picker.pick(PickInfo("/m", (("k", "a"), ("K", "b")))).candidate
    assert got is cs[xxhash64("a,b") % 7]


def test_cli_policy_list_tolerates_spaces_and_empty_items(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"backends": [{}], "requests": {"rate": 1, "count": 2}}))
    assert main(["simulate", str(path), "--policy", " random , ,pick_first,"]) == 0
    out = capsys.readouterr().out
    assert "-- random (random)" in out and "-- pick_first (pick_first)" in out
    assert out.count("\n-- ") == 2 and "== comparison" in out


def test_a_run_without_failures_says_so() -> None:
    body = report.format_run(one_report().runs[0], timing=False)
    assert "failed 0 (none)" in body and "no endpoint 0, unfinished 0" in body
