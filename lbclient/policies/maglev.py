"""``maglev``: consistent hashing with Google's Maglev lookup table, as Envoy builds it.

Config (Envoy's ``table_size``, plus the same key fields as ``ring_hash``)::

    {"tableSize": 65537,                 # a prime, 3 .. 5,000,011 (Envoy's limits)
     "requestHashHeader": "x-user-id",   # the key (gRFC A76 rules); not "-bin"
     "hashBalanceFactor": 150,           # optional, >= 100 (Envoy's bounded load)
     "weights": {"host:port": 2}}        # optional per-address weights

Each endpoint (sorted by hash key: the ``hash_key`` attribute, else the address) gets a
permutation of the table from two hashes of its key, ``offset = XXH64(key, 0) % M`` and
``skip = XXH64(key, 1) % (M - 1) + 1``; endpoints take turns claiming their next free
entry until the table is full. With weights, an endpoint takes a turn each time its
accumulated weight reaches the largest weight, so it claims entries in proportion to
weight. Every endpoint ends up with M/n entries give or take one (weights equal), which
is why Maglev balances keys better than a ring of a few thousand points; a call's key
``XXH64(value) % M`` picks its entry: O(1).

Key rules, ineligible endpoints and bounded load: see ``_hash_base`` (an ineligible
endpoint's entries fall to the next entry owned by an eligible endpoint, which spreads
them over all the others). The table is rebuilt only when the endpoint list or weights
change; building a 65,537-entry table takes on the order of 0.1-1 s in pure Python
(see benchmarks/bench_pickers.py), under the balancer's lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._validate import expect_object, get_int, join, reject_unknown
from ..balancer.policy import PolicySpec, register_policy
from ..errors import ServiceConfigError
from ._common import Weights, parse_header, parse_weights
from ._hash_base import HashPolicy, Layout, parse_balance_factor
from ._hashing import xxhash64

NAME = "maglev"
DEFAULT_TABLE_SIZE = 65537
MAX_TABLE_SIZE = 5000011


@dataclass(frozen=True)
class Config:
    table_size: int = DEFAULT_TABLE_SIZE
    request_hash_header: str | None = None
    hash_balance_factor: int | None = None
    weights: Weights = ()


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def parse_config(raw: Any, path: str) -> Config:
    obj = expect_object(raw if raw is not None else {}, path)
    reject_unknown(obj, path, {"tableSize", "requestHashHeader", "hashBalanceFactor",
                               "weights"})
    size = get_int(obj, "tableSize", path, DEFAULT_TABLE_SIZE, minimum=3,
                   maximum=MAX_TABLE_SIZE)
    if not is_prime(size):
        raise ServiceConfigError(join(path, "tableSize"),
                                 f"must be a prime number, got {size}")
    return Config(size, parse_header(obj, "requestHashHeader", path),
                  parse_balance_factor(obj, path), parse_weights(obj, path))


class MaglevTable:
    """``owners[entry]`` is the index of the member that owns the entry."""

    __slots__ = ("members", "owners", "size")

    def __init__(self, members: tuple[str, ...], owners: list[int]) -> None:
        self.members = members
        self.owners = owners
        self.size = len(owners)

    def slot(self, h: int) -> int:
        return h % self.size


def build_table(keys: list[str], weights: list[float], size: int) -> list[int]:
    """Fill a ``size``-entry table (``size`` prime) from the members' permutations."""
    n = len(keys)
    pos = [xxhash64(k, 0) % size for k in keys]
    skip = [xxhash64(k, 1) % (size - 1) + 1 for k in keys]
    table = [-1] * size
    top = max(weights)
    credit = [0.0] * n
    filled = 0
    while True:
        for i in range(n):
            credit[i] += weights[i]
            if credit[i] < top:
                continue
            credit[i] -= top
            c, s = pos[i], skip[i]
            while table[c] >= 0:
                c += s
                if c >= size:
                    c -= size
            table[c] = i
            c += s
            pos[i] = c - size if c >= size else c
            filled += 1
            if filled == size:
                return table


class Maglev(HashPolicy):
    config: Config

    def make_layout(self, members: list[tuple[str, str, float]]) -> Layout:
        owners = build_table([k for k, _, _ in members], [w for _, _, w in members],
                             self.config.table_size)
        return MaglevTable(tuple(a for _, a, _ in members), owners)


SPEC = PolicySpec(NAME, parse_config, Maglev, weight_aware=True)
register_policy(SPEC)
