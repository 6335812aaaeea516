"""Picker figures for every balancing policy: pure pick cost and picker rebuild time at
3 / 100 / 1,000 / 10,000 endpoints (no network).

* Pick: ``picker.pick(PickInfo)`` alone, in microseconds (median of 5 timed batches that
  share the time budget). Every PickInfo carries a key header (1,024 distinct keys,
  cycled), so ring_hash / maglev / sticky take their keyed path. least_connections counts
  at pick time; its in-flight counters are reset after each batch.
* Rebuild, eligibility change: ``policy.build_picker(candidates)`` on a policy that has
  seen these endpoints before (what the balancer does when one goes in or out of
  service). Hash layouts (ring, Maglev table) are reused here.
* Rebuild, new endpoint list: a fresh policy told the whole list and asked for its first
  picker (what a resolver update with new addresses costs): ring points / the Maglev table
  are computed from scratch.

Run: ``.venv/bin/python -m benchmarks.bench_pickers [--quick]`` (prints markdown); also a
scenario of ``python -m benchmarks.run``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from benchmarks._common import Section, Table, fake_candidates, pure_policy, standalone_main
from lbclient.balancer.picker import PickInfo
from lbclient.balancer.policy import get_policy

TITLE = "Picker cost per policy: pick and rebuild at 3 / 100 / 1,000 / 10,000 endpoints"
HEADER = "x-lb-key"
METHOD = "/lbclient.testing.echo.v1.Echo/Unary"
POLICIES: dict[str, dict[str, Any]] = {
    "round_robin": {},
    "weighted_round_robin": {},
    "least_connections": {},
    "least_request": {},
    "random": {},
    "peak_ewma": {},
    "ring_hash": {"requestHashHeader": HEADER},
    "maglev": {"requestHashHeader": HEADER},
    "sticky": {"sessionHeader": HEADER},
}


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...] = (3, 100, 1_000, 10_000)
    pick_seconds: float = 0.4      # per (policy, size)
    rebuild_seconds: float = 0.6   # per (policy, size, kind); at least one build
    max_rebuilds: int = 20


FULL = Settings()
QUICK = replace(FULL, pick_seconds=0.08, rebuild_seconds=0.12, max_rebuilds=5)
SMOKE = replace(QUICK, sizes=(3, 100), pick_seconds=0.01, rebuild_seconds=0.01,
                max_rebuilds=1)

_INFOS = [PickInfo(METHOD, ((HEADER, f"key-{i}"),)) for i in range(1024)]


def _weighted(n: int) -> list[Any]:
    """``n`` candidates with weights 1..5 (so weight-aware policies take their weighted
    path)."""
    out = fake_candidates(n)
    return [c.with_weight(1 + i % 5) for i, c in enumerate(out)]


def pick_cost(name: str, n: int, budget: float) -> float:
    """Median microseconds per pick."""
    cands = _weighted(n)
    policy = pure_policy(name, POLICIES[name])
    policy.endpoints_changed([c.endpoint for c in cands])
    picker = policy.build_picker(cands)
    infos, k = _INFOS, len(_INFOS)
    for i in range(min(k, 200)):  # warm up (sticky: place the sessions)
        picker.pick(infos[i])
    batches: list[float] = []
    deadline = time.perf_counter() + budget
    batch = 64
    while len(batches) < 5 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for i in range(batch):
            picker.pick(infos[i % k])
        dt = time.perf_counter() - t0
        batches.append(dt / batch * 1e6)
        if name == "least_connections":
            for c in cands:
                while c.stats.in_flight:
                    c.stats.discard()
        if dt < budget / 20:
            batch = min(batch * 2, 65536)
        if len(batches) >= 5 and time.perf_counter() >= deadline:
            break
    return statistics.median(batches)


def _time(fn: Callable[[], object], budget: float, limit: int) -> float:
    """Median milliseconds of ``fn()`` within ``budget`` seconds (1..limit runs)."""
    runs: list[float] = []
    deadline = time.perf_counter() + budget
    while not runs or (len(runs) < limit and time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(runs)


def rebuild_costs(name: str, n: int, s: Settings) -> tuple[float, float]:
    """(eligibility change ms, new endpoint list ms)."""
    cands = _weighted(n)
    endpoints = [c.endpoint for c in cands]
    policy = pure_policy(name, POLICIES[name])
    policy.endpoints_changed(endpoints)
    policy.build_picker(cands)
    rest = cands[1:] or cands
    flip = [0]

    def eligibility() -> None:
        flip[0] ^= 1
        policy.build_picker(rest if flip[0] else cands)

    def fresh() -> None:
        p = pure_policy(name, POLICIES[name])
        p.endpoints_changed(endpoints)
        p.build_picker(cands)

    return (_time(eligibility, s.rebuild_seconds, s.max_rebuilds),
            _time(fresh, s.rebuild_seconds, s.max_rebuilds))


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def measure(s: Settings) -> Section:
    names = [n for n in POLICIES if get_policy(n) is not None]
    skipped = [n for n in POLICIES if n not in names]
    sizes = [f"{n:,}" for n in s.sizes]
    picks = Table(["policy", *[f"{x} endpoints" for x in sizes]],
                  caption="pick cost, microseconds per pick (median of timed batches)")
    elig = Table(["policy", *[f"{x} endpoints" for x in sizes]],
                 caption="picker rebuild after an eligibility change, milliseconds")
    fresh = Table(["policy", *[f"{x} endpoints" for x in sizes]],
                  caption="first picker for a new endpoint list (layouts from scratch), ms")
    section = Section(TITLE, tables=[picks, elig, fresh])
    for name in names:
        p_row, e_row, f_row = [name], [name], [name]
        for n in s.sizes:
            us = pick_cost(name, n, s.pick_seconds)
            e_ms, f_ms = rebuild_costs(name, n, s)
            p_row.append(_fmt(us))
            e_row.append(_fmt(e_ms))
            f_row.append(_fmt(f_ms))
            section.metrics[f"{name}.{n}.pick_us"] = us
            section.metrics[f"{name}.{n}.rebuild_ms"] = e_ms
            section.metrics[f"{name}.{n}.first_build_ms"] = f_ms
        picks.rows.append(p_row)
        elig.rows.append(e_row)
        fresh.rows.append(f_row)
    section.notes.append(
        "Weights are 1..5 (cycled) so weight-aware policies take their weighted path; "
        "hash keys come from a header (1,024 keys). Pure Python pickers on one core of "
        "a shared 2-core machine: compare rows, not absolute values.")
    section.notes.append(
        "O(n) per pick by design: least_connections (exact scan). O(1)/O(log n): the "
        "others. maglev's first build fills a 65,537-entry table; ring_hash's hashes up "
        "to 4,096 ring points (gRFC A42 sizes).")
    if skipped:
        section.notes.append("not registered, skipped: " + ", ".join(skipped))
    return section


def run(quick: bool) -> Section:
    return measure(QUICK if quick else FULL)


def run_smoke() -> Section:
    return measure(SMOKE)


def main(argv: Sequence[str] | None = None) -> int:
    return standalone_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
