"""Plain-text rendering of a :class:`~lbclient.simulate.report.Report` (stdlib only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .report import Report, RunReport


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Fixed-width columns; every column but the first is right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths),
                      *(line(r) for r in rows)])


def secs(value: float | None) -> str:
    """Seconds with a unit that fits: ``850ms``, ``12.3s``; ``-`` for None."""
    if value is None:
        return "-"
    if abs(value) < 1.0:
        return f"{value * 1000:.3g}ms"
    return f"{value:.3g}s" if abs(value) < 100 else f"{value:.0f}s"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def format_run(r: RunReport, timing: bool) -> str:
    codes = ", ".join(f"{k} {v}" for k, v in r.codes.items() if k != "OK") or "none"
    lines = [f"-- {r.label} ({r.policy})",
             f"requests {r.requests}: ok {r.ok}, failed {r.failed} ({codes}), "
             f"no endpoint {r.no_endpoint}, unfinished {r.unfinished}",
             f"latency p50 {secs(r.latency.p50)}  p90 {secs(r.latency.p90)}  "
             f"p99 {secs(r.latency.p99)}  max {secs(r.latency.max)}   "
             f"imbalance (max/fair) {num(r.imbalance)}",
             f"simulated {r.sim_time:.1f}s, {r.loop_events} events"
             + (f", {r.wall_seconds:.2f}s wall" if timing else ""), ""]
    rows = [[b.name, str(b.weight), str(b.requests), pct(b.share), str(b.ok), str(b.failed),
             str(b.peak_concurrency), f"{b.mean_concurrency:.2f}", str(b.queued),
             secs(b.mean_queue_wait), secs(b.max_queue_wait)] for b in r.backends]
    lines.append(table(["backend", "weight", "requests", "share", "ok", "failed", "peak",
                        "mean conc", "queued", "mean wait", "max wait"], rows))
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
    names = {"failed_in_window": "failed in fault", "detection_delay": "detected after",
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
                         str(v) if k == "failed_in_window" else secs(v))
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
