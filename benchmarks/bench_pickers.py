"""Picker figures for every registered balancing policy at 3 / 300 / 10,000 endpoints: pick
cost, pick + done, and the rebuilds the balancer asks for (no network).

* Pick: ``picker.pick(PickInfo)`` alone, in microseconds of this thread's CPU (median of
  timed batches). Every PickInfo carries a key header (1,024 distinct keys, cycled), so
  ring_hash / maglev / sticky take their keyed path. Calls counted at pick time
  (least_connections) are ended after each batch, outside the timing.
* Pick + done: what the channel adds per call in the picker layer: the pick,
  ``stats.begin()`` unless the picker counted the call, ``stats.record()``, the pick's
  ``on_done`` (so least_connections' index update at the end is in it).
* Rebuild, eligibility change: ``policy.build_picker(candidates)`` alternating between
  every endpoint and every endpoint but one (one endpoint leaves or rejoins service).
* Rebuild, small endpoint-set change: a resolver update adding or removing one endpoint,
  as the balancer applies it: ``select_endpoints`` (subsetting), ``endpoints_changed``,
  ``build_picker``.
* First build: a new policy given a new endpoint list (the same three calls): hash
  layouts, subsetting hashes and group tables from scratch.

Endpoints carry weights 1..5 (cycled), a zone ``z0``..``z3`` and a priority (every
fourth endpoint is priority 1), so weight-aware policies take their weighted path and
the group policies have groups. Run: ``.venv/bin/python -m benchmarks.bench_pickers
[--quick]`` (prints markdown); also a scenario of ``python -m benchmarks.run``.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from benchmarks._common import NullScheduler, Section, Table, standalone_main
from lbclient.balancer.picker import CallOutcome, Candidate, EndpointStats, PickInfo
from lbclient.balancer.policy import PolicyContext, get_policy, registered_policies
from lbclient.endpoint import Endpoint

TITLE = "Picker cost per policy: pick and rebuild at 3 / 300 / 10,000 endpoints"
HEADER = "x-lb-key"
METHOD = "/lbclient.testing.echo.v1.Echo/Unary"
RR: list[dict[str, Any]] = [{"round_robin": {}}]
# A config for every built-in policy that needs one to have something to do; the others
# are benchmarked with {} (and a policy registered later with a round_robin childPolicy).
CONFIGS: dict[str, dict[str, Any]] = {
    "ring_hash": {"requestHashHeader": HEADER},
    "maglev": {"requestHashHeader": HEADER},
    "sticky": {"sessionHeader": HEADER, "childPolicy": RR},
    "outlier_detection": {"failurePercentageEjection": {}, "childPolicy": RR},
    "priority": {"childPolicy": RR},
    "zone_aware": {"localZone": "z0", "childPolicy": RR},
    "weighted_target": {"targets": {f"z{i}": {"weight": 40 - 10 * i} for i in range(4)}},
    "random_subsetting": {"subsetSize": 10, "childPolicy": RR},
    "deterministic_subsetting": {"clientIndex": 7, "clientCount": 100, "subsetSize": 10,
                                 "childPolicy": RR},
}
GOAL_REBUILD_MS = 20.0          # rebuild <= 20 ms at 10,000 endpoints, every policy
GOAL_LC_PICK_US = 10.0          # least_connections pick <= 10 us at 10,000 endpoints
GOAL_SIZE = 10_000


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...] = (3, 300, 10_000)
    pick_seconds: float = 0.3      # CPU per (policy, size), pick and pick + done each
    rebuild_seconds: float = 0.4   # CPU per (policy, size, kind); at least one build
    max_rebuilds: int = 15


FULL = Settings()
QUICK = replace(FULL, pick_seconds=0.06, rebuild_seconds=0.1, max_rebuilds=5)
SMOKE = replace(QUICK, sizes=(3, 30), pick_seconds=0.005, rebuild_seconds=0.005,
                max_rebuilds=1)

_INFOS = [PickInfo(METHOD, ((HEADER, f"key-{i}"),)) for i in range(1024)]
_OK = CallOutcome("OK", 0.001)


def endpoints(n: int, seed: int = 1, weighted: bool = True) -> list[Endpoint]:
    """``n`` endpoints on distinct fake addresses with weights (1..5, or all 1), zones and
    priorities."""
    rng = random.Random(seed)
    out = []
    for i, o in enumerate(rng.sample(range(1 << 24), n)):
        address = f"10.{o >> 16}.{(o >> 8) & 255}.{o & 255}:50051"
        out.append(Endpoint(address, 1 + i % 5 if weighted else 1,
                            {"zone": f"z{i % 4}", "priority": 1 if i % 4 == 3 else 0}))
    return out


# Rows of policies measured a second way: (label, policy) with every weight equal.
EQUAL_WEIGHTS = {"least_connections (equal weights)": "least_connections"}


def candidates(eps: Sequence[Endpoint]) -> list[Candidate]:
    return [Candidate(e, float(e.weight), EndpointStats(time.monotonic), None) for e in eps]


def make(name: str, raw: dict[str, Any], seed: int = 1) -> Any:
    spec = get_policy(name)
    assert spec is not None, name
    config = spec.parse_config(raw, f"loadBalancingConfig[0].{name}")
    return spec.create(config, PolicyContext(clock=time.monotonic, rng=random.Random(seed),
                                             scheduler=NullScheduler()))


def policies(notes: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(name, config) per distinct registered policy (aliases folded, named once)."""
    seen: set[int] = set()
    out = []
    for name in registered_policies():
        spec = get_policy(name)
        if spec is None or id(spec) in seen:
            continue
        seen.add(id(spec))
        tries = [CONFIGS.get(spec.name, {}), {"childPolicy": RR}]
        for raw in tries:
            try:
                make(spec.name, raw)
            except ValueError:
                continue
            out.append((spec.name, raw))
            break
        else:
            notes.append(f"`{spec.name}`: needs a config this benchmark does not build; "
                         "skipped.")
    return sorted(out, key=lambda p: (p[0] != "round_robin", p[0]))


