"""Circuit breakers (Envoy's; gRFC A32's ``maxRequests``): a picker wrapper the balancer
puts around the policy's picker when the ``"lbclient"`` block sets a limit.

* ``maxRequests``: attempts in flight on the whole channel. A pick past it fails at once
  (even with ``wait_for_ready``) with UNAVAILABLE "circuit breaker: N requests in flight".
* ``maxConcurrentRequests``: attempts in flight on one endpoint. A full endpoint is
  skipped: the policy is asked again with it excluded (so every policy, hashing and
  sessions included, falls over to one that has room); when every endpoint it offers is
  full, the pick fails at once with UNAVAILABLE saying so.

Counts are read at pick time and the attempt begins right after, so two calls racing for
the last slot may both get it (as with Envoy's breakers: a limit, not a lock). Channel
attempts are counted by every endpoint's ``EndpointStats`` into one shared token list
(appends and pops: atomic, no lock). Rejections and skips are counted for
``endpoints()`` and metrics.
"""

from __future__ import annotations

import itertools

from .picker import Picker, PickError, PickInfo, PickResult


class BreakerState:
    """The channel's breaker counters (shared by every breaker picker of a balancer)."""

    __slots__ = ("in_flight", "rejections")

    def __init__(self) -> None:
        self.in_flight: list[None] = []       # one token per attempt in flight
        self.rejections = itertools.count()   # picks refused by maxRequests

    @property
    def rejected(self) -> int:
        return int(repr(self.rejections)[6:-1])


class BreakerPicker:
    __slots__ = ("_inner", "_state", "_max_requests", "_max_concurrent", "_n")

    def __init__(self, inner: Picker, state: BreakerState, max_requests: int | None,
                 max_concurrent: int | None, candidates: int) -> None:
        self._inner = inner
        self._state = state
        self._max_requests = max_requests
        self._max_concurrent = max_concurrent
        self._n = candidates

    def pick(self, info: PickInfo) -> PickResult:
        limit = self._max_requests
        if limit is not None and len(self._state.in_flight) >= limit:
            next(self._state.rejections)
            raise PickError(f"circuit breaker: {len(self._state.in_flight)} requests in "
                            f"flight (maxRequests {limit})", fail_fast=True)
        result = self._inner.pick(info)
        full = self._max_concurrent
        if full is None:
            return result
        exclude = info.exclude
        for _ in range(self._n):
            stats = result.candidate.stats
            # a pick the policy counted itself already holds its slot
            if stats.in_flight - (1 if result.counted else 0) < full:
                return result
            next(stats.overflows)
            if result.counted:
                stats.discard()
            exclude = exclude | {result.candidate.address}
            result = self._inner.pick(PickInfo(info.method, info.metadata, exclude))
            if result.candidate.address in exclude:
                break         # the policy has nothing else to offer
        if result.counted:
            result.candidate.stats.discard()
        raise PickError(f"circuit breaker: every endpoint has maxConcurrentRequests {full} "
                        "requests in flight", fail_fast=True)
