"""Retry budgets: Envoy's concurrency budget and Finagle's rate budget, as retry gates
(:class:`~lbclient._core.throttle.RetryGate`) beside gRFC A6's token bucket.

Both limit the retries (and hedges past the first) of a whole channel, so a fleet-wide
outage can't multiply the load by ``maxAttempts``, while a partial one is still retried
through:

* :class:`ConcurrencyRetryBudget` - Envoy's ``retry_budget`` circuit-breaker threshold:
  at most ``max(minRetryConcurrency, budgetPercent / 100 * active)`` retries in flight,
  ``active`` being the attempts in flight on the channel (Envoy: active plus pending
  requests). As in Envoy, a retry counts from the moment it is granted - its backoff
  included - until its attempt ends (or the call commits or ends). A limit on
  concurrency, not on rate: a storm of fast failures from few callers is not slowed much.
* :class:`RateRetryBudget` - Finagle's (and Linkerd's) ``RetryBudget``: every call
  deposits ``percentCanRetry`` retries, which expire after about ``ttl`` (ten slots of
  ``ttl / 10``); a retry withdraws one; ``minRetriesPerSec * ttl`` retries are always
  available on top (the reserve, for new and quiet clients). Over any ``ttl``, retries <=
  reserve + percentCanRetry * calls.

Per-call cost (every call of a method with a retry or hedging policy): ``record_call``
is a no-op for the concurrency budget and a clock read plus one list increment, without a
lock, for the rate budget (a deposit racing another can be lost: retries marginally
rarer, never more). Everything else takes the budget's lock and runs only when an
attempt failed or a hedge is due. Time is an argument (``clock``), as is the channel's
count of attempts in flight (``active``).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable

from ..health.options import ConcurrencyBudgetConfig, RateBudgetConfig, RetryBudgetConfig
from ..method_config import RetryThrottling
from .throttle import HELD, CountedGate, RetryCounts, RetryGate, RetryHold, RetryThrottle

_SLOTS = 10            # the rate budget's window: ten slots of ttl / 10 (as Finagle's)
_EPSILON = 1e-9


class ConcurrencyRetryBudget(CountedGate):
    """Envoy's ``retry_budget`` (``budgetPercent``, ``minRetryConcurrency``)."""

    __slots__ = ("config", "_active", "_clock", "_refresh", "_seen", "_lock", "_held",
                 "counts")

    def __init__(self, config: ConcurrencyBudgetConfig, active: Callable[[], int], *,
                 clock: Callable[[], float] = time.monotonic,
                 refresh: float = 0.001, counts: RetryCounts | None = None) -> None:
        self.config = config
        self._active = active           # attempts in flight on the channel
        self._clock = clock
        self._refresh = refresh         # read ``active`` at most this often (O(endpoints))
        self._seen = (float("-inf"), 0)
        self._lock = threading.Lock()
        # The retries in flight; a dropped call's hold leaves with it (see RetryHold).
        self._held: weakref.WeakSet[RetryHold] = weakref.WeakSet()
        self.counts = counts if counts is not None else RetryCounts()

    def limit(self) -> int:
        """Retries allowed in flight now (Envoy truncates the percentage, as here)."""
        at, active = self._seen
        now = self._clock()
        if now - at >= self._refresh:
            active = self._active()
            self._seen = (now, active)
        c = self.config
        return max(c.min_retry_concurrency, int(c.budget_percent / 100.0 * active))

    @property
    def in_flight(self) -> int:
        """Retries granted and not ended yet."""
        return len(self._held)

    def record_call(self) -> None:
        """Calls are counted by the channel (its attempts in flight), not here."""

    def record_success(self) -> None:
        """Outcomes don't move a concurrency budget."""

    def record_failure(self) -> bool:
        return True

    def allows_retry(self) -> bool:
        return len(self._held) < self.limit()

    def begin_retry(self) -> RetryHold | None:
        limit = self.limit()          # outside the lock: it may read the balancer
        with self._lock:
            if len(self._held) >= limit:
                self.counts.refused += 1
                return None
            hold = RetryHold()
            self._held.add(hold)
            self.counts.granted += 1
            return hold

    def end_retry(self, hold: RetryHold) -> None:
        with self._lock:
            self._held.discard(hold)

    def __repr__(self) -> str:
        return (f"ConcurrencyRetryBudget({self.in_flight} in flight, limit {self.limit()}; "
                f"budgetPercent={self.config.budget_percent:g}, "
                f"minRetryConcurrency={self.config.min_retry_concurrency})")


