"""The simulated backends behave like the queueing models they stand for: M/M/1 and
M/M/2 (Erlang C) waiting times and Little's law, exact round-robin bookkeeping, and the
command line run as its own process."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import pytest

from lbclient import simulate


def mmc(rate: float, service_mean: float, servers: int, count: int,
        seed: int = 3) -> simulate.RunReport:
    return simulate.run({
        "backends": [{"capacity": servers,
                      "serviceTime": {"type": "exponential", "mean": service_mean}}],
        "requests": {"rate": rate, "count": count}}, seed=seed).runs[0]


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in an M/M/c queue (offered load a = lambda/mu)."""
    top = offered ** servers / math.factorial(servers) * servers / (servers - offered)
    return top / (sum(offered ** k / math.factorial(k) for k in range(servers)) + top)


def test_m_m_1_waiting_time_and_occupancy() -> None:
    lam, mu = 5.0, 10.0
    r = mmc(lam, 1 / mu, 1, 40_000)
    [b] = r.backends
    assert r.latency.mean == pytest.approx(1 / (mu - lam), rel=0.07)        # W = 0.2 s
    assert b.mean_queue_wait == pytest.approx(lam / mu / (mu - lam), rel=0.1)  # Wq = 0.1 s
    assert b.mean_concurrency == pytest.approx(lam / (mu - lam), rel=0.07)  # L = 1
    assert b.queued / b.requests == pytest.approx(lam / mu, rel=0.05)       # P(wait) = rho


def test_m_m_2_matches_erlang_c() -> None:
    lam, mu, c = 15.0, 10.0, 2
    r = mmc(lam, 1 / mu, c, 40_000)
    [b] = r.backends
    p_wait = erlang_c(c, lam / mu)                                  # 0.643
    wq = p_wait / (c * mu - lam)                                    # 0.129 s
    assert b.queued / b.requests == pytest.approx(p_wait, rel=0.05)
    assert b.mean_queue_wait == pytest.approx(wq, rel=0.1)
    assert r.latency.mean == pytest.approx(wq + 1 / mu, rel=0.07)
    assert b.mean_concurrency == pytest.approx(lam * (wq + 1 / mu), rel=0.07)   # Little


def test_unlimited_capacity_never_queues() -> None:
    r = mmc(50.0, 0.5, 10**9, 5_000)
    assert r.backends[0].queued == 0 and r.backends[0].max_queue_wait == 0
    assert r.latency.mean == pytest.approx(0.5, rel=0.05)


def test_round_robin_bookkeeping_is_exact() -> None:
    """A call every 0.1 s over 3 backends, 0.25 s each: each backend sees one call every
    0.3 s, so calls never overlap on a backend."""
    r = simulate.run({"backends": [{"replicas": 3}],
                      "requests": {"rate": 10, "count": 300, "arrivals": "uniform",
                                   "duration": 0.25}}).runs[0]
    assert [b.requests for b in r.backends] == [100, 100, 100]
    assert [b.peak_concurrency for b in r.backends] == [1, 1, 1]
    span = 29.9 + 0.25
    for b in r.backends:
        assert b.mean_concurrency == pytest.approx(100 * 0.25 / span, rel=1e-9)
    assert r.latency.p50 == pytest.approx(0.25) and r.latency.max == pytest.approx(0.25)
    assert r.sim_time == pytest.approx(span)


def test_the_command_runs_as_its_own_process(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"backends": [{"replicas": 2}],
                                "requests": {"rate": 10, "count": 20},
                                "policies": ["round_robin", "random"]}))
    proc = subprocess.run([sys.executable, "-m", "lbclient", "simulate", str(path), "--json",
                           "--seed", "4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["seed"] == 4 and [r["label"] for r in data["runs"]] == ["round_robin", "random"]
    assert proc.stderr == ""          # simulated events stay out of the logs
