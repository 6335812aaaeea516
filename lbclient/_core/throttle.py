"""gRFC A6 retry throttling: one token bucket per channel; and :class:`RetryGate`, what
retry and hedging plans ask before sending another attempt (this bucket, or one of the
retry budgets of :mod:`lbclient._core.budget`).

Contract (gRFC A6 "Throttling Retry Attempts and Hedged RPCs"): the bucket starts full at
``maxTokens``; every failed attempt (a retryable / non-fatal status code, or a pushback
that says "don't retry") takes one token, every successful attempt gives back
``tokenRatio``; tokens stay within ``[0, maxTokens]``. While the count is at or below
``maxTokens / 2`` no retry and no further hedge is sent (the first attempt always is).

Tokens are kept in thousandths as integers, as gRPC core does, so ``tokenRatio``'s three
decimal places add up exactly. Threading: failures take a small lock; successes (the
per-call path) do not (see :meth:`RetryThrottle.record_success`).

The gate contract (:class:`RetryGate`), as the plans use it: ``record_call()`` once per
call of a method with a retry or hedging policy, ``record_success()`` per successful
attempt, ``record_failure()`` per attempt failing with a retryable (non-fatal) code or a
"don't retry" pushback; ``begin_retry()`` just before a retry or a hedge past the first is
sent (None: refused), and ``end_retry(hold)`` once that attempt has ended (or the call
committed or ended). The per-call methods (``record_call``, ``record_success``) take no
lock; the others run only when an attempt failed or a hedge is due. Plans ask
``begin_retry`` last, after every other reason not to retry, so every retry and hedge the
gate decides on is counted once in its :class:`RetryCounts` (``granted`` / ``refused``).
"""

from __future__ import annotations

import threading
from typing import Protocol

from ..method_config import RetryThrottling

_MILLI = 1000


class RetryHold:
    """A retry (or hedge) the gate let through, until :meth:`RetryGate.end_retry`. Gates
    that count retries in flight (Envoy's budget) keep each hold only weakly, so a call
    dropped without ending its retry gives the slot back when it is collected."""

    __slots__ = ("__weakref__",)


HELD = RetryHold()          # what gates that don't count retries in flight hand out


class RetryCounts:
    """Retries (and hedges past the first) a channel's gate granted and refused. A gate
    that replaces another (a new service config) goes on counting in the same object, so
    the channel's totals only grow. Written under the gate's lock."""

    __slots__ = ("granted", "refused")

    def __init__(self) -> None:
        self.granted = 0
        self.refused = 0

    def __repr__(self) -> str:
        return f"RetryCounts(granted={self.granted}, refused={self.refused})"


class CountedGate:
    """What every gate shares: its decisions, counted in a :class:`RetryCounts` (which
    outlives the gate when the config changes)."""

    __slots__ = ()
    counts: RetryCounts

    @property
    def granted(self) -> int:
        return self.counts.granted

    @property
    def refused(self) -> int:
        return self.counts.refused


class RetryGate(Protocol):
    """The channel's retry gate (see the module docstring for when each is called)."""

    counts: RetryCounts

    def record_call(self) -> None: ...

    def record_success(self) -> None: ...

    def record_failure(self) -> bool: ...

    def allows_retry(self) -> bool: ...

    def begin_retry(self) -> RetryHold | None: ...

    def end_retry(self, hold: RetryHold) -> None: ...


class RetryThrottle(CountedGate):
    """gRFC A6 ``retryThrottling`` (a :class:`RetryGate`)."""

    __slots__ = ("_lock", "_max", "_ratio", "_tokens", "counts")

    def __init__(self, max_tokens: int, token_ratio: float,
                 tokens: float | None = None, counts: RetryCounts | None = None) -> None:
        if max_tokens <= 0 or token_ratio <= 0:
            raise ValueError("max_tokens and token_ratio must be greater than 0")
        self._lock = threading.Lock()
        self._max = int(max_tokens) * _MILLI
        self._ratio = int(round(token_ratio * _MILLI, 6))
        start = self._max if tokens is None else int(round(tokens * _MILLI))
        self._tokens = min(max(start, 0), self._max)
        self.counts = counts if counts is not None else RetryCounts()

    @classmethod
    def from_config(cls, config: RetryThrottling, previous: RetryThrottle | None = None,
                    counts: RetryCounts | None = None) -> RetryThrottle:
        """The bucket for a (new) service config. With the same parameters the previous
        bucket is kept as it is; with new ones its fill ratio carries over, as gRPC core
        does when a resolver updates ``retryThrottling``. ``counts``: go on counting there
        (default: the previous bucket's)."""
        if previous is not None:
            if (previous.max_tokens, previous.token_ratio) == (config.max_tokens,
                                                               config.token_ratio):
                return previous
            fill = previous.tokens / previous.max_tokens
            return cls(config.max_tokens, config.token_ratio, fill * config.max_tokens,
                       counts if counts is not None else previous.counts)
        return cls(config.max_tokens, config.token_ratio, counts=counts)

    @property
    def max_tokens(self) -> int:
        return self._max // _MILLI

    @property
    def token_ratio(self) -> float:
        return self._ratio / _MILLI

    @property
    def tokens(self) -> float:
        with self._lock:
            return self._tokens / _MILLI

    def record_success(self) -> None:
        """A successful attempt gives back ``tokenRatio``. No lock: every successful
        call of a throttled channel comes here; under the GIL the update is a few
        bytecodes, and a success racing another update can at worst be lost (making
        retries marginally rarer), never push the count out of ``[0, maxTokens]``."""
        tokens = self._tokens + self._ratio
        self._tokens = tokens if tokens < self._max else self._max

    def record_failure(self) -> bool:
        """Take a token; return whether retries are still allowed afterwards."""
        with self._lock:
            self._tokens = max(self._tokens - _MILLI, 0)
            return self._tokens * 2 > self._max

    def allows_retry(self) -> bool:
        """True while the count is above ``maxTokens / 2``."""
        with self._lock:
            return self._tokens * 2 > self._max

    def record_call(self) -> None:
        """Calls don't move A6 tokens (only attempt outcomes do)."""

    def begin_retry(self) -> RetryHold | None:
        """A retry or hedge may go while the count is above ``maxTokens / 2`` (the token
        for the failure before it was already taken by :meth:`record_failure`)."""
        with self._lock:
            if self._tokens * 2 > self._max:
                self.counts.granted += 1
                return HELD
            self.counts.refused += 1
            return None

    def end_retry(self, hold: RetryHold) -> None:
        """A6 does not count retries in flight."""

    def __repr__(self) -> str:
        return (f"RetryThrottle(tokens={self.tokens:g}/{self.max_tokens}, "
                f"ratio={self.token_ratio:g})")
