"""The seed's practice scenarios in examples/simulations/ run on the real pickers and
give the answers the seed expects; a seed always gives the same report; the command
line prints, writes JSON and plots."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from lbclient import simulate
from lbclient.cli import main

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples" / "simulations"
SCENARIOS = sorted(p.name for p in EXAMPLES.glob("*.json"))


@pytest.fixture(scope="module")
def reports() -> dict[str, simulate.Report]:
    return {name: simulate.run(EXAMPLES / name) for name in SCENARIOS}


def test_the_seed_scenarios_are_shipped() -> None:
    for name in ("01_weighted_least_connections.json", "01b_mixed_durations.json",
                 "02_server_failure.json", "02b_server_crash.json", "03_hash_affinity.json"):
        assert name in SCENARIOS
    readme = (EXAMPLES / "README.md").read_text()
    for name in SCENARIOS:
        assert f"[{name}]({name})" in readme, name


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_request_is_accounted_for(name: str, reports: dict[str, simulate.Report]) -> None:
    for run in reports[name].runs:
        assert run.requests > 0
        assert run.ok + run.failed + run.unfinished == run.requests, run.label
        assert sum(run.codes.values()) == run.ok + run.failed
        placed = sum(b.requests for b in run.backends)
        assert run.ok <= placed <= run.requests - run.no_endpoint
        assert sum(b.ok for b in run.backends) == run.ok
        assert sum(b.ok + b.failed for b in run.backends) <= placed
        assert abs(sum(b.share for b in run.backends) - 1.0) < 1e-9
        for b in run.backends:
            assert 0 <= b.mean_concurrency <= b.peak_concurrency


def test_weighted_policies_follow_the_weights(reports: dict[str, simulate.Report]) -> None:
    """Practice 1: the 3x server gets ~3/7 of the calls with weighted round robin and
    weighted least connections, ~1/5 with least connections that ignores the weights;
    weighted least connections is the most balanced, round robin the least."""
    r = reports["01_weighted_least_connections.json"]
    share = {run.label: run.backends[0].share for run in r.runs}
    assert share["weighted_round_robin"] == pytest.approx(3 / 7, abs=0.01)
    assert share["least_connections"] == pytest.approx(3 / 7, abs=0.05)
    assert share["least_connections (no weights)"] == pytest.approx(1 / 5, abs=0.05)
    assert share["round_robin"] == pytest.approx(1 / 5, abs=0.005)
    imb = {run.label: run.imbalance for run in r.runs}
    assert imb["least_connections"] == min(imb.values())
    assert imb["round_robin"] == max(imb.values())
    # ignoring the weights overloads the small servers: calls queue there
    waits = {run.label: sum(b.queued for b in run.backends) for run in r.runs}
    assert waits["least_connections"] == 0
    assert waits["least_connections (no weights)"] > 100 and waits["round_robin"] > 100


def test_least_connections_beats_round_robin_on_mixed_durations(
        reports: dict[str, simulate.Report]) -> None:
    r = reports["01b_mixed_durations.json"]
    imb = {run.label: run.imbalance for run in r.runs}
    assert imb["least_connections"] < imb["weighted_round_robin"] < imb["round_robin"]
    assert imb["least_connections (no weights)"] < imb["round_robin"]
    peak = {run.label: max(b.peak_concurrency for b in run.backends[1:]) for run in r.runs}
    assert peak["least_connections"] < peak["round_robin"]   # small servers' worst moment


def test_server_failure_detection(reports: dict[str, simulate.Report]) -> None:
    """Practice 2: without detection a fifth of the calls fail during the fault; health
    polling detects it after about N probe intervals and readmits after about M;
    consecutive failures eject within a fraction of a second."""
    r = reports["02_server_failure.json"]
    none = r.run("no detection")
    [d] = none.downtime
    assert d.marked_at is None and d.kind == "errors+notServing"
    assert d.failed_on_backend == pytest.approx(20 * 100 / 5, rel=0.15)
    poll = r.run("health poll 1s N=3/M=2").downtime[0]
    assert poll.reason == "unhealthy"
    assert 2.0 - 0.3 <= poll.detection_delay <= 3.0 + 0.6       # 3 probes, 1 s +-20%
    assert 1.0 - 0.3 <= poll.readmission_delay <= 2.0 + 0.5     # 2 good probes
    slow = r.run("health poll 5s N=2/M=3").downtime[0]
    assert slow.detection_delay > poll.detection_delay
    assert slow.failed_before_detection > poll.failed_before_detection
    watch = r.run("health watch").downtime[0]
    assert watch.detection_delay == 0 and watch.failed_in_window == 0
    od = r.run("outlier 5 consecutive").downtime[0]
    assert od.reason == "ejected" and od.detection_delay < 0.5
    # five in a row; calls that were in service when the fault began still succeed
    # after it began and restart the count
    assert 5 <= od.failed_before_detection <= 8
    assert none.failed > 10 * r.run("outlier 5 consecutive").failed
    fp = r.run("outlier failure% (1s)").downtime[0]
    assert fp.reason == "ejected" and fp.detection_delay <= 1.0 + 1e-9
    # every call of the failing server is accounted for in the transition figures
    for run in r.runs:
        d = run.downtime[0]
        assert d.failed_before_detection <= d.failed_on_backend <= d.failed_in_window
        assert d.failed_in_window == run.failed


def test_server_crash_is_noticed_at_once_and_readmitted_after_reconnecting(
        reports: dict[str, simulate.Report]) -> None:
    r = reports["02b_server_crash.json"]
    for run in r.runs:
        [d] = run.downtime
        assert d.kind == "down" and d.detection_delay == 0 and d.reason == "failed"
        # gRPC's reconnect backoff: the first attempt after the restart
        assert 0 < d.readmission_delay < 15
        assert run.failed == d.failed_on_backend       # only calls in flight at the crash
        assert run.no_endpoint == 0


def test_consistent_hashing_moves_one_nth_and_modulo_most(
        reports: dict[str, simulate.Report]) -> None:
    """Practice 3: with 5 servers, consistent hashing moves ~1/5 of the clients (only
    those of the failed server), modulo ~4/5; on recovery ring_hash brings them back as
    soon as the server is readmitted, sticky sessions spread over returnWindow."""
    r = reports["03_hash_affinity.json"]
    n = len(r.backends)
    for label in ("ring_hash", "maglev", "sticky (returnWindow 30s)"):
        [a] = r.run(label).affinity
        assert a.keys > 900
        assert a.moved == a.had_to_move and a.moved_needlessly == 0, label
        assert a.moved == pytest.approx(1 / n, abs=0.07), label
        assert a.returned == 1.0 and a.home_at_end == 1.0
    [m] = r.run("modulo").affinity
    assert m.moved == pytest.approx((n - 1) / n, abs=0.08)
    assert m.moved_needlessly > 0.5
    ring = r.run("ring_hash")
    sticky = r.run("sticky (returnWindow 30s)")
    readmitted = ring.downtime[0].readmission_delay
    assert readmitted is not None and readmitted > 0
    # ring_hash: every key is back at its first request after readmission (a key sends
    # every 2.5 s on average: 90% of the gaps are under 6 s)
    assert ring.affinity[0].return_p90 < readmitted + 10
    # sticky: spread over the 30 s window (the median near the middle)
    assert sticky.affinity[0].return_p50 > ring.affinity[0].return_p50 + 5
    assert sticky.affinity[0].return_p90 > readmitted + 20


# ---------------------------------------------------------------------------- determinism
def test_same_seed_same_report() -> None:
    path = EXAMPLES / "02b_server_crash.json"
    a = simulate.run(path, seed=11)
    b = simulate.run(json.loads(path.read_text()), seed=11)
    assert a.to_dict() == b.to_dict()
    assert a == b
    c = simulate.run(path, seed=12)
    assert c.to_dict() != a.to_dict()


def test_variants_see_the_same_requests() -> None:
    """Every variant replays the same arrivals and durations: without queueing the
    total latency is the total duration, whatever the policy."""
    r = simulate.run({"backends": [{"replicas": 4}],
                      "requests": {"rate": 20, "count": 500,
                                   "duration": {"type": "exponential", "mean": 0.5}},
                      "policies": ["round_robin", "least_request", "random"]}, seed=5)
    totals = {round(run.latency.mean * run.ok, 9) for run in r.runs if run.latency.mean}
    assert len(totals) == 1 and {run.ok for run in r.runs} == {500}
    shares = {tuple(b.requests for b in run.backends) for run in r.runs}
    assert len(shares) == 3        # ...while the policies place them differently


# ---------------------------------------------------------------------------- the CLI
def test_cli_prints_tables_and_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", str(EXAMPLES / "01_weighted_least_connections.json"),
                 "--policy", "round_robin,least_connections", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "-- round_robin (round_robin)" in out
    assert "-- least_connections (least_connections)" in out
    assert "weighted_round_robin" not in out
    assert "== comparison" in out and "big:80" in out


def test_cli_json_matches_the_api(tmp_path: pathlib.Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = EXAMPLES / "03_hash_affinity.json"
    scenario = json.loads(path.read_text())
    scenario["requests"]["until"] = 40
    small = tmp_path / "small.json"
    small.write_text(json.dumps(scenario))
    assert main(["simulate", str(small), "--policy", "ring_hash,modulo", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    api = simulate.run(small, policies=["ring_hash", "modulo"]).to_dict()
    data.pop("wall_seconds")
    for run in data["runs"]:
        run.pop("wall_seconds")
    assert data == json.loads(json.dumps(api))
    assert [row["policy"] for row in data["comparison"]] == ["ring_hash", "modulo"]


def test_cli_policy_not_in_the_scenario_uses_its_defaults(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", str(EXAMPLES / "01_weighted_least_connections.json"),
                 "--policy", "random,pick_first", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    pf = data["runs"][1]
    assert pf["policy"] == "pick_first"
    assert sum(b["requests"] > 0 for b in pf["backends"]) == 1


@pytest.mark.parametrize("argv, code, message", [
    (["--policy", "nosuch"], 2, 'error at --policy nosuch'),
    (["--seed", "x"], 2, "invalid int value"),
])
def test_cli_usage_errors(argv: list[str], code: int, message: str,
                          capsys: pytest.CaptureFixture[str]) -> None:
    path = str(EXAMPLES / "01_weighted_least_connections.json")
    try:
        rc = main(["simulate", path, *argv])
    except SystemExit as exc:
        rc = int(exc.code or 0)
    assert rc == code
    assert message in capsys.readouterr().err


def test_cli_bad_scenario_names_the_json_path(tmp_path: pathlib.Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"backends": [{"capacity": 0}], "requests": {"rate": 1,
                                                                           "count": 1}}))
    assert main(["simulate", str(bad)]) == 1
    assert capsys.readouterr().err.strip() == (
        "error at backends[0].capacity: must be at least 1, got 0")
    assert main(["simulate", str(tmp_path / "missing.json")]) == 2
    bad.write_text("{not json")
    assert main(["simulate", str(bad)]) == 1
    assert "invalid JSON" in capsys.readouterr().err


def test_cli_plot_writes_a_png(tmp_path: pathlib.Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "c.png"
    assert main(["simulate", str(EXAMPLES / "02b_server_crash.json"), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000
    assert "plot written" in capsys.readouterr().err


def _run_dict(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"backends": [{"replicas": 3, "serviceTime": 0.01}],
                            "requests": {"rate": 50, "count": 100}}
    base.update(overrides)
    return base


def test_python_api_accepts_dicts_and_scenarios() -> None:
    sc = simulate.parse_scenario(_run_dict())
    a = simulate.run(sc)
    b = simulate.run(_run_dict())
    assert a == b and a.runs[0].label == "round_robin" and a.runs[0].ok == 100
    assert a.run("round_robin") is a.runs[0]
    with pytest.raises(KeyError, match="no variant"):
        a.run("nope")


def test_docs_describe_every_scenario_field_and_file() -> None:
    from lbclient.simulate import distributions, scenario

    docs = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "simulate.md").read_text()
    fields = (scenario._TOP | scenario._BACKEND | scenario._STREAM
              | {"kind", "start", "end", "rate", "code", "factor", "header", "order", "prefix",
                 "label", "policy", "slowFraction", "median", "sigma"})
    for name in sorted(fields):
        assert f"`{name}`" in docs or f'"{name}"' in docs, name
    for kind in (*scenario.FAULT_KINDS, *distributions.KINDS):
        assert f"`{kind}`" in docs or f'"{kind}"' in docs, kind
    for name in SCENARIOS:
        assert name in docs, name


def test_slow_start_after_health_recovery(reports: dict[str, simulate.Report]) -> None:
    r = reports["02_server_failure.json"]
    plain = r.run("health watch").backends[0]
    ramped = r.run("health watch + slow start 10s").backends[0]
    assert r.run("health watch + slow start 10s").failed == 0
    assert plain.requests - 200 < ramped.requests < plain.requests - 30
