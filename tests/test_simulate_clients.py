"""``"clients": K`` in lbclient simulate: K client channels (each a real Balancer with its
own connections, health checkers and config) against the same simulated backends,
with connections, health checks and load per backend reported; the shipped fleet example
(100 clients, 300 backends: full mesh vs random vs deterministic subsetting)."""

from __future__ import annotations

import collections
import json
import pathlib
from typing import Any

import pytest

from lbclient import ServiceConfigError, simulate
from lbclient.cli import main
from lbclient.policies.subsetting_deterministic import deterministic_subset
from lbclient.simulate.engine import Simulation

EXAMPLE = (pathlib.Path(__file__).resolve().parent.parent / "examples" / "simulations"
           / "04_subsetting_fleet.json")
RR = [{"round_robin": {}}]


def fleet(clients: int, n: int = 12, count: int = 600, **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "clients": clients, "backends": [{"name": "b:80", "replicas": n}],
        "requests": {"rate": 200, "count": count, "arrivals": "uniform", "duration": 0.01}}
    raw.update(extra)
    return raw


def deterministic(size: int, **cfg: Any) -> dict[str, Any]:
    return {"deterministic_subsetting": {"subsetSize": size, "childPolicy": RR, **cfg}}


def random_subset(size: int) -> dict[str, Any]:
    return {"random_subsetting": {"subsetSize": size, "childPolicy": RR}}


# ------------------------------------------------------------------ the shipped example
@pytest.fixture(scope="module")
def example() -> simulate.Report:
    return simulate.run(EXAMPLE)


@pytest.mark.timeout(120)
def test_example_compares_full_mesh_random_and_deterministic(example: simulate.Report
                                                             ) -> None:
    mesh, rand, det = (example.run(label).fleet for label in
                       ("full mesh", "random subset 10", "deterministic subset 10"))
    assert mesh is not None and rand is not None and det is not None
    for f in (mesh, rand, det):
        assert f.clients == 100
    # full mesh: every client to every backend, so 30,000 connections and health streams
    assert (mesh.connections_total, mesh.connections_max, mesh.connections_min) == (
        30000, 100, 100)
    assert mesh.health_checks_total == 30000
    assert mesh.requests_max_over_mean == pytest.approx(1.0)
    # subsets of 10: 1,000 connections and health streams in all
    assert rand.connections_total == det.connections_total == 1000
    assert rand.health_checks_total == det.health_checks_total == 1000
    # deterministic: 3 or 4 per backend (3.33 on average: the best whole connections do)
    assert (det.connections_max, det.connections_min, det.unused) == (4, 3, 0)
    assert det.connections_max_over_mean == pytest.approx(1.2)
    assert det.requests_max_over_mean == pytest.approx(1.2)
    # random: far less even, and some backends get no client at all
    assert rand.connections_max_over_mean is not None
    assert rand.connections_max_over_mean >= 2.0 and rand.unused > 0
    assert rand.requests_max_over_mean is not None and rand.requests_max_over_mean >= 2.0
    print(f"\nconnections per backend max/mean: full mesh {mesh.connections_max_over_mean:.2f}"
          f", random {rand.connections_max_over_mean:.2f}, deterministic "
          f"{det.connections_max_over_mean:.2f}; wall {example.wall_seconds:.1f}s")


def test_example_accounts_for_every_call(example: simulate.Report) -> None:
    for run in example.runs:
        assert (run.requests, run.ok, run.failed, run.unfinished) == (30000, 30000, 0, 0)
        assert run.clients == 100
        assert sum(b.connections for b in run.backends) == run.fleet.connections_total  # type: ignore[union-attr]
        # no call went to a backend its client holds no connection to
        assert all(b.requests == 0 for b in run.backends if b.connections == 0)


def test_example_matches_the_pure_function(example: simulate.Report) -> None:
    names = list(example.backends)
    expected = collections.Counter(a for i in range(100)
                                   for a in deterministic_subset(names, i, 10, 100))
    run = example.run("deterministic subset 10")
    assert {b.name: b.connections for b in run.backends} == {n: expected[n] for n in names}


# ------------------------------------------------------------------ semantics
def test_each_client_gets_its_index_and_the_count() -> None:
    sc = simulate.parse_scenario(fleet(4, policies=[{"policy": deterministic(3)}]))
    configs = sc.variants[0].client_configs
    assert [c.lb.config.client_index for c, _ in configs] == [0, 1, 2, 3]
    assert {c.lb.config.client_count for c, _ in configs} == {4}
    sim = Simulation(sc, sc.variants[0], 1)
    sim.run()
    subsets = [set(c.final_stats) for c in sim.clients]
    assert subsets == [set(deterministic_subset([b.name for b in sim.backends], i, 3, 4))
                       for i in range(4)]
    assert set().union(*subsets) == {b.name for b in sim.backends}    # 4 x 3 = 12: all


