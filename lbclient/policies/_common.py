"""Helpers shared by the built-in policies (stdlib only; no grpc, no threads, no I/O).

* ``parse_weights``: the ``weights`` field (per-address weight overrides, for static
  targets whose resolver cannot attach weights).
* ``parse_header``: a metadata header name field, validated as gRPC does (gRFC A76).
* ``header_value``: a header's value(s) from the call metadata (A76: joined with ",").
* ``WeightedSampler``: weighted random choice, O(1) for equal weights, else O(log n).

Threading: everything here is immutable after construction or a pure function, so
pickers may share it across threads.
"""

from __future__ import annotations

import bisect
import itertools
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .._validate import check_number, get_object, get_str, join
from ..balancer.picker import Candidate, PickInfo
from ..balancer.policy import Policy, PolicyContext
from ..errors import ServiceConfigError

Weights = tuple[tuple[str, float], ...]

# gRPC metadata keys: lower-case ASCII letters, digits, "-", "_" and ".".
_HEADER_RE = re.compile(r"^[0-9a-z_.\-]+$")


def parse_weights(obj: Mapping[str, Any], path: str) -> Weights:
    """``{"weights": {"10.0.0.1:50051": 5, ...}}`` -> sorted ((address, weight), ...).
    Weights must be positive finite numbers; addresses non-empty strings."""
    raw = get_object(obj, "weights", path)
    if raw is None:
        return ()
    wpath = join(path, "weights")
    out: list[tuple[str, float]] = []
    for address, value in raw.items():
        if not address.strip():
            raise ServiceConfigError(wpath, "addresses must be non-empty \"host:port\" strings")
        out.append((address, check_number(value, join(wpath, address), minimum=0.0,
                                          exclusive_minimum=True)))
    return tuple(sorted(out))


def weight_of(weights: Mapping[str, float], candidate: Candidate) -> float:
    """The ``weights`` override for the candidate's address, else its own weight."""
    return weights.get(candidate.address, candidate.weight)


def parse_header(obj: Mapping[str, Any], key: str, path: str, *,
                 required: bool = False) -> str | None:
    """A metadata header name (lower-cased). gRFC A76's rules: it must be a valid gRPC
    metadata key and must not be a binary ("-bin") header."""
    value = get_str(obj, key, path, None)
    p = join(path, key)
    if value is None or value == "":
        if required:
            raise ServiceConfigError(p, "is required: the metadata header to read")
        return None
    name = value.lower()
    if not _HEADER_RE.match(name):
        raise ServiceConfigError(p, f"{value!r} is not a valid header name (allowed: "
                                 "letters, digits, '-', '_' and '.')")
    if name.endswith("-bin"):
        raise ServiceConfigError(p, f"{value!r} is a binary header; binary headers "
                                 "cannot be used (gRFC A76)")
    return name


def header_value(info: PickInfo, name: str | None) -> str | None:
    """The value of header ``name`` in the call metadata; several values are joined
    with "," (gRFC A76). None when absent or empty."""
    if not name:
        return None
    found: str | None = None
    for k, v in info.metadata:
        if k == name or k.lower() == name:      # (grpc's keys are lowercase already)
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            found = v if found is None else f"{found},{v}"
    return found or None


class WeightedSampler:
    """Picks an index with probability proportional to its weight.

    Equal weights take the O(1) path; otherwise a bisect over cumulative sums, O(log n).
    Immutable, so concurrent ``index()`` calls are safe (``random.Random`` methods are
    atomic under the GIL).
    """

    __slots__ = ("_cum", "_total", "_n", "_uniform")

    def __init__(self, weights: Sequence[float]) -> None:
        self._n = len(weights)
        self._uniform = len(set(weights)) <= 1
        self._cum = list(itertools.accumulate(weights))
        self._total = self._cum[-1] if self._cum else 0.0

    @property
    def uniform(self) -> bool:
        return self._uniform

    def index(self, rng: random.Random) -> int:
        if self._uniform:
            return min(int(rng.random() * self._n), self._n - 1)
        i = bisect.bisect_right(self._cum, rng.random() * self._total)
        return min(i, self._n - 1)


def untried_choice(candidates: Sequence[Candidate], info: PickInfo,
                   rng: random.Random, weights: Sequence[float] | None = None) -> Candidate:
    """A (weighted) random choice among the candidates not in ``info.exclude``, or among
    all of them if every one was tried. O(n): for retries only."""
    idx = [i for i, c in enumerate(candidates) if c.address not in info.exclude]
    if not idx:
        idx = list(range(len(candidates)))
    if weights is None:
        return candidates[idx[min(int(rng.random() * len(idx)), len(idx) - 1)]]
    sampler = WeightedSampler([weights[i] for i in idx])
    return candidates[idx[sampler.index(rng)]]


class WeightedPolicy(Policy):
    """Base of the policies whose config has a per-address ``weights`` map: it overrides
    discovery weights through ``endpoint_weight``. Subclasses add ``build_picker``."""

    def __init__(self, config: Any, ctx: PolicyContext) -> None:
        super().__init__(config, ctx)
        self._weights = dict(config.weights)

    def endpoint_weight(self, candidate: Candidate) -> float:
        return weight_of(self._weights, candidate)
