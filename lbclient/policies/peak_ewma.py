"""``peak_ewma``: latency-aware power of two choices (Finagle's and Linkerd's Peak-EWMA).

Each pick samples two distinct eligible endpoints at random and takes the one with the
lower cost::

    cost = peak_ewma_latency x (in_flight + 1) / weight

``peak_ewma_latency`` jumps up at once to any slower response and otherwise decays
toward recent latencies with time constant ``decayTime``; when read it is also decayed
toward 0 for the time since its last sample (tower's read-time decay), so an endpoint that
stopped getting calls is probed again. The in-flight factor makes a fast endpoint that is
queueing lose against a slightly slower idle one.

New endpoints start *neutral*: an endpoint without a latency sample is given the
estimate of the endpoint it is compared with, so the comparison falls back to in-flight
calls (neither flooding a newcomer nor starving it). Ties go to the first sample.

Config::

    {"decayTime": "10s",           # positive duration; default 10 s (Linkerd's default)
     "weights": {"host:port": 2}}  # optional per-address weights (cost is divided by it)

The latency samples live in the endpoints' shared ``EndpointStats`` (fed by the channel
when calls end); this policy sets their ``decay_time``. Pickers are immutable; the reads
they do are lock-free.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._validate import expect_object, get_duration, reject_unknown
from ..balancer.picker import Candidate, PickInfo, PickResult
from ..balancer.policy import PolicySpec, register_policy
from ._common import WeightedPolicy, Weights, parse_weights, untried_choice

NAME = "peak_ewma"
DEFAULT_DECAY = 10.0


@dataclass(frozen=True)
class Config:
    decay_time: float = DEFAULT_DECAY
    weights: Weights = ()


def parse_config(raw: Any, path: str) -> Config:
    obj = expect_object(raw if raw is not None else {}, path)
    reject_unknown(obj, path, {"decayTime", "weights"})
    decay = get_duration(obj, "decayTime", path, DEFAULT_DECAY, positive=True)
    assert decay is not None
    return Config(decay, parse_weights(obj, path))


class PeakEwmaPicker:
    __slots__ = ("_candidates", "_n", "_rng", "_clock")

    def __init__(self, candidates: Sequence[Candidate], rng: random.Random,
                 clock: Callable[[], float]) -> None:
        self._candidates = tuple(candidates)
        self._n = len(self._candidates)
        self._rng = rng
        self._clock = clock

    def pick(self, info: PickInfo) -> PickResult:
        n = self._n
        if n == 1:
            return self._candidates[0].result
        rnd = self._rng.random
        i = min(int(rnd() * n), n - 1)
        j = min(int(rnd() * (n - 1)), n - 2)
        if j >= i:
            j += 1
        a, b = self._candidates[i], self._candidates[j]
        c = a if self._cost_order(a, b) else b
        if info.exclude and c.address in info.exclude:
            other = b if c is a else a
            c = other if other.address not in info.exclude else untried_choice(
                self._candidates, info, self._rng)
        return c.result

    def _cost_order(self, a: Candidate, b: Candidate) -> bool:
        """True when ``a`` costs no more than ``b``."""
        now = self._clock()
        ea, eb = a.stats.peak_ewma_at(now), b.stats.peak_ewma_at(now)
        if ea is None:
            ea = eb if eb is not None else 1.0
        if eb is None:
            eb = ea
        cost_a = ea * (a.stats.in_flight + 1) / a.weight
        cost_b = eb * (b.stats.in_flight + 1) / b.weight
        return cost_a <= cost_b


class PeakEwma(WeightedPolicy):
    config: Config

    def build_picker(self, candidates: Sequence[Candidate]) -> PeakEwmaPicker:
        for c in candidates:
            c.stats.track_peak(self.config.decay_time)
        return PeakEwmaPicker(candidates, self.ctx.rng, self.ctx.clock)


SPEC = PolicySpec(NAME, parse_config, PeakEwma, weight_aware=True)
register_policy(SPEC)
