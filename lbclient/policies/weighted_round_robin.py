"""``weighted_round_robin``: smooth weighted round robin (gRFC A58's policy name/fields).

Picks follow a fixed, interleaved cycle of ``sum(w)`` picks in which every endpoint
appears exactly ``w`` times: nginx's smooth weighted round robin (each step every
endpoint gains its weight, the richest is picked and pays the total), so at every point
of the cycle each endpoint stays within two picks of its exact share (1.25 at worst in a
20,000-case random search). Any ``sum(w)`` consecutive picks give every endpoint exactly
``w`` picks, spread out: weights 5, 3, 2 give ``A B C A A B A C B A`` (never five A in a
row). Computing that cycle costs n x sum(w) steps, so beyond 10^6 the cycle comes from
gRPC's earliest-deadline-first schedule instead (turn ``k`` of an endpoint due at
``(k + 0.5) / w``: the same exact counts per cycle, within three picks of the exact
share). The picker holds the cycle and an atomic counter started at a random point, so a
pick is O(1) and lock-free.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._validate import (
    expect_object,
    get_bool,
    get_duration,
    get_number,
    reject_unknown,
)
from ..balancer.picker import CallOutcome, Candidate, PickInfo, PickResult
from ..balancer.policy import Cancellable, Policy, PolicyContext, PolicySpec, register_policy
from ._common import Weights, parse_weights, weight_of
from ._orca import load_report, orca_weight

NAME = "weighted_round_robin"
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
    if all(float(w).is_integer() for w in weights):
        ints = [int(w) for w in weights]
        g = functools.reduce(math.gcd, ints)
        ints = [w // g for w in ints]
        if sum(ints) <= max(_EXACT_LIMIT, 4 * n):
            return ints
        target = max(_EXACT_LIMIT, 4 * n)
    else:
        target = max(_FLOAT_CYCLE, 4 * n)
    scale = target / sum(weights)
    return [max(1, round(w * scale)) for w in weights]


_SMOOTH_BUDGET = 10**6


def schedule(weights: Sequence[float]) -> list[int]:
    """One period of the weighted cycle, as indexes into ``weights`` (quantized)."""
    ints = quantize(weights)
    if len(ints) * sum(ints) <= _SMOOTH_BUDGET:
        return smooth_schedule(ints)
    return edf_schedule(ints)


def smooth_schedule(ints: Sequence[int]) -> list[int]:
    """nginx's smooth weighted round robin over one period: each step every endpoint's
    current weight grows by its weight, the largest (first on ties) is picked and loses
    the total."""
    total = sum(ints)
    current = [0] * len(ints)
    order: list[int] = []
    indexes = range(len(ints))
    for _ in range(total):
        current = [c + w for c, w in zip(current, ints, strict=True)]
        best = max(indexes, key=current.__getitem__)
        current[best] -= total
        order.append(best)
    return order


def edf_schedule(ints: Sequence[int]) -> list[int]:
    """Earliest deadline first with turn k of an endpoint of weight w due at
    (k + 0.5) / w: one period's due times all lie in (0, 1) and the next period's in
    (1, 2), so each period holds exactly w turns of every endpoint. Ties go to the lower
    index. O(sum(w) log sum(w))."""
    due = sorted(((k + 0.5) / w, i) for i, w in enumerate(ints) for k in range(w))
    return [i for _, i in due]


class WeightedRoundRobinPicker:
    """An immutable cycle and an atomic counter (``itertools.count``)."""

    __slots__ = ("_cycle", "_results", "_len", "_next", "weights")

    def __init__(self, candidates: Sequence[Candidate], weights: Sequence[float],
                 start: int, reporters: dict[str, Callable[[CallOutcome], None]] | None
                 ) -> None:
        order = schedule(weights)
        self._cycle = tuple(candidates[i] for i in order)
        # ORCA reporters read the load report from each call's trailing metadata.
        self._results = (tuple(PickResult(c, reporters[c.address], wants_metadata=True)
                               for c in self._cycle)
                         if reporters is not None else tuple(c.result for c in self._cycle))
        self._len = len(self._cycle)
        self._next = itertools.count(start % self._len)
        self.weights = tuple(weights)  # the weights this picker was built with

    def pick(self, info: PickInfo) -> PickResult:
        i = next(self._next) % self._len
        if info.exclude and self._cycle[i].address in info.exclude:
            for k in range(1, self._len):
                j = (i + k) % self._len
                if self._cycle[j].address not in info.exclude:
                    i = j
                    break
        return self._results[i]


# ------------------------------------------------------------------ load reports
class _LoadWeight:
    """The last ORCA weight of one address and A58's two timestamps."""

    __slots__ = ("weight", "non_empty_since", "last_updated")

    def __init__(self) -> None:
        self.weight = 0.0
        self.non_empty_since: float | None = None
        self.last_updated: float | None = None

    def usable(self, now: float, cfg: Config) -> float:
        """The weight if fresh and past the blackout period, else 0 (A58 GetWeight)."""
        last, since = self.last_updated, self.non_empty_since
        if last is None:
            return 0.0
        if now - last >= cfg.weight_expiration_period:
            self.non_empty_since = None
            return 0.0
        if cfg.blackout_period > 0 and (since is None or now - since < cfg.blackout_period):
            return 0.0
        return self.weight


