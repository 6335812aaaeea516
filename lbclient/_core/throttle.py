"""gRFC A6 retry throttling: one token bucket per channel.

Contract (gRFC A6 "Throttling Retry Attempts and Hedged RPCs"): the bucket starts full at
``maxTokens``; every failed attempt (a retryable / non-fatal status code, or a pushback
that says "don't retry") takes one token, every successful attempt gives back
``tokenRatio``; tokens stay within ``[0, maxTokens]``. While the count is at or below
``maxTokens / 2`` no retry and no further hedge is sent (the first attempt always is).

Tokens are kept in thousandths as integers, as gRPC core does, so ``tokenRatio``'s three
decimal places add up exactly. Threading: failures take a small lock; successes (the
per-call path) do not (see :meth:`RetryThrottle.record_success`).
"""

from __future__ import annotations

import threading

from ..method_config import RetryThrottling

_MILLI = 1000


class RetryThrottle:
    __slots__ = ("_lock", "_max", "_ratio", "_tokens")

    def __init__(self, max_tokens: int, token_ratio: float,
                 tokens: float | None = None) -> None:
        if max_tokens <= 0 or token_ratio <= 0:
            raise ValueError("max_tokens and token_ratio must be greater than 0")
        self._lock = threading.Lock()
        self._max = int(max_tokens) * _MILLI
        self._ratio = int(round(token_ratio * _MILLI, 6))
        start = self._max if tokens is None else int(round(tokens * _MILLI))
        self._tokens = min(max(start, 0), self._max)

    @classmethod
    def from_config(cls, config: RetryThrottling,
                    previous: RetryThrottle | None = None) -> RetryThrottle:
        """The bucket for a (new) service config. With the same parameters the previous
        bucket is kept as it is; with new ones its fill ratio carries over, as gRPC core
        does when a resolver updates ``retryThrottling``."""
        if previous is not None:
            if (previous.max_tokens, previous.token_ratio) == (config.max_tokens,
                                                               config.token_ratio):
                return previous
            fill = previous.tokens / previous.max_tokens
            return cls(config.max_tokens, config.token_ratio, fill * config.max_tokens)
        return cls(config.max_tokens, config.token_ratio)

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

    def __repr__(self) -> str:
        return (f"RetryThrottle(tokens={self.tokens:g}/{self.max_tokens}, "
                f"ratio={self.token_ratio:g})")