class World:
    """One policy over endpoint lists, applied the way the balancer applies them (the
    candidates of each list are made beforehand, outside the timing)."""

    def __init__(self, name: str, raw: dict[str, Any], *lists: list[Endpoint]) -> None:
        self.name, self.raw = name, raw
        self.cands: dict[int, list[Candidate]] = {}
        self.by_address: dict[str, Candidate] = {}
        for eps in lists:
            made = []
            for e in eps:
                c = self.by_address.get(e.address)
                if c is None:
                    c = self.by_address[e.address] = candidates([e])[0]
                made.append(c)
            self.cands[id(eps)] = made
        self.policy = make(name, raw)
        self.picker = self.apply(self.policy, lists[0])

    def apply(self, policy: Any, eps: list[Endpoint]) -> Any:
        """A resolver update: select, tell, build (every selected endpoint eligible)."""
        chosen = policy.select_endpoints(eps)
        policy.endpoints_changed(chosen)
        if chosen is eps:
            return policy.build_picker(self.cands[id(eps)])
        return policy.build_picker([self.by_address[e.address] for e in chosen])


def _cpu(fn: Callable[[], object], budget: float, limit: int) -> float:
    """Median thread-CPU milliseconds of ``fn()`` (1..limit runs within ``budget``),
    with the garbage collector paused while it runs (a collection costs what the whole
    heap holds, not what the policy does; it is run between the timed calls)."""
    runs: list[float] = []
    wall_end = time.monotonic() + 20 * budget + 5
    while not runs or (len(runs) < limit and sum(runs) < budget * 1e3
                       and time.monotonic() < wall_end):
        gc.collect()
        gc.disable()
        try:
            t0 = time.thread_time()
            fn()
            runs.append((time.thread_time() - t0) * 1e3)
        finally:
            gc.enable()
    return statistics.median(runs)


