"""``random_subsetting`` (also ``random_subsetting_experimental``, gRPC's name): gRFC A68,
a random subset of the endpoints by rendezvous hashing, balanced by a child policy.

Config (A68's fields, both required)::

    {"random_subsetting": {
        "subsetSize": 10,                       # integer >= 1: endpoints kept per client
        "childPolicy": [{"round_robin": {}}]}}  # balances among the subset

The algorithm (A68): when the policy is created it draws a random 64-bit ``seed`` (from
the channel's random generator); after every resolver update each endpoint's address is
hashed with XXH64 and that seed, the endpoints are sorted by hash (ties by address), and
the first ``subsetSize`` are kept; with ``subsetSize`` or fewer endpoints, all are kept.

Churn (rendezvous hashing): an endpoint's hash does not depend on the others, so the
subset is "the ``subsetSize`` lowest hashes of whatever is present". With at least
``subsetSize`` endpoints before and after an update that removes some endpoints and adds
others, the number of members replaced is exactly
``max(removed endpoints that were members, added endpoints that became members)``, so
at most ``max(added, removed)``: adding or removing one endpoint replaces at most one
member (A68's guarantee), a rolling replacement of ``k`` servers at most ``k``, and an
update that removes no member and adds none with a low enough hash changes nothing.
(Proof: let ``t`` be the ``subsetSize``-th lowest hash. If ``t`` fell, the new subset is
the kept members below the new ``t`` plus the added members; otherwise every kept member
stays, and only removed members are replaced.)

Differences from A68: the subset is kept while the policy object lives; a changed config
(another ``subsetSize`` or child) creates a new policy, hence a new seed and a new subset.
Weights play no part in the choice (A68's neither); the child sees them.

Threading: ``choose`` runs with the balancer's lock held; the hash cache (one entry per
present address) is only touched there.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .._validate import expect_object, reject_unknown
from ..balancer.policy import LbChoice, PolicyContext, PolicySpec, register_policy
from ..endpoint import Endpoint
from ._hashing import xxhash64
from .subsetting import SubsettingPolicy, parse_child, parse_subset_size

NAME = "random_subsetting"
ALIAS = "random_subsetting_experimental"


@dataclass(frozen=True)
class Config:
    subset_size: int
    child: LbChoice


def parse_config(raw: Any, path: str) -> Config:
    obj = expect_object(raw if raw is not None else {}, path)
    reject_unknown(obj, path, {"subsetSize", "childPolicy"})
    return Config(parse_subset_size(obj, path), parse_child(obj, path))


def rendezvous_subset(addresses: Iterable[str], subset_size: int, seed: int) -> list[str]:
    """The pure function: the ``subset_size`` distinct addresses with the lowest
    ``xxhash64(address, seed)`` (ties by address), lowest first; all of them (in that
    order) when there are no more than ``subset_size``."""
    distinct = set(addresses)
    return heapq.nsmallest(subset_size, distinct, key=lambda a: (xxhash64(a, seed), a))


class RandomSubsetting(SubsettingPolicy):
    config: Config

    def __init__(self, config: Config, ctx: PolicyContext) -> None:
        super().__init__(config, ctx)
        self.seed = ctx.rng.getrandbits(64)
        self._hashes: dict[str, int] = {}
        self._picked: list[str] = []

    def choose(self, endpoints: list[Endpoint]) -> list[Endpoint]:
        by_address = {e.address: e for e in endpoints}
        known, seed = self._hashes, self.seed
        if by_address.keys() == known.keys():   # the same addresses: the same subset
            return [by_address[a] for a in self._picked]
        # Hash each address once per channel: only new addresses cost a hash.
        hashes = self._hashes = {a: known[a] if a in known else xxhash64(a, seed)
                                 for a in by_address}
        lowest = heapq.nsmallest(self.config.subset_size,
                                 zip(hashes.values(), hashes.keys(), strict=True))
        self._picked = [a for _, a in lowest]
        return [by_address[a] for a in self._picked]


SPEC = PolicySpec(NAME, parse_config, RandomSubsetting)
register_policy(SPEC, ALIAS)