def test_an_index_set_in_the_config_is_shared_by_every_client() -> None:
    r = simulate.run(fleet(5, policies=[{"policy": deterministic(3, clientIndex=2)}]))
    conns = sorted(b.connections for b in r.runs[0].backends)
    assert conns == [0] * 9 + [5] * 3          # the whole fleet on the same 3 backends


def test_a_count_that_does_not_fit_the_fleet_is_a_scenario_error() -> None:
    with pytest.raises(ServiceConfigError) as exc:
        simulate.parse_scenario(fleet(5, policies=[{"policy": deterministic(2,
                                                                            clientCount=3)}]))
    assert exc.value.path == ("policies[0].loadBalancingConfig[0].deterministic_subsetting"
                              ".clientIndex")
    assert "less than clientCount (3), got 3" in str(exc.value)


@pytest.mark.parametrize("value, words", [(0, "at least 1"), ("many", "integer"),
                                          (10_001, "at most 10000"), (True, "integer")])
def test_bad_clients_values(value: Any, words: str) -> None:
    with pytest.raises(ServiceConfigError) as exc:
        simulate.parse_scenario({**fleet(1), "clients": value})
    assert exc.value.path == "clients" and words in str(exc.value)


def test_calls_are_sent_by_the_clients_in_turn() -> None:
    sc = simulate.parse_scenario(fleet(3, count=300, policies=[{"policy": random_subset(2)}]))
    sim = Simulation(sc, sc.variants[0], 1)
    sim.run()
    per_client = [sum(calls for _, calls, _ in c.final_stats.values()) for c in sim.clients]
    assert per_client == [100, 100, 100]
    # each client's calls went to its own subset only, split by its round robin child
    for c in sim.clients:
        calls = [n for _, n, _ in c.final_stats.values()]
        assert len(calls) == 2 and sorted(calls) == [50, 50]


def test_one_client_is_the_plain_simulation() -> None:
    raw = fleet(1, policies=["round_robin", {"policy": random_subset(4)}])
    plain = dict(raw)
    plain.pop("clients")
    assert simulate.run(raw).to_dict() == simulate.run(plain).to_dict()
    r = simulate.run(raw)
    assert r.runs[0].clients == 1 and "conns" not in r.format_text()
    rand = r.runs[1].fleet
    assert rand is not None and (rand.connections_total, rand.unused) == (4, 8)
    # a single deterministic client is its whole fleet: clientCount 1 covers every backend
    one = simulate.run(fleet(1, policies=[{"policy": deterministic(4)}])).runs[0].fleet
    assert one is not None and one.connections_total == 12


def test_random_subsetting_clients_draw_their_own_seeds_and_runs_repeat() -> None:
    raw = fleet(6, policies=[{"policy": random_subset(3)}])
    sc = simulate.parse_scenario(raw)
    sim = Simulation(sc, sc.variants[0], 1)
    sim.run()
    subsets = {tuple(sorted(c.final_stats)) for c in sim.clients}
    assert len(subsets) >= 5                     # 6 clients' seeds: (almost) all differ
    assert simulate.run(raw).to_dict() == simulate.run(raw).to_dict()
    assert simulate.run(raw, seed=2).to_dict() != simulate.run(raw).to_dict()


def test_a_backend_failure_is_seen_by_every_client_holding_it() -> None:
    """Each client's own connection to the crashed backend fails; the calls of every
    client avoid it; the backend counts as unfit from the first client's mark until
    the last one has it back."""
    raw = fleet(4, n=3, count=2000, backends=[
        {"name": "a:80"}, {"name": "b:80"},
        {"name": "x:80", "faults": [{"kind": "down", "start": 2, "end": 5}]}],
        requests={"rate": 200, "count": 2000, "arrivals": "uniform", "duration": 0.01})
    r = simulate.run(raw).runs[0]
    x = next(b for b in r.backends if b.name == "x:80")
    assert x.connections == 4
    (down,) = r.downtime
    assert down.detection_delay is not None and down.detection_delay < 0.1
    assert down.readmitted_at is not None and down.readmitted_at > 5
    assert r.failed == down.failed_in_window <= 8          # only calls in flight when it died
    clients_marking = {e["client"] for e in r.events
                       if e["address"] == "x:80" and e["kind"] == "added"}
    assert clients_marking == {0, 1, 2, 3}


def test_report_text_and_json_show_the_fleet(capsys: pytest.CaptureFixture[str],
                                             tmp_path: pathlib.Path) -> None:
    path = tmp_path / "f.json"
    path.write_text(json.dumps(fleet(3, policies=["round_robin",
                                                  {"policy": random_subset(2)}])))
    assert main(["simulate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "fleet: 3 clients, 36 connections" in out
    assert "conns max/mean" in out and "unused backends" in out
    assert main(["simulate", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    run = d["runs"][1]
    assert run["clients"] == 3 and run["fleet"]["connections_total"] == 6
    assert sum(b["connections"] for b in run["backends"]) == 6
    assert d["comparison"][0]["connections"] == 36
    assert d["comparison"][1]["unused"] == run["fleet"]["unused"]
