"""``least_connections``: the endpoint with the fewest in-flight calls per unit of weight.

Weighted least connections: each eligible endpoint scores ``in_flight / weight`` and the
lowest score wins, exactly. Example: in-flight 5/3/4 with weights 5/2/3 score
1.0/1.5/1.33, so the first endpoint is chosen. Ties are broken at random in proportion
to weight, so an idle fleet is not always led by the first endpoint and idle traffic
still follows the weights.

How it stays exact in O(log n) (see ``lbclient.balancer.load_index``): the policy keeps an
index of the scores that outlives pickers: buckets by in-flight count while every weight is equal
(O(1): a random endpoint of the lowest bucket), else a tournament tree (every node: the
least score below it and the weight tied at it). The endpoints' counters tell it of
every change (``EndpointStats.watch_in_flight``: a watcher runs right after each begin,
end and discard, only on endpoints this policy holds). A pick takes the index's lock,
finds a least-scored endpoint (the tree: root to leaf, one random number sharing ties by
weight), begins the call there and moves it in the index, then releases the lock: the
choice and the count are one atomic step. So two concurrent picks can never both take the same
idle endpoint, no pick is retried and none is counted without the comparison (the old
scan's compare-and-increment could give up after 8 races and count its last choice
anyway). The one thing a pick may not see yet is an end whose counter has moved while
its watcher waits for the lock on another thread: for that instant the endpoint counts
the finished call, so a pick never takes an endpoint busier than it believed, and never
one busier than another endpoint unless that one's call ended at that same instant.

The call is counted at pick time (``PickResult(counted=True)``); the channel ends it.
A rebuild (eligibility or weight change) compares the candidates with the index (O(n))
and moves only the changed leaves; pickers hold the live index, so a picker still in use
after a rebuild picks among the newest candidates.

Config: ``{"weights": {"host:port": number > 0}}`` (optional per-address weights).
gRPC has no such policy; Envoy's ``LEAST_REQUEST`` is ``least_request`` here.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._validate import expect_object, reject_unknown
from ..balancer.load_index import LoadIndex
from ..balancer.picker import Candidate, PickInfo, PickResult
from ..balancer.policy import PolicyContext, PolicySpec, register_policy
from ._common import WeightedPolicy, Weights, parse_weights

NAME = "least_connections"


@dataclass(frozen=True)
class Config:
    weights: Weights = ()


def parse_config(raw: Any, path: str) -> Config:
    obj = expect_object(raw if raw is not None else {}, path)
    reject_unknown(obj, path, {"weights"})
    return Config(parse_weights(obj, path))


class LeastConnectionsPicker:
    """Picks from the policy's live :class:`LoadIndex` (which holds the counts)."""

    __slots__ = ("_index", "_rng")

    def __init__(self, index: LoadIndex, rng: random.Random) -> None:
        self._index = index
        self._rng = rng

    def pick(self, info: PickInfo) -> PickResult:
        return self._index.pick(info.exclude, self._rng.random())


class LeastConnections(WeightedPolicy):
    config: Config

    def __init__(self, config: Config, ctx: PolicyContext) -> None:
        super().__init__(config, ctx)
        self.index = LoadIndex()

    def build_picker(self, candidates: Sequence[Candidate]) -> LeastConnectionsPicker:
        self.index.update(candidates)
        return LeastConnectionsPicker(self.index, self.ctx.rng)

    def close(self) -> None:
        self.index.close()


SPEC = PolicySpec(NAME, parse_config, LeastConnections, weight_aware=True)
register_policy(SPEC)
