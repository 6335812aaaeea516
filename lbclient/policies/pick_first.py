"""``pick_first``: every call goes to the first eligible endpoint in address-list order.

Config (gRFC A62): ``{"shuffleAddressList": bool}`` (default false) shuffles the list once
per resolver update so that clients spread over endpoints. Unlike grpcio, lbclient keeps
a connection to every endpoint, so failing over to the next one is immediate.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._validate import expect_object, get_bool, reject_unknown
from ..balancer.picker import Candidate, PickInfo, PickResult
from ..balancer.policy import Policy, PolicyContext, PolicySpec, register_policy

NAME = "pick_first"
_ADDRESS = operator.attrgetter("address")


@dataclass(frozen=True)
class Config:
    shuffle_address_list: bool = False


def parse_config(raw: Any, path: str) -> Config:
    obj = expect_object(raw if raw is not None else {}, path)
    reject_unknown(obj, path, {"shuffleAddressList"})
    return Config(get_bool(obj, "shuffleAddressList", path, False))


class PickFirstPicker:
    __slots__ = ("_ordered",)

    def __init__(self, ordered: Sequence[Candidate]) -> None:
        self._ordered = tuple(ordered)

    def pick(self, info: PickInfo) -> PickResult:
        first = self._ordered[0]
        if info.exclude and first.address in info.exclude:
            for c in self._ordered[1:]:
                if c.address not in info.exclude:
                    return c.result
        return first.result


class PickFirst(Policy):
    config: Config

    def __init__(self, config: Config, ctx: PolicyContext) -> None:
        super().__init__(config, ctx)
        self._order: dict[str, int] = {}

    def build_picker(self, candidates: Sequence[Candidate]) -> PickFirstPicker:
        # The order is fixed per address set: a new address set (a resolver update)
        # reshuffles; eligibility changes within the same set keep the order.
        addresses = list(map(_ADDRESS, candidates))
        if not self._order.keys() >= set(addresses):
            if self.config.shuffle_address_list:
                self.ctx.rng.shuffle(addresses)
            self._order = {a: i for i, a in enumerate(addresses)}
            addresses = list(map(_ADDRESS, candidates))
        # Sorted by position with C-level keys (10,000 candidates: about a millisecond).
        positions = list(map(self._order.__getitem__, addresses))
        index = sorted(range(len(positions)), key=positions.__getitem__)
        return PickFirstPicker([candidates[i] for i in index])


SPEC = PolicySpec(NAME, parse_config, PickFirst)
register_policy(SPEC)
