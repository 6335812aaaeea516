"""benchmarks/bench_simulate.py follows the benchmark module convention and measures
what it says (structure only, never speed)."""

from __future__ import annotations

import math
import os

import pytest

from benchmarks import bench_simulate, run
from lbclient import simulate


def test_smoke_section_has_finite_metrics_per_policy() -> None:
    section = bench_simulate.run_smoke()
    assert section.status == "ok" and section.title == bench_simulate.TITLE
    [table] = section.tables
    assert [row[0] for row in table.rows] == list(bench_simulate.SMOKE.policies)
    for key in ("round_robin.wall_s", "round_robin.cpu_s", "round_robin.requests_per_cpu_s",
                "round_robin.cpu_s_per_100k"):
        assert math.isfinite(section.metrics[key]) and section.metrics[key] > 0, key
    assert "per 100k" in table.headers[-1]


def test_the_benchmark_scenario_is_valid_for_every_policy() -> None:
    for policy in bench_simulate.POLICIES:
        sc = simulate.parse_scenario(bench_simulate.scenario(500, policy))
        assert [v.label for v in sc.variants] == [policy]
        wall, cpu, done = bench_simulate.measure_one(500, policy)
        assert done == 500 and wall > 0 and cpu >= 0


def test_one_core_restores_the_affinity() -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_getaffinity on this platform")
    before = os.sched_getaffinity(0)
    with bench_simulate.one_core() as pinned:
        if pinned.startswith("pinned"):
            assert len(os.sched_getaffinity(0)) == 1
    assert os.sched_getaffinity(0) == before


def test_the_runner_discovers_it() -> None:
    assert "simulate" in [s.name for s in run.discover()]
    assert bench_simulate.FULL.requests == 100_000
