"""Plain-text building blocks: fixed-width tables and figures with units (stdlib only;
:mod:`lbclient.simulate.report` renders a report with them)."""

from __future__ import annotations

from collections.abc import Sequence


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
