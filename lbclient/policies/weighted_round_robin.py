"""``weighted_round_robin``: smooth weighted round robin (gRFC A58's policy name/fields).

Picks follow a fixed, interleaved cycle of ``sum(w)`` picks in which every endpoint
appears exactly ``w`` times: nginx's smooth weighted round robin (each step every
endpoint gains its weight, the richest is picked and pays the total), so at every point
of the cycle each endpoint stays within two picks of its exact share (1.25 at worst in a
20,000-case random search). Any ``sum(w)`` consecutive picks give every endpoint exactly
``w`` picks, spread out: weights 5, 3, 2 give ``A B C A A B A C B A`` (never five A in a
row). Endpoints of equal weight move together (a class's members are picked in index
order), so the cycle costs sum(w) steps of O(distinct weights); beyond 30,000 such
step-classes it comes from gRPC's earliest-deadline-first schedule instead (turn ``k``
of an endpoint due at ``(k + 0.5) / w``: the same exact counts per cycle, within three
picks of the exact share), built from the distinct due times by copying whole weight
classes. So a rebuild is O(n + sum(w)) list work, mostly in C (10,000 endpoints of
weights 1..5: a few ms). The picker holds the cycle and an atomic counter started at a
random point, so a pick is O(1) and lock-free.

Weights, highest precedence first:

1. ORCA load reports (gRFC A51/A58): when backends attach an ``OrcaLoadReport`` to the
   ``endpoint-load-metrics-bin`` trailer, each endpoint's weight is
   ``qps / (utilization + eps/qps * errorUtilizationPenalty)``. A weight counts only after
   the endpoint has reported for ``blackoutPeriod`` and until it has been silent for
   ``weightExpirationPeriod``; both restart when the endpoint becomes eligible again.
   Endpoints without a usable weight get the mean of the others. With fewer than two
   usable weights the policy falls back to (2). Weights are re-read every
   ``weightUpdatePeriod`` (a timer on the channel's scheduler), and a new picker is
   published when they changed.
2. The per-address ``weights`` map of the config (for ``ipv4:``/``static:`` targets).
3. The weight discovery attached to each endpoint (``Endpoint.weight``, default 1).

Config (gRPC's JSON names and defaults)::

    {"blackoutPeriod": "10s", "weightExpirationPeriod": "180s",
     "weightUpdatePeriod": "1s",         # values below 100 ms become 100 ms
     "errorUtilizationPenalty": 1.0,     # >= 0
     "enableOobLoadReport": false,       # accepted, not implemented: per-call reports
     "oobReportingPeriod": "10s",        #   are used either way
     "weights": {"host:port": 5}}

Cycles longer than 16,384 entries (or non-integer weights) are quantized: weights are
scaled to a cycle of max(16,384, 4n) entries (max(1,000, 4n) for ORCA weights), each
endpoint keeping at least one entry.

Threading: ``build_picker``/``endpoint_weight`` run under the balancer lock; load reports
arrive on call threads and the weight timer on the scheduler thread. Shared state is
only ever changed by single attribute/dict-item assignments (atomic under the GIL), and
the timer asks for a rebuild instead of touching a picker.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .._validate import (
    expect_object,
    get_bool,
    get_duration,
    get_number,
    reject_unknown,
)
from ..balancer.lb_metrics import LOCALITY_LABEL, LOCALITY_OPTION, METRICS_OPTION, LbMetrics
from ..balancer.picker import CallOutcome, Candidate, PickInfo, PickResult
from ..balancer.policy import Cancellable, Policy, PolicyContext, PolicySpec, register_policy
from ._common import Weights, parse_weights, weight_of
from ._orca import load_report, orca_weight

NAME = "weighted_round_robin"
_ADDRESS = operator.attrgetter("address")
# gRFC A78's instruments (lbclient.metrics' OpenTelemetry sink adds grpc.target and
# grpc.lb.backend_service; this policy adds grpc.lb.locality).
RR_FALLBACK = "grpc.lb.wrr.rr_fallback"
NOT_YET_USABLE_METRIC = "grpc.lb.wrr.endpoint_weight_not_yet_usable"
STALE_METRIC = "grpc.lb.wrr.endpoint_weight_stale"
WEIGHTS_METRIC = "grpc.lb.wrr.endpoint_weights"
MIN_UPDATE_PERIOD = 0.1
_EXACT_LIMIT = 1 << 14
_FLOAT_CYCLE = 1000


@dataclass(frozen=True)
class Config:
    blackout_period: float = 10.0
    weight_expiration_period: float = 180.0
    weight_update_period: float = 1.0
    error_utilization_penalty: float = 1.0
    enable_oob_load_report: bool = False
    oob_reporting_period: float = 10.0
    weights: Weights = ()


_FIELDS = {"blackoutPeriod", "weightExpirationPeriod", "weightUpdatePeriod",
           "errorUtilizationPenalty", "enableOobLoadReport", "oobReportingPeriod", "weights"}


def parse_config(raw: Any, path: str) -> Config:
    obj = expect_object(raw if raw is not None else {}, path)
    reject_unknown(obj, path, _FIELDS)
    d = Config()

    def dur(key: str, default: float, positive: bool = False) -> float:
        value = get_duration(obj, key, path, default, positive=positive)
        assert value is not None
        return value

    return Config(
        blackout_period=dur("blackoutPeriod", d.blackout_period),
        weight_expiration_period=dur("weightExpirationPeriod", d.weight_expiration_period,
                                     positive=True),
        # "Values less than 100ms are capped at 100ms." (A58)
        weight_update_period=max(dur("weightUpdatePeriod", d.weight_update_period),
                                 MIN_UPDATE_PERIOD),
        # "Configuration is rejected if this value is negative." (A58)
        error_utilization_penalty=get_number(obj, "errorUtilizationPenalty", path,
                                             d.error_utilization_penalty, minimum=0.0),
        enable_oob_load_report=get_bool(obj, "enableOobLoadReport", path, False),
        oob_reporting_period=dur("oobReportingPeriod", d.oob_reporting_period),
        weights=parse_weights(obj, path),
    )


# ------------------------------------------------------------------ the schedule
def quantize(weights: Sequence[float]) -> list[int]:
    """Integer weights for the cycle: exact (divided by their gcd) when they are
    integers summing to at most max(16,384, 4n), else scaled (each at least 1)."""
    n = len(weights)
    if all(map(float.is_integer, map(float, weights))):
        ints = [int(w) for w in weights]
        g = math.gcd(*ints)
        if g > 1:
            ints = [w // g for w in ints]
        if sum(ints) <= max(_EXACT_LIMIT, 4 * n):
            return ints
        target = max(_EXACT_LIMIT, 4 * n)
    else:
        target = max(_FLOAT_CYCLE, 4 * n)
    scale = target / sum(weights)
    return [max(1, round(w * scale)) for w in weights]


# The smooth cycle costs sum(w) steps of O(distinct weights) each; above this many
# step-classes the earliest-deadline-first cycle (O(sum(w)) list copies) is used.
_SMOOTH_BUDGET = 30_000


def schedule(weights: Sequence[float]) -> list[int]:
    """One period of the weighted cycle, as indexes into ``weights`` (quantized)."""
    ints = quantize(weights)
    classes = weight_classes(ints)
    if sum(ints) * len(classes) <= _SMOOTH_BUDGET:
        return smooth_schedule(ints, classes)
    return edf_schedule(ints, classes)


def weight_classes(ints: Sequence[int]) -> dict[int, list[int]]:
    """weight -> the indexes with that weight, ascending."""
    classes: dict[int, list[int]] = {}
    for i, w in enumerate(ints):
        members = classes.get(w)
        if members is None:
            classes[w] = [i]
        else:
            members.append(i)
    return classes


def smooth_schedule(ints: Sequence[int],
                    classes: dict[int, list[int]] | None = None) -> list[int]:
    """nginx's smooth weighted round robin over one period: each step every endpoint's
    current weight grows by its weight, the largest (first on ties) is picked and loses
    the total.

    Computed per weight class, in O(sum(w) x classes) instead of O(sum(w) x n): after
    ``t`` steps an endpoint's current weight is ``t*w - total*picks``, so within a class
    the richest is the one picked least, lowest index first: a class's members are
    picked in index order, round after round, and the class's richest member after ``P``
    picks of the class is member ``P % k`` with ``t*w - total*(P // k)``."""
    if classes is None:
        classes = weight_classes(ints)
    total = sum(ints)
    if len(classes) == 1:
        ((w, members),) = classes.items()
        return members * w
    ws = list(classes)
    groups = [classes[w] for w in ws]
    sizes = [len(g) for g in groups]
    picks = [0] * len(ws)
    order: list[int] = []
    span = range(len(ws))
    for t in range(1, total + 1):
        best, best_value, best_index = 0, -total * (total + 1), -1
        for c in span:
            p, k = picks[c], sizes[c]
            value = t * ws[c] - total * (p // k)
            if value >= best_value:
                index = groups[c][p % k]
                if value > best_value or index < best_index:
                    best, best_value, best_index = c, value, index
        picks[best] += 1
        order.append(best_index)
    return order


def edf_schedule(ints: Sequence[int],
                 classes: dict[int, list[int]] | None = None) -> list[int]:
    """Earliest deadline first with turn k of an endpoint of weight w due at
    (k + 0.5) / w: one period's due times all lie in (0, 1) and the next period's in
    (1, 2), so each period holds exactly w turns of every endpoint. Ties go to the lower
    index. Endpoints of one weight share their due times, so the cycle is built from the
    distinct due times (at most the sum of the distinct weights) and whole classes are
    copied: O(D log D + sum(w))."""
    if classes is None:
        classes = weight_classes(ints)
    due: dict[float, list[int]] = {}
    for w in classes:
        for k in range(w):
            due.setdefault((k + 0.5) / w, []).append(w)
    order: list[int] = []
    for t in sorted(due):
        ws = due[t]
        if len(ws) == 1:
            order += classes[ws[0]]
        else:
            order += sorted(itertools.chain.from_iterable(classes[w] for w in ws))
    return order


class WeightedRoundRobinPicker:
    """An immutable cycle and an atomic counter (``itertools.count``)."""

    __slots__ = ("_results", "_len", "_next", "weights")

    def __init__(self, candidates: Sequence[Candidate], weights: Sequence[float],
                 start: int, results: Sequence[PickResult] | None = None) -> None:
        """``results``: the result of each candidate (default: its plain result); the
        policy's carry the ORCA reporter that reads each call's load report."""
        order = schedule(weights)
        per = list(results) if results is not None else [c.result for c in candidates]
        self._results: tuple[PickResult, ...] = (
            operator.itemgetter(*order)(per) if len(order) > 1 else (per[order[0]],))
        self._len = len(self._results)
        self._next = itertools.count(start % self._len)
        self.weights = tuple(weights)  # the weights this picker was built with

    def pick(self, info: PickInfo) -> PickResult:
        i = next(self._next) % self._len
        result = self._results[i]
        if info.exclude and result.candidate.address in info.exclude:
            for k in range(1, self._len):
                alt = self._results[(i + k) % self._len]
                if alt.candidate.address not in info.exclude:
                    return alt
        return result


# ------------------------------------------------------------------ load reports
# A78's view of an endpoint's weight at a scheduler update.
USABLE, NOT_YET_USABLE, STALE = 0, 1, 2


class _LoadWeight:
    """The last ORCA weight of one address and A58's two timestamps."""

    __slots__ = ("weight", "non_empty_since", "last_updated")

    def __init__(self) -> None:
        self.weight = 0.0
        self.non_empty_since: float | None = None
        self.last_updated: float | None = None

    def state(self, now: float, cfg: Config) -> tuple[float, int]:
        """(the weight if fresh and past the blackout period, else 0 (A58 GetWeight);
        USABLE, NOT_YET_USABLE (no report, or in the blackout period) or STALE (the last
        report is older than the expiration period, which also restarts the blackout))."""
        last, since = self.last_updated, self.non_empty_since
        if last is None:
            return 0.0, NOT_YET_USABLE
        if now - last >= cfg.weight_expiration_period:
            self.non_empty_since = None
            return 0.0, STALE
        if cfg.blackout_period > 0 and (since is None or now - since < cfg.blackout_period):
            return 0.0, NOT_YET_USABLE
        return self.weight, USABLE

    def usable(self, now: float, cfg: Config) -> float:
        return self.state(now, cfg)[0]


class _Update(NamedTuple):
    """One scheduler update: the weights the cycle uses and what A78 counts."""

    weights: list[float]
    fallback: bool                  # fewer than two usable ORCA weights
    not_yet_usable: int
    stale: int
    orca: list[float] | None        # per endpoint, 0 when not usable; None: no report yet


class WeightedRoundRobin(Policy):
    config: Config

    def __init__(self, config: Config, ctx: PolicyContext) -> None:
        super().__init__(config, ctx)
        self._weights = dict(config.weights)
        self._loads: dict[str, _LoadWeight] = {}
        self._reporters: dict[str, Callable[[CallOutcome], None]] = {}
        self._results: dict[str, PickResult] = {}
        self._candidates: tuple[Candidate, ...] = ()
        self._present: frozenset[str] = frozenset()
        self._published: tuple[float, ...] = ()
        self._timer: Cancellable | None = None
        self._timer_starts = itertools.count()
        self._closed = False
        # A78 metrics: the channel's recorder, and grpc.lb.locality (the
        # weighted_target target this policy balances, "" outside one).
        self._metrics: LbMetrics | None = ctx.options.get(METRICS_OPTION)
        self._labels = {LOCALITY_LABEL: str(ctx.options.get(LOCALITY_OPTION, ""))}

    def endpoint_weight(self, candidate: Candidate) -> float:
        return weight_of(self._weights, candidate)

    def build_picker(self, candidates: Sequence[Candidate]) -> WeightedRoundRobinPicker:
        current = frozenset(map(_ADDRESS, candidates))
        loads, reporters = self._loads, self._reporters
        joined = current - self._present
        if loads:
            for address in joined:
                lw = loads.get(address)
                if lw is not None:  # (re)joined: A58 restarts its blackout period
                    lw.non_empty_since = lw.last_updated = None
        on_report = self._on_report
        reporters.update({a: functools.partial(on_report, a)
                          for a in joined if a not in reporters})
        if len(loads) > len(current):  # forgotten ones restart on rejoining anyway
            for address in [a for a in loads if a not in current]:
                loads.pop(address, None)
        self._present = current
        self._candidates = tuple(candidates)
        update = self._update(self._candidates)
        self._record(update)
        self._published = tuple(update.weights)
        if self._metrics is not None and self._metrics.enabled:
            self._start_timer()   # A78: a scheduler update every weightUpdatePeriod
        return WeightedRoundRobinPicker(self._candidates, update.weights,
                                        self.ctx.rng.randrange(1 << 30),
                                        self._pick_results(self._candidates))

    def _pick_results(self, candidates: Sequence[Candidate]) -> list[PickResult]:
        """Each candidate's result with its ORCA reporter (which reads the load report
        from the call's trailing metadata), made once per endpoint connection."""
        cache, reporters = self._results, self._reporters
        if not cache:   # the first picker: make them all
            out = [PickResult(c, reporters[c.address], False, True) for c in candidates]
            self._results = dict(zip(map(_ADDRESS, candidates), out, strict=True))
            return out
        out = []
        for c in candidates:
            r = cache.get(c.address)
            if r is None or r.candidate.stats is not c.stats or \
                    r.candidate.handle is not c.handle:
                r = cache[c.address] = PickResult(c, reporters[c.address], False, True)
            out.append(r)
        if len(cache) > 2 * len(candidates) + 64:
            present = self._present
            self._results = {a: r for a, r in cache.items() if a in present}
        return out

    def effective_weights(self, candidates: Sequence[Candidate]) -> list[float]:
        """ORCA weights when at least two endpoints have one (the others get their
        mean), else the static weights."""
        return self._update(candidates).weights

    def _update(self, candidates: Sequence[Candidate]) -> _Update:
        n = len(candidates)
        if not self._loads:   # no load report yet: static weights, nothing usable
            return _Update([c.weight for c in candidates], True, n, 0, None)
        now, cfg, get = self.ctx.clock(), self.config, self._loads.get
        orca: list[float] = []
        not_yet = stale = 0
        for c in candidates:
            lw = get(c.address)
            if lw is None:
                orca.append(0.0)
                not_yet += 1
                continue
            w, state = lw.state(now, cfg)
            orca.append(w)
            if state == NOT_YET_USABLE:
                not_yet += 1
            elif state == STALE:
                stale += 1
        known = [w for w in orca if w > 0.0]
        if len(known) < 2:
            return _Update([c.weight for c in candidates], True, not_yet, stale, orca)
        mean = sum(known) / len(known)
        return _Update([w if w > 0.0 else mean for w in orca], False, not_yet, stale, orca)

    def _record(self, update: _Update) -> None:
        """A78's metrics of one scheduler update (only when a sink is attached)."""
        metrics = self._metrics
        if metrics is None or not metrics.enabled:
            return
        labels = self._labels
        if update.fallback:
            metrics.add(RR_FALLBACK, 1, labels)
        if update.not_yet_usable:
            metrics.add(NOT_YET_USABLE_METRIC, update.not_yet_usable, labels)
        if update.stale:
            metrics.add(STALE_METRIC, update.stale, labels)
        weights = update.orca if update.orca is not None else [0.0] * len(update.weights)
        for w in weights:
            metrics.record(WEIGHTS_METRIC, w, labels)

    # Called on call threads, once per finished call.
    def _on_report(self, address: str, outcome: CallOutcome) -> None:
        report = load_report(outcome)
        if report is None:
            return
        weight = orca_weight(report, self.config.error_utilization_penalty)
        if weight is None:
            return
        now = self.ctx.clock()
        lw = self._loads.get(address)
        if lw is None:
            lw = self._loads.setdefault(address, _LoadWeight())
        lw.weight = weight
        lw.last_updated = now
        if lw.non_empty_since is None:
            lw.non_empty_since = now
        self._start_timer()   # the first report starts the update timer

    def _start_timer(self) -> None:
        if next(self._timer_starts) == 0:   # once (atomic under the GIL)
            self._schedule()

    def _schedule(self) -> None:
        scheduler = self.ctx.scheduler
        if scheduler is not None and not self._closed:
            self._timer = scheduler.call_later(self.config.weight_update_period, self._tick)

    def _tick(self) -> None:
        """Re-read the weights (a scheduler update); ask for a new picker when they
        changed (its build records the update's metrics), else record them here."""
        if self._closed:
            return
        candidates = self._candidates
        if candidates:
            update = self._update(candidates)
            if tuple(update.weights) != self._published:
                self.ctx.request_rebuild()
            else:
                self._record(update)
        self._schedule()

    def close(self) -> None:
        self._closed = True
        timer = self._timer
        if timer is not None:
            timer.cancel()


SPEC = PolicySpec(NAME, parse_config, WeightedRoundRobin, weight_aware=True)
register_policy(SPEC)
