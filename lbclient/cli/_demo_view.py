"""What the demo shows: the live per-endpoint table and the final comparison.

Rows are built once (:func:`endpoint_rows`) and rendered either with rich (a TTY with
rich installed) or as plain text; the plain form is what tests and pipes see.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._demo_events import describe
from ._demo_fleet import CHARACTERS, DemoFleet
from ._demo_traffic import EndpointCalls
from ._table import format_table, ms, pct, percentile

ENDPOINT_HEADERS = ["backend", "address", "doing", "calls", "share", "errors", "in-flight",
                    "p50", "p99", "state", "health", "ejected"]
_RIGHT = (3, 4, 5, 6, 7, 8)


def _health(healthy: bool | None) -> str:
    return {True: "healthy", False: "UNHEALTHY", None: "-"}[healthy]


def endpoint_rows(fleet: DemoFleet, infos: Sequence[Any],
                  calls: dict[str, EndpointCalls], now: float | None = None) -> list[list[str]]:
    """One row per backend, in character order (a backend the channel does not list
    still gets a row)."""
    now = time.monotonic() if now is None else now
    by_address = {i.address: i for i in infos}
    total = sum(c.calls for c in calls.values())
    rows = []
    for ch in CHARACTERS:
        address = fleet.backend(ch.name).address
        info = by_address.get(address)
        c = calls.get(address, EndpointCalls())
        lat = c.latencies
        ejected = "-"
        if info is not None and info.ejected_until is not None:
            ejected = f"yes ({max(0.0, info.ejected_until - now):.1f}s)"
        rows.append([
            ch.name, address, fleet.state_of(ch.name), str(c.calls), pct(c.calls, total),
            str(c.errors), str(info.in_flight) if info is not None else "-",
            ms(percentile(lat, 0.5)), ms(percentile(lat, 0.99)),
            info.connectivity if info is not None else "-",
            _health(info.healthy) if info is not None else "-", ejected])
    return rows


@dataclass
class PhaseResult:
    policy: str
    config: dict[str, Any]
    seconds: float
    client: EndpointCalls
    shares: dict[str, float]                 # backend name -> share of attempts
    # backend name -> why the channel took it out: kind -> (times, first reason)
    # (TakenOut.copy(): ejected, unhealthy, connection failed)
    taken_out: dict[str, dict[str, tuple[int, str]]] = field(default_factory=dict)
    rows: list[list[str]] = field(default_factory=list)
    interrupted: bool = False

    def taken_out_names(self) -> list[str]:
        """The backends taken out, in fleet order (others, if any, after them)."""
        order = [c.name for c in CHARACTERS]
        return sorted(self.taken_out, key=lambda n: (order.index(n) if n in order
                                                     else len(order), n))


COMPARE_HEADERS = ["policy", "calls", "calls/s", "errors", "p50", "p99",
                   *(c.name for c in CHARACTERS), "taken out"]


def compare_rows(results: Sequence[PhaseResult]) -> list[list[str]]:
    rows = []
    for r in results:
        lat = r.client.latencies
        seen = r.taken_out_names()
        rows.append([
            r.policy + (" (cut short)" if r.interrupted else ""), str(r.client.calls),
            f"{r.client.calls / r.seconds:.0f}" if r.seconds > 0 else "-",
            pct(r.client.errors, r.client.calls), ms(percentile(lat, 0.5)),
            ms(percentile(lat, 0.99)),
            *(f"{100 * r.shares.get(c.name, 0.0):.0f}%" for c in CHARACTERS),
            ", ".join(seen) or "-"])
    return rows


def plain_endpoints(title: str, rows: list[list[str]]) -> str:
    return f"{title}\n{format_table(ENDPOINT_HEADERS, rows, right=_RIGHT)}"


def taken_out_lines(results: Sequence[PhaseResult]) -> list[str]:
    """Under the comparison: every backend each phase took out, and why."""
    lines = []
    for r in results:
        for name in r.taken_out_names():
            lines.append(f"  {r.policy}: {name}: {describe(r.taken_out[name])}")
    return ["taken out, and why:", *lines] if lines else []


def plain_comparison(results: Sequence[PhaseResult]) -> str:
    right = tuple(range(1, 6 + len(CHARACTERS)))
    return "\n".join([
        "comparison (errors and latency as the callers saw them; shares of attempts "
        "per backend)", format_table(COMPARE_HEADERS, compare_rows(results), right),
        *taken_out_lines(results)])


_SHORT = {"READY": "ready", "TRANSIENT_FAILURE": "failing", "CONNECTING": "connecting",
          "IDLE": "idle", "SHUTDOWN": "shut down"}


def rich_endpoints(title: str, rows: list[list[str]]) -> Any:
    """The live table, compact so that it fits about 100 columns: backend and port in one
    cell, connectivity and health in one state cell."""
    from rich import box
    from rich.table import Table

    table = Table(title=title or None, title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    for h in ("backend", "doing"):
        table.add_column(h, no_wrap=True)
    for h in ("calls", "share", "err", "infl", "p50", "p99"):
        table.add_column(h, justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("ejected", no_wrap=True)
    for row in rows:
        doing = row[2] if row[2] == "up" else f"[yellow]{row[2].replace('errors', 'err')}[/]"
        state = _SHORT.get(row[9], row[9])
        if row[10] == "UNHEALTHY":
            state = f"{state} [red]unhealthy[/]"
        ejected = "-" if row[11] == "-" else f"[red]{row[11]}[/]"
        table.add_row(f"{row[0]} :{row[1].rsplit(':', 1)[-1]}", doing, *row[3:9], state,
                      ejected)
    return table


def rich_comparison(results: Sequence[PhaseResult]) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title="comparison: client-side errors and latency; share of attempts per "
                        "backend", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, h in enumerate(COMPARE_HEADERS):
        table.add_column(h, justify="left" if i in (0, len(COMPARE_HEADERS) - 1) else "right",
                         no_wrap=i != len(COMPARE_HEADERS) - 1)
    for row in compare_rows(results):
        table.add_row(*row)
    return table


def summary(config: dict[str, Any]) -> str:
    """``outlier_detection(round_robin) + health checks`` for a demo service config."""
    def name(entries: Any) -> str:
        if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
            return "round_robin"
        ((policy, cfg),) = list(entries[0].items())[:1] or [("round_robin", {})]
        child = cfg.get("childPolicy") if isinstance(cfg, dict) else None
        return f"{policy}({name(child)})" if child else policy

    text = name(config.get("loadBalancingConfig"))
    return text + (" + health checks" if "healthCheckConfig" in config else "")
