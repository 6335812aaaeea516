"""A PNG of per-backend concurrency over time, one panel per variant.

Needs matplotlib (``pip install 'lbclient[simulate]'``); it is imported only when a plot
is asked for, with the non-interactive Agg backend, so the simulator itself never needs
it.
"""

from __future__ import annotations

import os
from typing import Any

from .report import Report

INSTALL_HINT = "plotting needs matplotlib: pip install 'lbclient[simulate]'"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_concurrency(report: Report, path: str | os.PathLike[str]) -> None:
    """Write the plot to ``path`` (PNG). Raises RuntimeError without matplotlib."""
    plt = _pyplot()
    runs = report.runs
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 2.6 * len(runs) + 0.6),
                             sharex=True, squeeze=False)
    try:
        for ax, run in zip(axes[:, 0], runs, strict=True):
            times = [t for t, _ in run.timeline]
            for i, name in enumerate(report.backends):
                ax.step(times, [n[i] for _, n in run.timeline], where="post", label=name,
                        linewidth=1.0)
            for d in run.downtime:
                ax.axvspan(d.start, d.end if d.end is not None else run.sim_time,
                           color="red", alpha=0.08)
            title = f"{run.label}  (imbalance {run.imbalance:.2f})" if run.imbalance \
                else run.label
            ax.set_title(title, fontsize=10)
            ax.set_ylabel("in flight")
            ax.grid(True, alpha=0.3)
        axes[0, 0].legend(loc="upper right", fontsize=8, ncol=min(len(report.backends), 6))
        axes[-1, 0].set_xlabel("virtual time (s)")
        fig.suptitle(f"{report.scenario}: calls in flight per backend (seed {report.seed})")
        fig.tight_layout()
        fig.savefig(os.fspath(path), format="png", dpi=100)
    finally:
        plt.close(fig)