def pick_costs(picker: Any, budget: float) -> tuple[float, float]:
    """(pick, pick + done) in microseconds of thread CPU per call."""
    infos = _INFOS

    def picks(count: int) -> float:
        held = []
        t0 = time.thread_time()
        for i in range(count):
            held.append(picker.pick(infos[i & 1023]))
        dt = time.thread_time() - t0
        for r in held:                       # end the calls counted at pick time
            if r.counted:
                r.candidate.stats.record(0.001, False)
        return dt

    def picks_done(count: int) -> float:
        t0 = time.thread_time()
        for i in range(count):
            r = picker.pick(infos[i & 1023])
            stats = r.candidate.stats
            if not r.counted:
                stats.begin()
            stats.record(0.001, False)
            if r.on_done is not None:
                r.on_done(_OK)
        return time.thread_time() - t0

    out = []
    for run in (picks, picks_done):
        for i in range(64):                  # warm up (sticky: place the sessions)
            run(1) if i else run(256)
        per: list[float] = []
        batch, spent = 256, 0.0
        while len(per) < 5 or spent < budget:
            dt = run(batch)
            per.append(dt / batch * 1e6)
            spent += dt
            if dt < budget / 20:
                batch = min(batch * 2, 1 << 15)
            if len(per) >= 40:
                break
        out.append(statistics.median(per))
    return out[0], out[1]


def rebuild_costs(name: str, raw: dict[str, Any], n: int, s: Settings, weighted: bool = True
                  ) -> dict[str, float]:
    eps = endpoints(n, weighted=weighted)
    grown = [*eps, endpoints(n + 1, seed=2, weighted=weighted)[-1]]
    world = World(name, raw, eps, grown)
    policy = world.policy
    subset = getattr(policy, "subset", None)
    every = [world.by_address[a] for a in subset] if subset else world.cands[id(eps)]
    fewer = every[1:] or every
    flip = [0]

    def eligibility() -> None:
        flip[0] ^= 1
        policy.build_picker(fewer if flip[0] else every)

    flip2 = [0]

    def small_change() -> None:
        flip2[0] ^= 1
        world.apply(policy, grown if flip2[0] else eps)

    def first_build() -> None:
        world.apply(make(name, raw), eps)

    out = {"rebuild_ms": _cpu(eligibility, s.rebuild_seconds, s.max_rebuilds),
           "small_change_ms": _cpu(small_change, s.rebuild_seconds, s.max_rebuilds),
           "first_build_ms": _cpu(first_build, s.rebuild_seconds, s.max_rebuilds)}
    finish = getattr(policy, "finish_layout", None)
    if finish is not None:
        # Layouts filled in slices on the scheduler after a set change (maglev): their
        # total work, done here on this thread.
        def change_and_fill() -> None:
            small_change()
            finish()
        total = _cpu(change_and_fill, s.rebuild_seconds, s.max_rebuilds)
        if total - out["small_change_ms"] > 0.5:
            out["background_ms"] = total - out["small_change_ms"]
    return out


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def measure(s: Settings) -> Section:
    notes: list[str] = []
    chosen = policies(notes)
    cols = [f"{n:,}" for n in s.sizes]
    picks = Table(["policy", *cols], caption="pick, µs per pick (thread CPU)")
    dones = Table(["policy", *cols], caption="pick + done (what a call costs in the "
                                             "picker layer), µs")
    elig = Table(["policy", *cols], caption="rebuild after an eligibility change, ms")
    small = Table(["policy", *cols], caption="rebuild after a small endpoint-set change "
                                             "(one endpoint added or removed), ms; "
                                             "(+ work done in slices on the scheduler)")
    fresh = Table(["policy", *cols], caption="first build for a new endpoint list "
                                             "(a new policy: layouts from scratch), ms")
    section = Section(TITLE, tables=[picks, dones, elig, small, fresh])
    labels = {name: (name, raw, True) for name, raw in chosen}
    for label, name in EQUAL_WEIGHTS.items():
        if name in labels:
            labels[label] = (name, labels[name][1], False)
    for label, (name, raw, weighted) in labels.items():
        rows = {t: [label] for t in ("pick", "done", "elig", "small", "fresh")}
        for n in s.sizes:
            world = World(name, raw, endpoints(n, weighted=weighted))
            pick_us, done_us = pick_costs(world.picker, s.pick_seconds)
            world.policy.close()
            costs = rebuild_costs(name, raw, n, s, weighted)
            m = section.metrics
            key = name if weighted else f"{name}.equal_weights"
            m[f"{key}.{n}.pick_us"] = pick_us
            m[f"{key}.{n}.pick_done_us"] = done_us
            for kind, value in costs.items():
                m[f"{key}.{n}.{kind}"] = value
            rows["pick"].append(_fmt(pick_us))
            rows["done"].append(_fmt(done_us))
            rows["elig"].append(_fmt(costs["rebuild_ms"]))
            bg = costs.get("background_ms")
            rows["small"].append(_fmt(costs["small_change_ms"]) + (
                f" (+{_fmt(bg)} in slices)" if bg is not None else ""))
            rows["fresh"].append(_fmt(costs["first_build_ms"]))
        picks.rows.append(rows["pick"])
        dones.rows.append(rows["done"])
        elig.rows.append(rows["elig"])
        small.rows.append(rows["small"])
        fresh.rows.append(rows["fresh"])
    section.notes += goal_notes(section.metrics, [n for n, _ in chosen], s)
    section.notes += [
        "Thread CPU time (`time.thread_time()`), one thread: time descheduled on a shared "
        "machine is not counted, cache and frequency effects are (compare rows of one run, "
        "expect ±20% between runs). Rebuilds are timed with the garbage collector paused "
        "(it runs between them): a collection's cost is the whole heap's, not the "
        "policy's.",
        "Pick cost is O(1) or O(log n) for every policy: least_connections keeps an "
        "index of in_flight/weight updated by the endpoints' in-flight watchers (no "
        "scan): buckets by in-flight count while every weight is equal (O(1); the "
        "'equal weights' row), a tournament tree otherwise (O(log n)); ring_hash "
        "bisects its ring; maglev indexes its table. A rebuild compares the candidates "
        "with what the policy holds and moves only what changed.",
        "Hash layouts cover every endpoint the resolver reported (gRFC A42): an "
        "eligibility change reuses them. After a small endpoint-set change ring_hash "
        "edits its sorted points in place when the ring's scale holds (point hashes are "
        "cached per key; at 10,000 endpoints the default 4,096-point ring cannot give "
        "every endpoint a point, so gRPC's rule rescales it and every point list is "
        "rebuilt, from cached hashes); maglev keeps serving the old table and refills "
        "the 65,537-entry table in slices on the channel's scheduler (the '+ in slices' "
        "figure: M ln M probes, sequential, in pure Python). First builds hash every "
        "endpoint with a pure-Python XXH64 (about 3 µs per hash): ring_hash, maglev "
        "and both subsetting selections pay that once per new endpoint.",
        "Subsetting rows: the policy keeps 10 endpoints (round_robin child), so pick and "
        "eligibility costs are the child's over the subset; the set-change and first-"
        "build columns are the selection over all endpoints.",
    ]
    section.notes += notes
    return section


