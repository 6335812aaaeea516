"""``deterministic_subsetting`` (lbclient; the Google SRE book, ch. 20 "Load Balancing in
the Datacenter", and Finagle's deterministic aperture): a fleet of clients, each told its
index, whose subsets cover every backend equally.

Config::

    {"deterministic_subsetting": {
        "clientIndex": 7,                       # required: this client's index, >= 0
        "clientCount": 100,                     # optional: the fleet's size (> clientIndex)
        "subsetSize": 10,                       # required: endpoints kept per client, >= 1
        "childPolicy": [{"round_robin": {}}]}}  # required: balances among the subset

The selection is a pure function of (the set of addresses, ``clientIndex``,
``subsetSize``, ``clientCount``) — :func:`deterministic_subset` — so every client of a
fleet computes its part of one plan without talking to the others:

1. sort the ``N`` distinct addresses;
2. think of an endless stream made of *rounds*: round ``r`` is every address once, in
   the order of ``xxhash64(address, seed=r)`` (ties by address): a shuffle seeded by the
   round, the same in every process and Python version;
3. client ``i`` takes the ``subsetSize`` addresses at stream positions
   ``i*subsetSize ...``; that is round ``i*subsetSize // N`` from offset
   ``i*subsetSize % N``.

When ``N`` is a multiple of ``subsetSize`` this is exactly the SRE book's algorithm:
``subset_count = N / subsetSize``, round ``i // subset_count``, subset
``i % subset_count`` of that round's shuffle. When it is not, the book leaves
``N mod subsetSize`` backends out of every round (they get fewer clients); here a subset
runs on into the next round instead, and that round starts with the first addresses of
its shuffle that the subset does not hold yet, so each round still covers every backend
exactly once and no subset holds an address twice. (With ``subsetSize > (N+1)/2`` the
same stream chooses the ``N - subsetSize`` endpoints to leave out.) So across clients
``0 … K-1`` every backend gets ``floor(K*s/N)`` or ``ceil(K*s/N)`` connections — the
best any assignment of whole connections can do. Example: 100 clients x 10 over 300
backends is 1,000 connections, 3.33 per backend: 100 backends get 4 and 200 get 3
(max/mean 1.2, which no scheme can beat: a max/mean of 1.1 would need 3.67), where
random subsetting gives about 2.7 (tests/test_subsetting_fleet.py).

``clientCount``, when given, is checked (``clientIndex < clientCount``) and guarantees
coverage: if ``clientCount x subsetSize < N`` some backends would get no client at all,
so each subset grows to ``ceil(N / clientCount)`` (Finagle's rule that an aperture covers
at least ``1/clientCount`` of the ring). Without it the subsets are exactly
``subsetSize`` (or all endpoints, when there are fewer).

Churn: unlike random subsetting, a change in ``N`` shifts every client's offset, so
most subsets change when the endpoint set grows or shrinks (the SRE book's trade-off; it
is the price of the equal spread). Use it for fleets whose backend set changes rarely,
``random_subsetting`` otherwise.

Where the index comes from: the config only (a resolver cannot pass channel-level
attributes to policies). Fill it per client with
:func:`lbclient.policies.subsetting.with_client_index`; ``lbclient simulate`` gives client
``i`` of ``"clients": K`` index ``i`` and count ``K``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .._validate import expect_object, get_int, join, reject_unknown
from ..balancer.policy import LbChoice, PolicyContext, PolicySpec, register_policy
from ..endpoint import Endpoint
from ..errors import ServiceConfigError
from ._hashing import xxhash64
from .subsetting import UINT32_MAX, SubsettingPolicy, parse_child, parse_subset_size

NAME = "deterministic_subsetting"


@dataclass(frozen=True)
class Config:
    client_index: int
    subset_size: int
    child: LbChoice
    client_count: int | None = None


def parse_config(raw: Any, path: str) -> Config:
    obj = expect_object(raw if raw is not None else {}, path)
    reject_unknown(obj, path, {"clientIndex", "clientCount", "subsetSize", "childPolicy"})
    if obj.get("clientIndex") is None:
        raise ServiceConfigError(join(path, "clientIndex"),
                                 "is required: this client's index in the fleet (0, 1, 2, "
                                 "...); lbclient.policies.subsetting.with_client_index() "
                                 "fills it in")
    index = get_int(obj, "clientIndex", path, 0, minimum=0, maximum=UINT32_MAX)
    count = None
    if obj.get("clientCount") is not None:
        count = get_int(obj, "clientCount", path, 1, minimum=1, maximum=UINT32_MAX)
        if index >= count:
            raise ServiceConfigError(join(path, "clientIndex"),
                                     f"must be less than clientCount ({count}), got {index}")
    size = parse_subset_size(obj, path)
    return Config(index, size, parse_child(obj, path), count)


def effective_size(n: int, subset_size: int, client_count: int | None) -> int:
    """The subset size used with ``n`` endpoints: ``subset_size``, grown to
    ``ceil(n / client_count)`` when a count is given, at most ``n``."""
    size = subset_size
    if client_count is not None:
        size = max(size, -(-n // client_count))
    return min(size, n)


def round_order(addresses: Iterable[str], rnd: int) -> list[str]:
    """Round ``rnd``'s shuffle: the addresses ordered by ``xxhash64(address, rnd)``."""
    return sorted(set(addresses), key=lambda a: (xxhash64(a, rnd), a))


