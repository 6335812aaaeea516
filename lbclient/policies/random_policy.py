"""``random``: each call goes to an eligible endpoint drawn at random, in proportion to
its weight.

Config: ``{"weights": {"host:port": number > 0, ...}}`` (optional; overrides the weight
discovery gave each address, useful for ``ipv4:``/``static:`` targets). gRPC has no
``random`` policy; the name and the ``weights`` field are lbclient's.

Picks are O(1) for equal weights and O(log n) otherwise (a bisect over cumulative
weights built once per picker). Retries avoid endpoints already tried while any other
is left. Thread-safety: the picker is immutable; ``random.Random`` is atomic per call.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._validate import expect_object, reject_unknown
from ..balancer.picker import Candidate, PickInfo, PickResult
from ..balancer.policy import PolicySpec, register_policy
from ._common import WeightedPolicy, WeightedSampler, Weights, parse_weights, untried_choice

NAME = "random"


@dataclass(frozen=True)
class Config:
    weights: Weights = ()


def parse_config(raw: Any, path: str) -> Config:
    obj = expect_object(raw if raw is not None else {}, path)
    reject_unknown(obj, path, {"weights"})
    return Config(parse_weights(obj, path))


class RandomPicker:
    __slots__ = ("_candidates", "_weights", "_sampler", "_rng")

    def __init__(self, candidates: Sequence[Candidate], rng: random.Random) -> None:
        self._candidates = tuple(candidates)
        self._weights = [c.weight for c in self._candidates]
        self._sampler = WeightedSampler(self._weights)
        self._rng = rng

    def pick(self, info: PickInfo) -> PickResult:
        c = self._candidates[self._sampler.index(self._rng)]
        if info.exclude and c.address in info.exclude:
            c = untried_choice(self._candidates, info, self._rng, self._weights)
        return c.result


class RandomPolicy(WeightedPolicy):
    config: Config

    def build_picker(self, candidates: Sequence[Candidate]) -> RandomPicker:
        return RandomPicker(candidates, self.ctx.rng)


SPEC = PolicySpec(NAME, parse_config, RandomPolicy, weight_aware=True)
register_policy(SPEC)
