"""What a simulation reports: per-backend figures, latency, failures, detected downtime,
key affinity, and a comparison of the variants (stdlib only).

Everything is a frozen value. :meth:`Report.to_dict` is JSON-ready and deterministic for
a seed (wall-clock figures are left out unless ``timing=True``); :meth:`Report.format_text`
(:func:`format_report`) is what ``lbclient simulate`` prints. Times are virtual seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .analysis import Affinity, Downtime, affinities, downtimes, percentile
from .fleet import FleetFigures
from .text import num, pct, secs, table

if TYPE_CHECKING:
    from .engine import Simulation


@dataclass(frozen=True)
class BackendFigures:
    name: str
    weight: int
    requests: int                # calls placed on it by the picker
    share: float                 # of all placed calls
    ok: int
    failed: int
    peak_concurrency: int        # calls in flight on it (queued + in service), at most
    mean_concurrency: float      # time-weighted, from the first arrival to the end
    queued: int                  # calls that waited for a free slot
    mean_queue_wait: float       # over every call placed on it (0 for those not queued)
    max_queue_wait: float
    connections: int = 0         # clients connected to it at the end (subsetting: some)
    health_checks: int = 0       # health checkers running on it at the end


@dataclass(frozen=True)
class Latency:
    p50: float | None
    p90: float | None
    p99: float | None
    mean: float | None
    max: float | None


@dataclass(frozen=True)
class RunReport:
    """One variant's results. ``imbalance``: the time average (over samples with calls
    in flight) of ``max_i(n_i / w_i) / (sum n / sum w)`` across the backends the picker
    may choose (``n``: calls in flight, ``w``: the backend's weight); 1.0 is perfectly
    balanced in proportion to weight."""

    label: str
    policy: str
    requests: int
    ok: int
    failed: int
    codes: dict[str, int]
    no_endpoint: int             # failed at pick time: no endpoint could take them
    unfinished: int              # still waiting or in flight when the run stopped
    latency: Latency             # of successful calls, from arrival (queueing included)
    imbalance: float | None
    backends: tuple[BackendFigures, ...]
    downtime: tuple[Downtime, ...]
    affinity: tuple[Affinity, ...]
    events: tuple[dict[str, Any], ...]
    sim_time: float
    loop_events: int
    timeline: tuple[tuple[float, tuple[int, ...]], ...] = field(repr=False)
    wall_seconds: float = field(default=0.0, compare=False)
    clients: int = 1
    fleet: FleetFigures | None = None      # connections and load per backend

    def fleet_row(self) -> dict[str, Any]:
        """The fleet figures of the comparison (empty without ``fleet``)."""
        f = self.fleet
        if f is None:
            return {}
        return {"clients": f.clients, "connections": f.connections_total,
                "connections_max": f.connections_max,
                "connections_max_over_mean": f.connections_max_over_mean,
                "requests_max_over_mean": f.requests_max_over_mean, "unused": f.unused}

    def to_dict(self, timing: bool = False, timeline: bool = False) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not timing:
            d.pop("wall_seconds")
        if timeline:
            d["timeline"] = [[t, list(n)] for t, n in self.timeline]
        else:
            d.pop("timeline")
        return d


@dataclass(frozen=True)
class Report:
    scenario: str
    seed: int
    backends: tuple[str, ...]
    runs: tuple[RunReport, ...]
    wall_seconds: float = field(default=0.0, compare=False)

    def run(self, label: str) -> RunReport:
        for r in self.runs:
            if r.label == label:
                return r
        raise KeyError(f"no variant {label!r} (have: {', '.join(r.label for r in self.runs)})")

    def comparison(self) -> list[dict[str, Any]]:
        """One row per variant: the figures that tell policies apart (downtime and
        affinity figures: of the first fault window, when there is one)."""
        rows = []
        for r in self.runs:
            placed = [b.requests for b in r.backends]
            waits = sum(b.mean_queue_wait * b.requests for b in r.backends)
            row: dict[str, Any] = {
                "policy": r.label, "ok": r.ok, "failed": r.failed,
                "p50": r.latency.p50, "p90": r.latency.p90, "p99": r.latency.p99,
                "imbalance": r.imbalance,
                "peak": max((b.peak_concurrency for b in r.backends), default=0),
                "mean_queue_wait": waits / sum(placed) if sum(placed) else 0.0,
            }
            if r.downtime:              # the first fault window
                d = r.downtime[0]
                row["detection_delay"] = d.detection_delay
                row["readmission_delay"] = d.readmission_delay
                row["failed_in_window"] = d.failed_in_window
            if r.clients > 1:
                row.update(r.fleet_row())
            if r.affinity:
                a = r.affinity[0]
                row["moved"] = a.moved
                row["returned"] = a.returned
                row["return_p50"] = a.return_p50
                row["return_p90"] = a.return_p90
            rows.append(row)
        return rows

    def to_dict(self, timing: bool = False, timeline: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"scenario": self.scenario, "seed": self.seed,
                             "backends": list(self.backends),
                             "runs": [r.to_dict(timing, timeline) for r in self.runs],
                             "comparison": self.comparison()}
        if timing:
            d["wall_seconds"] = self.wall_seconds
        return d

    def format_text(self, timing: bool = True) -> str:
        return format_report(self, timing)


def _policy_chain(sim: Simulation) -> str:
    config = sim.variant.config.lb
    chain = [config.name]
    inner = getattr(config.config, "child", None)
    while inner is not None and len(chain) < 8:
        chain.append(inner.name)
        inner = getattr(inner.config, "child", None)
    return " > ".join(chain)


def build_run_report(sim: Simulation, wall: float) -> RunReport:
    first = sim.first_arrival if sim.first_arrival is not None else 0.0
    span = max(sim.stopped_at - first, 1e-12)
    placed = sum(b.placed for b in sim.backends)
    backends = []
    for b in sim.backends:
        # b.area covers [0, stopped_at]; before the first arrival nothing was in flight.
        backends.append(BackendFigures(
            name=b.name, weight=b.spec.weight, requests=b.placed,
            share=b.placed / placed if placed else 0.0, ok=b.ok, failed=b.failed,
            peak_concurrency=b.peak, mean_concurrency=b.area / span,
            queued=b.queued_calls,
            mean_queue_wait=b.queue_wait_total / b.placed if b.placed else 0.0,
            max_queue_wait=b.queue_wait_max, connections=sim.end_connections[b.index],
            health_checks=sim.end_health_checks[b.index]))
    lat = sorted(sim.latencies)
    ok = sim.codes.get("OK", 0)
    return RunReport(
        label=sim.variant.label, policy=_policy_chain(sim), requests=sim.seq, ok=ok,
        failed=sim.finished - ok, codes=dict(sorted(sim.codes.items())),
        no_endpoint=sim.no_endpoint, unfinished=sim.seq - sim.finished,
        latency=Latency(percentile(lat, 0.5), percentile(lat, 0.9), percentile(lat, 0.99),
                        sum(lat) / len(lat) if lat else None, lat[-1] if lat else None),
        imbalance=sim.imbalance_sum / sim.imbalance_n if sim.imbalance_n else None,
        backends=tuple(backends), downtime=tuple(downtimes(sim)),
        affinity=tuple(affinities(sim)), events=tuple(sim.events),
        sim_time=sim.stopped_at, loop_events=sim.loop.events,
        timeline=tuple(sim.samples), wall_seconds=wall, clients=len(sim.clients),
        fleet=sim.fleet)


def make_report(name: str, seed: int, backends: Sequence[str], runs: Sequence[RunReport],
                wall: float) -> Report:
    return Report(name, seed, tuple(backends), tuple(runs), wall)


# ------------------------------------------------------------------ plain text
MAX_FLEET_ROWS = 40      # a fleet run with more backends prints no per-backend table
_COUNTS = ("failed_in_window", "connections", "connections_max", "unused")
_RATIOS = ("connections_max_over_mean", "requests_max_over_mean")
def format_run(r: RunReport, timing: bool) -> str:
    codes = ", ".join(f"{k} {v}" for k, v in r.codes.items() if k != "OK") or "none"
    lines = [f"-- {r.label} ({r.policy})",
             f"requests {r.requests}: ok {r.ok}, failed {r.failed} ({codes}), "
             f"no endpoint {r.no_endpoint}, unfinished {r.unfinished}",
             f"latency p50 {secs(r.latency.p50)}  p90 {secs(r.latency.p90)}  "
             f"p99 {secs(r.latency.p99)}  max {secs(r.latency.max)}   "
             f"imbalance (max/fair) {num(r.imbalance)}",
             f"simulated {r.sim_time:.1f}s, {r.loop_events} events"
             + (f", {r.wall_seconds:.2f}s wall" if timing else "")]
    f = r.fleet
    if f is not None and (r.clients > 1 or f.unused):
        lines.append(
            f"fleet: {f.clients} clients, {f.connections_total} connections; per backend "
            f"max {f.connections_max}, min {f.connections_min}, mean "
            f"{f.connections_mean:.2f} (max/mean {num(f.connections_max_over_mean)}), "
            f"{f.unused} with none; requests per backend max/mean "
            f"{num(f.requests_max_over_mean)}; {f.health_checks_total} health checks")
    lines.append("")
    fleet = r.clients > 1
    if fleet and len(r.backends) > MAX_FLEET_ROWS:
        lines.append(f"({len(r.backends)} backends: the per-backend rows are in --json)")
    else:
        rows = [[b.name, str(b.weight), str(b.requests), pct(b.share), str(b.ok),
                 str(b.failed), str(b.peak_concurrency), f"{b.mean_concurrency:.2f}",
                 str(b.queued), secs(b.mean_queue_wait), secs(b.max_queue_wait)]
                + ([str(b.connections)] if fleet else []) for b in r.backends]
        lines.append(table(["backend", "weight", "requests", "share", "ok", "failed", "peak",
                            "mean conc", "queued", "mean wait", "max wait"]
                           + (["conns"] if fleet else []), rows))
    if r.downtime:
        rows = [[d.backend, d.kind, f"{d.start:g}-{'end' if d.end is None else f'{d.end:g}'}",
                 secs(d.detection_delay), d.reason or "not detected",
                 secs(d.readmission_delay), str(d.flaps), str(d.failed_before_detection),
                 str(d.failed_on_backend), str(d.failed_in_window)] for d in r.downtime]
        lines += ["", table(["fault on", "kind", "window", "detected after", "as",
                             "readmitted after end", "flaps", "failed before detection",
                             "failed on it", "failed overall"], rows)]
    if r.affinity:
        rows = [[a.backend, f"{a.start:g}-{'end' if a.end is None else f'{a.end:g}'}",
                 str(a.keys), pct(a.moved), pct(a.had_to_move), pct(a.moved_needlessly),
                 pct(a.returned), secs(a.return_p50), secs(a.return_p90), pct(a.home_at_end)]
                for a in r.affinity]
        lines += ["", table(["keys vs fault on", "window", "keys", "moved", "had to move",
                             "moved needlessly", "returned", "return p50", "return p90",
                             "home at end"], rows)]
    return "\n".join(lines)


def comparison_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    headers = ["policy", "ok", "failed", "p50", "p90", "p99", "imbalance", "peak",
               "mean wait"]
    names = {"connections": "conns", "connections_max": "conns max",
             "connections_max_over_mean": "conns max/mean", "unused": "unused backends",
             "requests_max_over_mean": "load max/mean",
             "failed_in_window": "failed in fault", "detection_delay": "detected after",
             "readmission_delay": "readmitted after end", "moved": "keys moved",
             "returned": "keys returned", "return_p50": "return p50",
             "return_p90": "return p90"}
    extra = [k for k in names if any(k in r for r in rows)]
    headers += [names[k] for k in extra]
    out = []
    for r in rows:
        cells = [r["policy"], str(r["ok"]), str(r["failed"]), secs(r["p50"]), secs(r["p90"]),
                 secs(r["p99"]), num(r["imbalance"]), str(r["peak"]),
                 secs(r["mean_queue_wait"])]
        for k in extra:
            v = r.get(k)
            cells.append(pct(v) if k in ("moved", "returned") else
                         ("-" if v is None else str(v)) if k in _COUNTS else
                         num(v) if k in _RATIOS else secs(v))
        out.append(cells)
    return headers, out


def format_report(report: Report, timing: bool = True) -> str:
    head = f"== {report.scenario or 'scenario'} (seed {report.seed}, " \
           f"{len(report.backends)} backends)"
    parts = [head, ""]
    for r in report.runs:
        parts += [format_run(r, timing), ""]
    if len(report.runs) > 1:
        headers, rows = comparison_rows(report.comparison())
        parts += ["== comparison", table(headers, rows), ""]
    return "\n".join(parts).rstrip() + "\n"
