"""``modulo_hash``: ``hash(key) % N`` over the eligible endpoints — the simulator's
baseline for consistent hashing, **not** registered for channels.

It exists so the seed's practice 3 ("fraction of clients that change server when one
fails, ring hash vs modulo") runs both sides through the same simulated balancer. It is
known only to :mod:`lbclient.simulate` (``SIM_POLICIES``), as the first entry of a
variant's ``loadBalancingConfig``; channels and ``parse_service_config`` do not know it,
because nobody should use it in production: when one of N endpoints leaves, about
(N-1)/N of the keys move.

Config::

    {"modulo_hash": {"requestHashHeader": "x-client-id"}}

The key is the header's value hashed with XXH64, as ``ring_hash`` does (gRFC A76 rules:
several values joined with ","); a call without it gets a random hash. Candidates are
sorted by address so every picker over the same set maps keys the same way.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._validate import expect_object, reject_unknown
from ..balancer.picker import Candidate, PickInfo, PickResult
from ..balancer.policy import Policy, PolicySpec
from ..policies._common import header_value, parse_header
from ..policies._hashing import xxhash64

NAME = "modulo_hash"


@dataclass(frozen=True)
class Config:
    request_hash_header: str | None = None


def parse_config(raw: Any, path: str) -> Config:
    obj = expect_object(raw if raw is not None else {}, path)
    reject_unknown(obj, path, {"requestHashHeader"})
    return Config(parse_header(obj, "requestHashHeader", path))


class ModuloPicker:
    """Immutable: the candidates sorted by address."""

    __slots__ = ("_candidates", "_n", "_header", "_rng")

    def __init__(self, candidates: Sequence[Candidate], header: str | None,
                 rng: random.Random) -> None:
        self._candidates = tuple(sorted(candidates, key=lambda c: c.address))
        self._n = len(self._candidates)
        self._header = header
        self._rng = rng

    def pick(self, info: PickInfo) -> PickResult:
        value = header_value(info, self._header)
        h = xxhash64(value) if value is not None else self._rng.getrandbits(64)
        return PickResult(self._candidates[h % self._n])


class ModuloHash(Policy):
    config: Config

    def build_picker(self, candidates: Sequence[Candidate]) -> ModuloPicker:
        return ModuloPicker(candidates, self.config.request_hash_header, self.ctx.rng)


SPEC = PolicySpec(NAME, parse_config, ModuloHash)