def _effective(rnd: int, n: int, size: int, order: Callable[[int], list[str]]) -> list[str]:
    """Round ``rnd`` as the stream uses it: its shuffle, except that when the round
    begins inside a subset (one that took the last ``t`` addresses of round ``rnd-1``),
    the first ``size - t`` addresses are the first ones of the shuffle that the subset
    does not have yet (the ones skipped follow them). Only the first ``size`` places
    can move, so with ``n >= 2*size - 1`` a round's last ``size - 1`` places are its
    shuffle's: a round's order depends on two shuffles only, and a subset never meets
    an address twice."""
    base = order(rnd)
    t = (rnd * n) % size
    if rnd == 0 or t == 0:
        return base
    have = set(order(rnd - 1)[n - t:])
    head: list[str] = []
    for a in base:
        if a not in have:
            head.append(a)
            if len(head) == size - t:
                break
    moved = set(head)
    return head + [a for a in base if a not in moved]


def _stream(n: int, index: int, size: int, order: Callable[[int], list[str]]) -> list[str]:
    """Client ``index``'s ``size`` places of the stream (``0 < size <= n``)."""
    rnd, offset = divmod(index * size, n)
    out = _effective(rnd, n, size, order)[offset:offset + size]
    if len(out) < size:            # runs on into the next round
        have = set(out)
        for a in _effective(rnd + 1, n, size, order):
            if len(out) == size:
                break
            if a not in have:      # always, when n >= 2*size - 1 (see _effective)
                out.append(a)
                have.add(a)
    return out


def _take(n: int, index: int, size: int, order: Callable[[int], list[str]]) -> list[str]:
    if n == 0 or size == 0:
        return []
    if size >= n:
        return list(order(index))
    if 2 * size - 1 > n:
        # More than half of the endpoints: choose the ones to leave out instead (fewer
        # than half, where the stream is exact), so exclusions, hence connections, are
        # spread as evenly.
        left_out = set(_stream(n, index, n - size, order))
        rnd = index * (n - size) // n
        return [a for a in order(rnd) if a not in left_out]
    return _stream(n, index, size, order)


def deterministic_subset(addresses: Iterable[str], client_index: int, subset_size: int,
                         client_count: int | None = None) -> list[str]:
    """The pure function: client ``client_index``'s subset of ``addresses`` (distinct
    ones; order and repeats of the input do not matter), in its round's order."""
    if client_index < 0 or subset_size < 1 or (client_count is not None and client_count < 1):
        raise ValueError("client_index must be >= 0, subset_size >= 1 and client_count "
                         f"(when given) >= 1; got {client_index}, {subset_size}, "
                         f"{client_count}")
    distinct = sorted(set(addresses))
    size = effective_size(len(distinct), subset_size, client_count)
    orders: dict[int, list[str]] = {}

    def order(rnd: int) -> list[str]:
        if rnd not in orders:
            orders[rnd] = round_order(distinct, rnd)
        return orders[rnd]

    return _take(len(distinct), client_index, size, order)


class _Round:
    """One round's shuffle over a set of addresses, kept sorted by (hash, address) and
    edited in place when a few addresses come or go (bisect: O(log n) to find, a C
    ``memmove`` to insert or delete)."""

    __slots__ = ("rnd", "hashes", "pairs", "order")

    def __init__(self, rnd: int, addresses: Iterable[str], known: dict[str, int]) -> None:
        self.rnd = rnd
        self.hashes = {a: known[a] if a in known else xxhash64(a, rnd) for a in addresses}
        self.pairs = sorted(zip(self.hashes.values(), self.hashes.keys(), strict=True))
        self.order = [a for _, a in self.pairs]

    def edit(self, added: Iterable[str], removed: Iterable[str]) -> None:
        hashes, pairs, order = self.hashes, self.pairs, self.order
        for a in removed:
            pair = (hashes.pop(a), a)
            i = bisect.bisect_left(pairs, pair)
            del pairs[i]
            del order[i]
        for a in added:
            pair = (xxhash64(a, self.rnd), a)
            hashes[a] = pair[0]
            i = bisect.bisect_left(pairs, pair)
            pairs.insert(i, pair)
            order.insert(i, a)


class DeterministicSubsetting(SubsettingPolicy):
    """The rounds' shuffles are cached across resolver updates: an unchanged address set
    reuses the last subset, and a few addresses coming or going edit the cached rounds
    in place (only the new addresses are hashed)."""

    config: Config

    def __init__(self, config: Config, ctx: PolicyContext) -> None:
        super().__init__(config, ctx)
        self._addresses: frozenset[str] = frozenset()
        self._rounds: dict[int, _Round] = {}
        self._picked: list[str] = []

    def choose(self, endpoints: list[Endpoint]) -> list[Endpoint]:
        cfg = self.config
        by_address = {e.address: e for e in endpoints}
        addresses = frozenset(by_address)
        if addresses == self._addresses and self._rounds:
            return [by_address[a] for a in self._picked]
        added, removed = addresses - self._addresses, self._addresses - addresses
        edit = len(added) + len(removed) <= max(8, len(addresses) // 16)
        old, self._rounds = self._rounds, {}
        self._addresses = addresses
        n = len(addresses)

        def order(rnd: int) -> list[str]:
            r = self._rounds.get(rnd)
            if r is None:
                r = old.get(rnd)
                if r is not None and edit:
                    r.edit(added, removed)
                else:
                    r = _Round(rnd, addresses, r.hashes if r is not None else {})
                self._rounds[rnd] = r
            return r.order

        size = effective_size(n, cfg.subset_size, cfg.client_count)
        self._picked = _take(n, cfg.client_index, size, order)
        return [by_address[a] for a in self._picked]


SPEC = PolicySpec(NAME, parse_config, DeterministicSubsetting)
register_policy(SPEC)