class RateRetryBudget(CountedGate):
    """Finagle's ``RetryBudget`` (``ttl``, ``minRetriesPerSec``, ``percentCanRetry``)."""

    __slots__ = ("config", "_clock", "_rate", "_index", "_calls", "_retries", "_reserve",
                 "_ratio", "_lock", "counts")

    def __init__(self, config: RateBudgetConfig, *,
                 clock: Callable[[], float] = time.monotonic,
                 counts: RetryCounts | None = None) -> None:
        self.config = config
        self._clock = clock
        self._rate = _SLOTS / config.ttl                # slot numbers per second
        self._index = int(clock() * self._rate)         # the current slot's number
        self._calls = [0] * _SLOTS                      # deposits, per slot
        self._retries = [0] * _SLOTS                    # withdrawals, per slot
        self._reserve = config.min_retries_per_sec * config.ttl
        self._ratio = config.percent_can_retry
        self._lock = threading.Lock()
        self.counts = counts if counts is not None else RetryCounts()

    def _advance(self, index: int) -> None:
        """Move to slot ``index``, emptying the slots that expired on the way."""
        with self._lock:
            old = self._index
            if index <= old:
                return
            for n in range(old + 1, min(index, old + _SLOTS) + 1):
                self._calls[n % _SLOTS] = 0
                self._retries[n % _SLOTS] = 0
            self._index = index      # after emptying: a deposit that sees it counts

    def _balance_locked(self) -> float:
        return self._reserve + self._ratio * sum(self._calls) - sum(self._retries)

    @property
    def balance(self) -> float:
        """Retries that could be made now."""
        self._advance(int(self._clock() * self._rate))
        with self._lock:
            return self._balance_locked()

    def record_call(self) -> None:
        """A deposit (no lock: see the module docstring)."""
        index = int(self._clock() * self._rate)
        if index != self._index:
            self._advance(index)
        self._calls[index % _SLOTS] += 1

    def record_success(self) -> None:
        """Finagle deposits per call, not per success."""

    def record_failure(self) -> bool:
        return True

    def allows_retry(self) -> bool:
        return self.balance >= 1.0 - _EPSILON

    def begin_retry(self) -> RetryHold | None:
        self._advance(int(self._clock() * self._rate))
        with self._lock:
            if self._balance_locked() < 1.0 - _EPSILON:
                self.counts.refused += 1
                return None
            self._retries[self._index % _SLOTS] += 1
            self.counts.granted += 1
        return HELD

    def end_retry(self, hold: RetryHold) -> None:
        """A withdrawal is not given back."""

    def __repr__(self) -> str:
        c = self.config
        return (f"RateRetryBudget(balance {self.balance:g}; ttl={c.ttl:g}s, "
                f"minRetriesPerSec={c.min_retries_per_sec}, "
                f"percentCanRetry={c.percent_can_retry:g})")


def retry_gate(throttling: RetryThrottling | None, budget: RetryBudgetConfig | None,
               previous: RetryGate | None, active: Callable[[], int],
               counts: RetryCounts | None = None) -> RetryGate | None:
    """The channel's retry gate for a (new) service config: the ``"lbclient"`` block's
    ``retryBudget`` when there is one - it wins over ``retryThrottling``, which grpcio
    (ignoring the block) goes on using - else the A6 bucket of ``retryThrottling``, else
    None. A gate whose parameters did not change is kept as it is (an A6 bucket with new
    ones keeps its fill ratio); a new gate counts its decisions in ``counts`` (default:
    the previous gate's :class:`RetryCounts`). ``active()``: attempts in flight on the
    channel."""
    if counts is None and previous is not None:
        counts = previous.counts
    if isinstance(budget, ConcurrencyBudgetConfig):
        if isinstance(previous, ConcurrencyRetryBudget) and previous.config == budget:
            return previous
        return ConcurrencyRetryBudget(budget, active, counts=counts)
    if isinstance(budget, RateBudgetConfig):
        if isinstance(previous, RateRetryBudget) and previous.config == budget:
            return previous
        return RateRetryBudget(budget, counts=counts)
    if throttling is not None:
        return RetryThrottle.from_config(
            throttling, previous if isinstance(previous, RetryThrottle) else None, counts)
    return None
