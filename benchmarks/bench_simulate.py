"""Simulator speed: 100,000 simulated requests on one core (issue 12's goal: < 10 s).

What runs is ``lbclient.simulate.run`` on a pure scenario (no network): 5 backends
(10 concurrent calls each, exponential 20 ms service), Poisson arrivals at 1,000/s with
10,000 client keys in a header, and one backend failing (UNAVAILABLE and NOT_SERVING)
for 10 s of the ~100 s run. Each policy is a full simulation through the real balancer,
picker, ``EndpointStats`` and (for the last variant) poll health checks plus outlier
detection. The process is pinned to one CPU while measuring (``sched_setaffinity``,
restored afterwards); wall and CPU time (``time.process_time``) are both reported, and
the goal is judged on CPU time, which other processes on the machine do not inflate.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from benchmarks._common import Section, Table, fmt_summary, interleave, standalone_main, summarize
from lbclient import simulate

TITLE = "Simulator: 100,000 simulated requests on one core"
GOAL_SECONDS = 10.0
HEADER = "x-client-id"

POLICIES: dict[str, dict[str, Any]] = {
    "round_robin": {"policy": {"round_robin": {}}},
    "least_connections": {"policy": {"least_connections": {}}},
    "weighted_round_robin": {"policy": {"weighted_round_robin": {}}},
    "ring_hash": {"policy": {"ring_hash": {"requestHashHeader": HEADER}}},
    "outlier_detection + health poll": {
        "policy": {"outlier_detection": {
            "interval": "1s", "consecutiveFailures": 5,
            "failurePercentageEjection": {"minimumHosts": 3, "requestVolume": 20},
            "childPolicy": [{"round_robin": {}}]}},
        "serviceConfig": {"healthCheckConfig": {"mode": "poll", "interval": "1s"}}},
}


@dataclass(frozen=True)
class Settings:
    requests: int = 100_000
    reps: int = 3
    policies: tuple[str, ...] = tuple(POLICIES)


FULL = Settings()
QUICK = replace(FULL, reps=1)
SMOKE = replace(FULL, requests=2_000, reps=1, policies=("round_robin",))


def scenario(requests: int, policy: str) -> dict[str, Any]:
    entry = {"label": policy, **POLICIES[policy]}
    return {
        "name": "bench",
        "backends": [
            {"name": "s1:80", "capacity": 10, "serviceTime": {"type": "exponential",
                                                              "mean": 0.02},
             "faults": [{"kind": "errors", "start": 40, "end": 50},
                        {"kind": "notServing", "start": 40, "end": 50}]},
            {"capacity": 10, "serviceTime": {"type": "exponential", "mean": 0.02},
             "replicas": 4}],
        "requests": {"rate": 1000, "count": requests,
                     "keys": {"header": HEADER, "count": 10_000}},
        "policies": [entry],
    }


@contextmanager
def one_core() -> Iterator[str]:
    """Pin this process to one CPU (restored on exit); yields a description."""
    get = getattr(os, "sched_getaffinity", None)
    set_ = getattr(os, "sched_setaffinity", None)
    if get is None or set_ is None:
        yield "not pinned (no sched_setaffinity on this platform)"
        return
    before = get(0)
    cpu = min(before)
    try:
        set_(0, {cpu})
    except OSError as exc:
        yield f"not pinned ({exc})"
        return
    try:
        yield f"pinned to CPU {cpu}"
    finally:
        set_(0, before)


def measure_one(requests: int, policy: str) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, requests finished) for one simulation."""
    sc = simulate.parse_scenario(scenario(requests, policy))
    wall, cpu = time.perf_counter(), time.process_time()
    report = simulate.run(sc)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    run = report.runs[0]
    if run.ok + run.failed != requests:
        raise RuntimeError(f"{policy}: {run.ok + run.failed} of {requests} requests finished")
    return wall, cpu, run.ok + run.failed


def measure(settings: Settings) -> Section:
    section = Section(TITLE)
    def variant(policy: str) -> Callable[[], tuple[float, float, int]]:
        return lambda: measure_one(settings.requests, policy)

    with one_core() as pinned:
        results = interleave({p: variant(p) for p in settings.policies}, settings.reps)
    table = Table(["policy", "wall s", "CPU s", "requests/s (CPU)",
                   f"CPU s per 100k (goal < {GOAL_SECONDS:g})"],
                  caption=f"{settings.requests:,} requests per run, {settings.reps} "
                          "interleaved repetitions: median (min–max); " + pinned)
    for policy in settings.policies:
        walls = summarize([w for w, _, _ in results[policy]])
        cpus = summarize([c for _, c, _ in results[policy]])
        rate = settings.requests / cpus.median
        per_100k = 100_000 / rate
        slug = policy.split(" ")[0]
        table.rows.append([policy, fmt_summary(walls), fmt_summary(cpus), f"{rate:,.0f}",
                           f"{per_100k:.2f}: " + ("met" if per_100k < GOAL_SECONDS
                                                   else "not met")])
        section.metrics[f"{slug}.wall_s"] = walls.median
        section.metrics[f"{slug}.cpu_s"] = cpus.median
        section.metrics[f"{slug}.requests_per_cpu_s"] = rate
        section.metrics[f"{slug}.cpu_s_per_100k"] = per_100k
    section.tables.append(table)
    section.notes += [
        "Each run is a whole `lbclient.simulate.run` (scenario parsing, the real Balancer "
        "with fake connections and health checkers, every pick/begin/end/on_done, the "
        "report); 5 backends, Poisson 1,000 calls/s, 10,000 keys, one backend failing "
        "for 10 s.",
        "The goal is judged on CPU time (single-threaded: one core's worth); wall time is "
        "shown for reference and grows when other processes share the core.",
    ]
    return section


def run(quick: bool) -> Section:
    return measure(QUICK if quick else FULL)


def run_smoke() -> Section:
    return measure(SMOKE)


def main(argv: Sequence[str] | None = None) -> int:
    return standalone_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
