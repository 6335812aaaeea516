"""Figures computed from a finished :class:`~lbclient.simulate.engine.Simulation`:
detected downtime per fault window and key affinity around it (stdlib only).

Detected downtime: for each fault window ``[start, end)`` of a backend, when the
balancer first marked it unfit (not READY, unhealthy or ejected) at or after ``start``,
and when it was fit again. ``readmission_delay`` is measured from ``end``; a negative one
means the backend was readmitted while still failing (e.g. an ejection shorter than the
fault). Calls failed in the window are counted on the backend ("before detection": until
it was marked) and over the whole client ("dropped during the transition").

Affinity (streams with keys): for each fault window, a key's server *before* is the one
its last request before ``start`` went to, *during* the one its last request in
``[start, end)`` went to. ``moved`` is the fraction of keys (with requests in both
periods) whose server changed; ``had_to_move`` the fraction that were on the failed
backend; ``moved_needlessly`` the fraction that moved although their server stayed up.
On recovery, ``returned`` is the fraction of the keys that had to move whose first
request to the failed backend came after ``end``, with the delays' p50/p90; and
``home_at_end`` the fraction of all keys whose last request went to their server before.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .scenario import Fault

if TYPE_CHECKING:
    from .engine import Simulation

DETECTABLE = ("down", "errors", "notServing", "slow")


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank ``q`` quantile (0..1) of sorted values; None if empty."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


@dataclass(frozen=True)
class Downtime:
    backend: str
    kind: str
    start: float
    end: float | None
    marked_at: float | None          # first marked unfit at/after start (None: never)
    detection_delay: float | None
    reason: str                      # why it was marked ("ejected", "unhealthy", "failed")
    readmitted_at: float | None      # fit again (None: not by the end of the run)
    readmission_delay: float | None  # from ``end``; negative: readmitted while failing
    flaps: int                       # readmissions before ``end`` (then marked again)
    failed_before_detection: int     # calls failed on the backend from start to marked_at
    failed_on_backend: int           # calls failed on the backend in [start, end)
    failed_in_window: int            # calls failed anywhere (incl. no endpoint) in [start, end)


@dataclass(frozen=True)
class Affinity:
    backend: str
    start: float
    end: float | None
    keys: int                        # keys with requests both before and during
    moved: float
    had_to_move: float
    moved_needlessly: float
    returned: float | None           # of the keys that had to move (None: no recovery)
    return_p50: float | None         # seconds after ``end``
    return_p90: float | None
    home_at_end: float | None


def _count(failures: list[tuple[float, int, str]], lo: float, hi: float,
           backend: int | None) -> int:
    i = bisect.bisect_left(failures, (lo, -2, ""))
    n = 0
    while i < len(failures) and failures[i][0] < hi:
        if backend is None or failures[i][1] == backend:
            n += 1
        i += 1
    return n


def _marks(transitions: list[tuple[float, bool, str]], start: float, end: float | None
           ) -> tuple[float | None, str, float | None, int]:
    """(marked_at, reason, readmitted_at, flaps) from a backend's fitness transitions."""
    first = next((i for i, (t, fit, _) in enumerate(transitions)
                  if t >= start and not fit), None)
    if first is None:
        return None, "", None, 0
    marked, _, reason = transitions[first]
    later = transitions[first + 1:]
    if end is None:
        back = next((t for t, fit, _ in later if fit), None)
        return marked, reason, back, 0
    during = [(t, fit) for t, fit, _ in later if t < end]
    fits = sum(1 for _, fit in during if fit)
    if during and during[-1][1]:          # fit when the fault ended: readmitted early
        return marked, reason, during[-1][0], fits - 1
    back = next((t for t, fit, _ in later if fit and t >= end), None)
    return marked, reason, back, fits


def _windows(faults: Sequence[Fault], kinds: Sequence[str]
             ) -> list[tuple[str, float, float | None]]:
    """(kinds joined by "+", start, end) per distinct window, in time order: faults with
    the same window (e.g. errors and notServing together) are one row."""
    windows: dict[tuple[float, float | None], list[str]] = {}
    for f in sorted(faults, key=lambda f: (f.start, math.inf if f.end is None else f.end)):
        if f.kind in kinds:
            windows.setdefault((f.start, f.end), []).append(f.kind)
    return [("+".join(k), start, end) for (start, end), k in windows.items()]


def downtimes(sim: Simulation) -> list[Downtime]:
    out: list[Downtime] = []
    horizon = sim.stopped_at
    for b in sim.backends:
        for kind, start, end in _windows(b.spec.faults, DETECTABLE):
            if start >= horizon:
                continue
            marked, reason, readmitted, flaps = _marks(b.transitions, start, end)
            stop = end if end is not None else horizon
            out.append(Downtime(
                backend=b.name, kind=kind, start=start, end=end,
                marked_at=marked, detection_delay=None if marked is None else marked - start,
                reason=reason or "",
                readmitted_at=readmitted,
                readmission_delay=(readmitted - end if readmitted is not None and end is not None
                                   else None),
                flaps=flaps,
                failed_before_detection=_count(sim.failures, start,
                                               marked if marked is not None else stop, b.index),
                failed_on_backend=_count(sim.failures, start, stop, b.index),
                failed_in_window=_count(sim.failures, start, stop, None)))
    return out


def _server_before(times: list[float], servers: list[int], t: float) -> int | None:
    i = bisect.bisect_left(times, t)
    return servers[i - 1] if i > 0 else None


def affinities(sim: Simulation) -> list[Affinity]:
    if not sim.keys:
        return []
    out: list[Affinity] = []
    for b in sim.backends:
        for _, start, end in _windows(b.spec.faults, ("down", "errors", "notServing")):
            out.append(_affinity(sim, b.index, b.name, start, end))
    return out


def _affinity(sim: Simulation, x: int, name: str, start: float, end: float | None) -> Affinity:
    stop = end if end is not None else sim.stopped_at
    compared = moved = had_to = needless = 0
    delays: list[float] = []
    homes = home_total = 0
    for times, servers in sim.keys.values():
        before = _server_before(times, servers, start)
        if before is None:
            continue
        i = bisect.bisect_left(times, stop)
        if i == 0 or times[i - 1] < start:
            continue                       # no request during the fault
        during = servers[i - 1]
        compared += 1
        if during != before:
            moved += 1
            if before != x:
                needless += 1
        if before == x:
            had_to += 1
        if end is None or i == len(times):
            continue
        home_total += 1
        if servers[-1] == before:
            homes += 1
        if before == x and during != x:
            for j in range(i, len(times)):
                if servers[j] == x:
                    delays.append(times[j] - end)
                    break
    delays.sort()
    frac = (lambda n: n / compared) if compared else (lambda n: 0.0)
    return Affinity(
        backend=name, start=start, end=end, keys=compared, moved=frac(moved),
        had_to_move=frac(had_to), moved_needlessly=frac(needless),
        returned=(len(delays) / had_to if had_to else 0.0) if end is not None else None,
        return_p50=percentile(delays, 0.5), return_p90=percentile(delays, 0.9),
        home_at_end=homes / home_total if home_total else None)