class WeightedRoundRobin(Policy):
    config: Config

    def __init__(self, config: Config, ctx: PolicyContext) -> None:
        super().__init__(config, ctx)
        self._weights = dict(config.weights)
        self._loads: dict[str, _LoadWeight] = {}
        self._reporters: dict[str, Callable[[CallOutcome], None]] = {}
        self._candidates: tuple[Candidate, ...] = ()
        self._published: tuple[float, ...] = ()
        self._timer: Cancellable | None = None
        self._timer_starts = itertools.count()
        self._closed = False

    def endpoint_weight(self, candidate: Candidate) -> float:
        return weight_of(self._weights, candidate)

    def build_picker(self, candidates: Sequence[Candidate]) -> WeightedRoundRobinPicker:
        old = {c.address for c in self._candidates}
        for c in candidates:
            if c.address not in old:  # (re)joined: A58 restarts its blackout period
                lw = self._loads.get(c.address)
                if lw is not None:
                    lw.non_empty_since = lw.last_updated = None
            if c.address not in self._reporters:
                self._reporters[c.address] = functools.partial(self._on_report, c.address)
        current = {c.address for c in candidates}
        for address in list(self._loads):  # forgotten ones restart on rejoining anyway
            if address not in current:
                self._loads.pop(address, None)
        self._candidates = tuple(candidates)
        weights = self.effective_weights(self._candidates)
        self._published = tuple(weights)
        return WeightedRoundRobinPicker(self._candidates, weights,
                                        self.ctx.rng.randrange(1 << 30), self._reporters)

    def effective_weights(self, candidates: Sequence[Candidate]) -> list[float]:
        """ORCA weights when at least two endpoints have one (the others get their
        mean), else the static weights."""
        now = self.ctx.clock()
        loads = [self._loads.get(c.address) for c in candidates]
        orca = [lw.usable(now, self.config) if lw is not None else 0.0 for lw in loads]
        known = [w for w in orca if w > 0.0]
        if len(known) < 2:
            return [c.weight for c in candidates]
        mean = sum(known) / len(known)
        return [w if w > 0.0 else mean for w in orca]

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
        if next(self._timer_starts) == 0:  # the first report starts the update timer
            self._schedule()

    def _schedule(self) -> None:
        scheduler = self.ctx.scheduler
        if scheduler is not None and not self._closed:
            self._timer = scheduler.call_later(self.config.weight_update_period, self._tick)

    def _tick(self) -> None:
        """Re-read the weights; ask for a new picker when they changed."""
        if self._closed:
            return
        candidates = self._candidates
        if candidates and tuple(self.effective_weights(candidates)) != self._published:
            self.ctx.request_rebuild()
        self._schedule()

    def close(self) -> None:
        self._closed = True
        timer = self._timer
        if timer is not None:
            timer.cancel()


SPEC = PolicySpec(NAME, parse_config, WeightedRoundRobin, weight_aware=True)
register_policy(SPEC)
