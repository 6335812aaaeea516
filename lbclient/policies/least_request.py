"""``least_request``: power of N choices over in-flight calls (gRFC A48, Envoy's
LEAST_REQUEST). Also registered as gRPC's name, ``least_request_experimental``.

Config (gRPC's fields, plus Envoy's bias and lbclient's ``weights``)::

    {"choiceCount": 2,            # endpoints sampled per pick; default 2, < 2 rejected,
                                  # > 10 becomes 10 (A48)
     "activeRequestBias": 1.0,    # Envoy's active_request_bias, >= 0; unequal weights only
     "weights": {"host:port": 5}} # optional per-address weights

Equal weights (A48 exactly): sample ``choiceCount`` endpoints uniformly *with*
replacement and take the one with the fewest in-flight calls (the first sampled wins a
tie). Unequal weights: Envoy ranks endpoints by ``weight / (active + 1) **
activeRequestBias``. lbclient keeps the O(log n) sampling and samples in proportion to
``weight``, then chooses among the samples in proportion to ``1 / (active + 1) **
bias`` -- Envoy's effective weight divided by the sampling weight. So an idle fleet gets
calls exactly in proportion to weight, a bias of 0 is plain weighted random (as in
Envoy), and a larger bias steers harder toward idle endpoints.

Counting: the channel increments the in-flight counter as soon as the pick returns and
decrements it when the call ends (A48's "incremented once picked, decremented when the
RPC finishes, regardless of status").
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._validate import expect_object, get_int, get_number, reject_unknown
from ..balancer.picker import Candidate, PickInfo, PickResult
from ..balancer.policy import PolicySpec, register_policy
from ._common import WeightedPolicy, WeightedSampler, Weights, parse_weights, untried_choice

NAME = "least_request"
GRPC_NAME = "least_request_experimental"
MAX_CHOICES = 10


@dataclass(frozen=True)
class Config:
    choice_count: int = 2
    active_request_bias: float = 1.0
    weights: Weights = ()


def parse_config(raw: Any, path: str) -> Config:
    obj = expect_object(raw if raw is not None else {}, path)
    reject_unknown(obj, path, {"choiceCount", "activeRequestBias", "weights"})
    # "If choice_count < 2, the config will be rejected" and "> 10 ... will set
    # choice_count = 10" (gRFC A48 as implemented by gRPC).
    choices = get_int(obj, "choiceCount", path, 2, minimum=2)
    bias = get_number(obj, "activeRequestBias", path, 1.0, minimum=0.0)
    return Config(min(choices, MAX_CHOICES), bias, parse_weights(obj, path))


class LeastRequestPicker:
    """Immutable; reads the shared in-flight counters of its candidates."""

    __slots__ = ("_candidates", "_n", "_choices", "_bias", "_sampler", "_rng", "_weights")

    def __init__(self, candidates: Sequence[Candidate], choices: int, bias: float,
                 rng: random.Random) -> None:
        self._candidates = tuple(candidates)
        self._n = len(self._candidates)
        self._choices = choices
        self._bias = bias
        self._weights = [c.weight for c in self._candidates]
        self._sampler = WeightedSampler(self._weights)
        self._rng = rng

    def pick(self, info: PickInfo) -> PickResult:
        c = self._equal() if self._sampler.uniform else self._weighted()
        if info.exclude and c.address in info.exclude:
            c = untried_choice(self._candidates, info, self._rng, self._weights)
        return c.result

    def _equal(self) -> Candidate:
        rnd, n, cands = self._rng.random, self._n, self._candidates
        best = cands[min(int(rnd() * n), n - 1)]
        best_active = best.stats.in_flight
        for _ in range(self._choices - 1):
            s = cands[min(int(rnd() * n), n - 1)]
            active = s.stats.in_flight
            if active < best_active:
                best, best_active = s, active
        return best

    def _weighted(self) -> Candidate:
        samples = [self._candidates[self._sampler.index(self._rng)]
                   for _ in range(self._choices)]
        if self._bias == 0.0:
            return samples[0]
        scores = [(s.stats.in_flight + 1) ** -self._bias for s in samples]
        return samples[WeightedSampler(scores).index(self._rng)]


class LeastRequest(WeightedPolicy):
    config: Config

    def build_picker(self, candidates: Sequence[Candidate]) -> LeastRequestPicker:
        cfg = self.config
        return LeastRequestPicker(candidates, cfg.choice_count, cfg.active_request_bias,
                                  self.ctx.rng)


SPEC = PolicySpec(NAME, parse_config, LeastRequest, weight_aware=True)
register_policy(SPEC, GRPC_NAME)
