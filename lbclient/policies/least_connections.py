"""``least_connections``: the endpoint with the fewest in-flight calls per unit of weight.

Weighted least connections: each eligible endpoint scores ``in_flight / weight`` and the
lowest score wins (an exact scan, O(n) per pick). Example: in-flight 5/3/4 with weights
5/2/3 score 1.0/1.5/1.33, so the first endpoint is chosen. Ties are broken at random in
proportion to weight, so an idle fleet is not always led by the first endpoint and idle
traffic still follows the weights.

The call is counted at pick time: the picker increments the chosen endpoint's in-flight
counter with a compare-and-increment against the value it scored
(``EndpointStats.try_begin``) and returns ``PickResult(counted=True)``. If another pick
changed that counter in the meantime the scan is redone (at most ``_RESCANS`` times, then
the last choice is counted anyway), so two concurrent picks cannot both take the same
idle endpoint while another is idle.

Config: ``{"weights": {"host:port": number > 0}}`` (optional per-address weights).
gRPC has no such policy; Envoy's ``LEAST_REQUEST`` is ``least_request`` here.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._validate import expect_object, reject_unknown
from ..balancer.picker import Candidate, PickInfo, PickResult
from ..balancer.policy import PolicySpec, register_policy
from ._common import WeightedPolicy, WeightedSampler, Weights, parse_weights

NAME = "least_connections"
_RESCANS = 8


@dataclass(frozen=True)
class Config:
    weights: Weights = ()


def parse_config(raw: Any, path: str) -> Config:
    obj = expect_object(raw if raw is not None else {}, path)
    reject_unknown(obj, path, {"weights"})
    return Config(parse_weights(obj, path))


class LeastConnectionsPicker:
    """Immutable; the counters it reads live in each candidate's ``EndpointStats``."""

    __slots__ = ("_candidates", "_inv_weights", "_rng")

    def __init__(self, candidates: Sequence[Candidate], rng: random.Random) -> None:
        self._candidates = tuple(candidates)
        self._inv_weights = tuple(1.0 / c.weight for c in self._candidates)
        self._rng = rng

    def _scan(self, exclude: frozenset[str]) -> tuple[Candidate, int]:
        """The least-loaded candidate (weighted random among ties) and the in-flight
        count it was scored with."""
        best = float("inf")
        tied: list[tuple[int, int]] = []          # (index, in-flight seen)
        for i, c in enumerate(self._candidates):
            if exclude and c.address in exclude:
                continue
            n = c.stats.in_flight
            score = n * self._inv_weights[i]
            if score < best:
                best, tied = score, [(i, n)]
            elif score == best:
                tied.append((i, n))
        if not tied:  # every candidate was tried already: consider them all
            return self._scan(frozenset())
        if len(tied) == 1:
            i, n = tied[0]
        else:
            sampler = WeightedSampler([self._candidates[k].weight for k, _ in tied])
            i, n = tied[sampler.index(self._rng)]
        return self._candidates[i], n

    def pick(self, info: PickInfo) -> PickResult:
        for _ in range(_RESCANS):
            c, expected = self._scan(info.exclude)
            if c.stats.try_begin(expected):
                return PickResult(c, counted=True)
        c.stats.begin()
        return PickResult(c, counted=True)


class LeastConnections(WeightedPolicy):
    config: Config

    def build_picker(self, candidates: Sequence[Candidate]) -> LeastConnectionsPicker:
        return LeastConnectionsPicker(candidates, self.ctx.rng)


SPEC = PolicySpec(NAME, parse_config, LeastConnections, weight_aware=True)
register_policy(SPEC)
