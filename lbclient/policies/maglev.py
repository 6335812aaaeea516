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
them over all the others; gRFC A42's rule, so an eligibility change never refills the
table). The table is refilled only when the endpoint list or weights change. Filling a
65,537-entry table is sequential (about ``M ln M`` probes) and takes on the order of
50-100 ms in pure Python plus two XXH64 per new endpoint (benchmarks/bench_pickers.py):
the first table of a channel is filled at once, under the balancer's lock; later ones
are filled in slices of a few milliseconds on the channel's scheduler while pickers keep
the previous table (endpoints that left are skipped at once; new ones get their keys
when the new table is published, a fraction of a second later), with each endpoint's
permutation hashes cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._validate import expect_object, get_int, join, reject_unknown
from ..balancer.policy import PolicyContext, PolicySpec, register_policy
from ..errors import ServiceConfigError
from ._common import Weights, parse_header, parse_weights
from ._hash_base import HashPolicy, Layout, LayoutJob, parse_balance_factor
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


def permutation(key: str) -> tuple[int, int]:
    """The two hashes a member's permutation comes from: ``XXH64(key, 0)`` (offset)
    and ``XXH64(key, 1)`` (skip), before reduction modulo the table size."""
    return xxhash64(key, 0), xxhash64(key, 1)


class TableFill:
    """Maglev's population, resumable: members take turns (a member takes one each time
    its accumulated weight reaches the largest weight), each claiming the next free entry
    of its permutation, until the table is full. :meth:`step` runs for a bounded number
    of probes, so a large table can be filled in slices."""

    __slots__ = ("size", "table", "pos", "skip", "weights", "top", "credit", "equal",
                 "filled", "i")

    def __init__(self, hashes: Sequence[tuple[int, int]], weights: Sequence[float],
                 size: int) -> None:
        self.size = size
        self.table = [-1] * size
        self.pos = [h0 % size for h0, _ in hashes]
        self.skip = [h1 % (size - 1) + 1 for _, h1 in hashes]
        self.weights = list(weights)
        self.top = max(weights)
        self.equal = all(w == self.top for w in weights)
        self.credit = [0.0] * len(weights)
        self.filled = 0
        self.i = 0          # the member whose turn is next

    def step(self, probes: int = 1 << 62) -> list[int] | None:
        """Fill for about ``probes`` probes; the table once it is full, else None."""
        table, pos, skip, size = self.table, self.pos, self.skip, self.size
        n = len(pos)
        i, filled = self.i, self.filled
        # Claims this slice: the expected probes per claim are size / free entries.
        claims = max(1, probes * (size - filled) // size)
        last = min(size, filled + claims)
        if self.equal:
            while filled < last:
                c, s = pos[i], skip[i]
                while table[c] >= 0:
                    c += s
                    if c >= size:
                        c -= size
                table[c] = i
                c += s
                pos[i] = c - size if c >= size else c
                filled += 1
                i += 1
                if i == n:
                    i = 0
        else:
            weights, credit, top = self.weights, self.credit, self.top
            while filled < last:
                credit[i] += weights[i]
                if credit[i] >= top:
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
                i += 1
                if i == n:
                    i = 0
        self.i, self.filled = i, filled
        return table if filled == size else None


def build_table(keys: list[str], weights: list[float], size: int) -> list[int]:
    """Fill a ``size``-entry table (``size`` prime) from the members' permutations."""
    table = TableFill([permutation(k) for k in keys], weights, size).step()
    assert table is not None
    return table


class _FillJob:
    """A :class:`TableFill` as a ``LayoutJob``: slices of about 20,000 probes (a few
    milliseconds), then the finished table."""

    __slots__ = ("_fill", "_members")

    SLICE = 20_000

    def __init__(self, fill: TableFill, members: tuple[str, ...]) -> None:
        self._fill = fill
        self._members = members

    def step(self) -> Layout | None:
        owners = self._fill.step(self.SLICE)
        return None if owners is None else MaglevTable(self._members, owners)


class Maglev(HashPolicy):
    """Permutation hashes are cached per hash key, so only new endpoints are hashed.
    Once a table exists, a new one (after the endpoint list changed) is filled in slices
    on the channel's scheduler while pickers keep the old one (see ``HashPolicy``)."""

    config: Config

    def __init__(self, config: Config, ctx: PolicyContext) -> None:
        super().__init__(config, ctx)
        self._perms: dict[str, tuple[int, int]] = {}

    def _fill(self, members: list[tuple[str, str, float]]) -> TableFill:
        perms = self._perms
        hashes = []
        for key, _, _ in members:
            h = perms.get(key)
            if h is None:
                h = perms[key] = permutation(key)
            hashes.append(h)
        if len(perms) > 2 * len(members) + 64:   # forget departed keys
            keys = {key for key, _, _ in members}
            self._perms = {k: v for k, v in perms.items() if k in keys}
        return TableFill(hashes, [w for _, _, w in members], self.config.table_size)

    def make_layout(self, members: list[tuple[str, str, float]]) -> Layout:
        owners = self._fill(members).step()
        assert owners is not None
        return MaglevTable(tuple(a for _, a, _ in members), owners)

    def start_layout(self, members: list[tuple[str, str, float]]) -> LayoutJob | None:
        return _FillJob(self._fill(members), tuple(a for _, a, _ in members))


SPEC = PolicySpec(NAME, parse_config, Maglev, weight_aware=True)
register_policy(SPEC)
