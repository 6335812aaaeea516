"""``round_robin``: each eligible endpoint in turn, starting at a random index.

Config: ``{}`` (no fields). Picks skip nothing because the balancer only hands over
eligible endpoints; the split is even (3,000 calls over 3 endpoints: 1,000 each).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._validate import expect_object, reject_unknown
from ..balancer.picker import Candidate, PickInfo, PickResult
from ..balancer.policy import Policy, PolicySpec, register_policy

NAME = "round_robin"


@dataclass(frozen=True)
class Config:
    pass


def parse_config(raw: Any, path: str) -> Config:
    reject_unknown(expect_object(raw if raw is not None else {}, path), path, set())
    return Config()


class RoundRobinPicker:
    """An immutable tuple and an atomic counter (``itertools.count`` is atomic under the
    GIL). On retries it skips endpoints already tried while any other is left."""

    __slots__ = ("_candidates", "_n", "_next")

    def __init__(self, candidates: Sequence[Candidate], start: int) -> None:
        self._candidates = tuple(candidates)
        self._n = len(self._candidates)
        self._next = itertools.count(start)

    def pick(self, info: PickInfo) -> PickResult:
        i = next(self._next)
        c = self._candidates[i % self._n]
        if info.exclude and c.address in info.exclude:
            for k in range(1, self._n):
                alt = self._candidates[(i + k) % self._n]
                if alt.address not in info.exclude:
                    return alt.result
        return c.result


class RoundRobin(Policy):
    def build_picker(self, candidates: Sequence[Candidate]) -> RoundRobinPicker:
        return RoundRobinPicker(candidates, self.ctx.rng.randrange(len(candidates)))


SPEC = PolicySpec(NAME, parse_config, RoundRobin)
register_policy(SPEC)