def goal_notes(metrics: dict[str, float], names: list[str], s: Settings) -> list[str]:
    if GOAL_SIZE not in s.sizes:
        return [f"Goals (rebuild ≤ {GOAL_REBUILD_MS:g} ms and least_connections pick ≤ "
                f"{GOAL_LC_PICK_US:g} µs at {GOAL_SIZE:,} endpoints): not measured in "
                "this mode."]
    out = []
    for kind, label in (("rebuild_ms", "eligibility change"),
                        ("small_change_ms", "small endpoint-set change"),
                        ("first_build_ms", "first build")):
        over = {n: metrics[f"{n}.{GOAL_SIZE}.{kind}"] for n in names
                if metrics[f"{n}.{GOAL_SIZE}.{kind}"] > GOAL_REBUILD_MS}
        status = "met by every policy" if not over else "NOT met by " + ", ".join(
            f"{n} ({v:,.0f} ms)" for n, v in over.items())
        out.append(f"Goal: rebuild ≤ {GOAL_REBUILD_MS:g} ms at {GOAL_SIZE:,} endpoints, "
                   f"{label}: {status}.")
    for key, label in (("least_connections", "weights 1..5: the tree"),
                       ("least_connections.equal_weights", "equal weights: the buckets")):
        lc = metrics.get(f"{key}.{GOAL_SIZE}.pick_us")
        if lc is not None:
            verdict = "met" if lc <= GOAL_LC_PICK_US else "NOT met"
            out.append(f"Goal: least_connections pick ≤ {GOAL_LC_PICK_US:g} µs at "
                       f"{GOAL_SIZE:,} endpoints ({label}): {lc:.1f} µs ({verdict}).")
    return out


def run(quick: bool) -> Section:
    return measure(QUICK if quick else FULL)


def run_smoke() -> Section:
    return measure(SMOKE)


def main(argv: Sequence[str] | None = None) -> int:
    return standalone_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
