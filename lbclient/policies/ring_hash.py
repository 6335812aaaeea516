"""``ring_hash``: consistent hashing on a ring (gRFC A42, with A76's request header).
Also registered as gRPC's older name, ``ring_hash_experimental``.

Config (gRPC's fields and defaults, plus Envoy's bounded load and lbclient's weights)::

    {"minRingSize": 4096,                  # 1 .. 8,388,608 (8M); gRPC's default is 1024
     "maxRingSize": 4096,                  # 1 .. 8M, and >= minRingSize
     "requestHashHeader": "x-user-id",     # A76: the key; not a "-bin" header
     "hashBalanceFactor": 150,             # optional, >= 100 (Envoy's bounded load)
     "weights": {"host:port": 2}}          # optional per-address weights

The ring is built as gRPC and Envoy build it: endpoints sorted by hash key (the
``hash_key`` attribute, else the address), each weight normalized by the total, the
scale ``min(ceil(min_weight * minRingSize) / min_weight, maxRingSize)``, and endpoint
``e`` placed at ``XXH64("<key>_<i>")`` for its share of ``scale`` points (cumulative
rounding). A call's key is ``XXH64`` of the header value; it goes to the first point at
or after it, wrapping around. So the ring, and which endpoint a key goes to, is the same
in every process and for every client given the same endpoints (see ``_hashing``).

Key rules, ineligible endpoints and bounded load: see ``_hash_base``. Keys of an
ineligible endpoint go to the next eligible endpoint on the ring; no other key moves.

Two deliberate differences from gRPC, both for steadier key placement:

* the default ``minRingSize`` is 4096, not 1024: at 1024 a 10-endpoint ring has about
  100 points per endpoint and the busiest endpoint takes about 1.23x the mean share of
  keys; at 4096 about 1.07x. Set ``"minRingSize": 1024`` to lay out gRPC's exact ring.
* the ring's scale (points per unit of weight) is kept across endpoint-list updates while
  the ring stays between ``minRingSize / 2`` and ``maxRingSize`` points and every
  endpoint keeps at least half a point's worth of weight: an endpoint
  removed by discovery then takes only its own points away, so only its keys move
  (about 1/N), instead of every share being re-spread (gRPC rebuilds at a new scale,
  which also moves a few percent of everyone else's keys). Outside those bounds the
  scale is recomputed by gRPC's rule.

Picks are O(log ring); a ring is rebuilt only when the endpoint list or weights change
(point hashes cached per hash key; a change of a few members edits the sorted points in
place). An eligibility change only changes which members a pick may stop at (gRFC A42):
the ring is not rebuilt.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._validate import expect_object, get_int, join, reject_unknown
from ..balancer.policy import PolicyContext, PolicySpec, register_policy
from ..errors import ServiceConfigError
from ._common import Weights, parse_header, parse_weights
from ._hash_base import HashPolicy, Layout, parse_balance_factor
from ._hashing import xxhash64

NAME = "ring_hash"
GRPC_NAME = "ring_hash_experimental"
DEFAULT_MIN_RING_SIZE = 4096  # gRPC: 1024 (see the module docstring)
DEFAULT_MAX_RING_SIZE = 4096
RING_SIZE_UPPER_BOUND = 8 * 1024 * 1024


@dataclass(frozen=True)
class Config:
    min_ring_size: int = DEFAULT_MIN_RING_SIZE
    max_ring_size: int = DEFAULT_MAX_RING_SIZE
    request_hash_header: str | None = None
    hash_balance_factor: int | None = None
    weights: Weights = ()


def parse_config(raw: Any, path: str) -> Config:
    obj = expect_object(raw if raw is not None else {}, path)
    reject_unknown(obj, path, {"minRingSize", "maxRingSize", "requestHashHeader",
                               "hashBalanceFactor", "weights"})
    lo = get_int(obj, "minRingSize", path, DEFAULT_MIN_RING_SIZE, minimum=1,
                 maximum=RING_SIZE_UPPER_BOUND)
    hi = get_int(obj, "maxRingSize", path, DEFAULT_MAX_RING_SIZE, minimum=1,
                 maximum=RING_SIZE_UPPER_BOUND)
    if lo > hi:
        raise ServiceConfigError(join(path, "minRingSize"),
                                 f"must not exceed maxRingSize ({lo} > {hi})")
    return Config(lo, hi, parse_header(obj, "requestHashHeader", path),
                  parse_balance_factor(obj, path), parse_weights(obj, path))


class Ring:
    """Sorted point hashes and, for each point, the index of its member."""

    __slots__ = ("members", "owners", "hashes")

    def __init__(self, members: tuple[str, ...], hashes: list[int], owners: list[int]) -> None:
        self.members = members
        self.hashes = hashes
        self.owners = owners

    def slot(self, h: int) -> int:
        i = bisect.bisect_left(self.hashes, h)
        return 0 if i == len(self.hashes) else i

    def __len__(self) -> int:
        return len(self.hashes)


def point_counts(weights: Sequence[float], min_size: int, max_size: int) -> list[int]:
    """Points per member (in the given order) by gRPC's/Envoy's rule: each member's
    share of ``scale`` points, rounded cumulatively (the running target rounded up, never
    below the points already handed out)."""
    total = sum(weights)
    norm = [w / total for w in weights]
    low = min(norm)
    scale = min(math.ceil(low * min_size) / low, float(max_size))
    targets = itertools.accumulate([scale * nw for nw in norm])
    reach = list(itertools.accumulate(map(math.ceil, targets), max, initial=0))
    return list(map(operator.sub, reach[1:], reach[:-1]))


class RingHash(HashPolicy):
    """Point hashes are cached per hash key, and the current ring's points are kept
    sorted, so a new ring that moves a few members' points (an endpoint added or removed
    at an unchanged scale) is edited in place: O(changed points x log ring) plus two
    list passes, instead of hashing and sorting every point again."""

    config: Config

    def __init__(self, config: Config, ctx: PolicyContext) -> None:
        super().__init__(config, ctx)
        self._points: dict[str, list[int]] = {}  # hash key -> XXH64("<key>_<i>"), i = 0..
        self._per_weight: float | None = None    # sticky scale: points per unit of weight
        # The current ring: points per member address, and (hash, key, address) sorted.
        self._ring_counts: dict[str, tuple[str, int, float]] = {}   # key, points, weight
        self._sorted: list[tuple[int, str, str]] = []
        self._rescaled = False       # the last _counts computed a new scale

    def _point_hashes(self, key: str, count: int) -> list[int]:
        cached = self._points.get(key)
        if cached is None:
            cached = self._points[key] = []
        for i in range(len(cached), count):
            cached.append(xxhash64(f"{key}_{i}"))
        return cached

    def _counts(self, members: list[tuple[str, str, float]]) -> list[int]:
        """Points per member: with the previous scale while the ring stays within
        [minRingSize / 2, maxRingSize] points and every member gets a point (members
        already on the ring with the same key and weight keep their count, new ones get
        ``round(scale x weight)``), else by gRPC's rule (a new scale)."""
        weights = [w for _, _, w in members]
        total = sum(weights)
        per = self._per_weight
        cfg = self.config
        if per is not None and weights and per * min(weights) >= 0.5 and \
                cfg.min_ring_size / 2 <= per * total <= cfg.max_ring_size:
            old = self._ring_counts
            counts = []
            for key, a, w in members:
                known = old.get(a)
                counts.append(known[1] if known is not None and known[0] == key and
                              known[2] == w else round(per * w))
            if sum(counts) <= cfg.max_ring_size:
                return counts
        counts = point_counts(weights, cfg.min_ring_size, cfg.max_ring_size)
        self._per_weight = sum(counts) / total
        self._rescaled = True
        return counts

    def make_layout(self, members: list[tuple[str, str, float]]) -> Layout:
        self._rescaled = False
        counts = self._counts(members)
        keys, addresses, weights = zip(*members, strict=True) if members else ((), (), ())
        new = dict(zip(addresses, zip(keys, counts, weights, strict=True), strict=True))
        old, points = self._ring_counts, self._sorted
        diff = new.items() ^ old.items() if points and not self._rescaled else None
        if diff is not None and 4 * len(diff) < len(new):
            for a in {a for a, _ in diff}:
                before, after = old.get(a), new.get(a)
                if before is not None and (after is None or after[0] != before[0]):
                    self._edit(points, before[0], a, before[1], 0)
                    before = None
                key = (after or before or ("", 0))[0]
                self._edit(points, key, a, before[1] if before else 0,
                           after[1] if after else 0)
        else:
            points = []
            hashes = self._point_hashes
            for key, a, c in zip(itertools.compress(keys, counts),
                                 itertools.compress(addresses, counts),
                                 itertools.compress(counts, counts), strict=True):
                points += [(h, key, a) for h in hashes(key, c)[:c]]
            points.sort()
        self._ring_counts, self._sorted = new, points
        if len(self._points) > len(members):
            present = set(keys)
            for key in [k for k in self._points if k not in present]:
                del self._points[key]
        index = dict(zip(addresses, range(len(addresses)), strict=True))
        return Ring(tuple(addresses), [h for h, _, _ in points],
                    [index[a] for _, _, a in points])

    def _edit(self, points: list[tuple[int, str, str]], key: str, address: str,
              before: int, after: int) -> None:
        """Move the member's point count from ``before`` to ``after`` in the sorted
        points."""
        if after == before:
            return
        hashes = self._point_hashes(key, max(before, after))
        if after < before:
            for h in hashes[after:before]:
                i = bisect.bisect_left(points, (h, key, address))
                del points[i]
        else:
            for h in hashes[before:after]:
                bisect.insort(points, (h, key, address))


SPEC = PolicySpec(NAME, parse_config, RingHash, weight_aware=True)
register_policy(SPEC, GRPC_NAME)
