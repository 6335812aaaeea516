"""Exponential backoff with jitter, and the DNS re-resolution schedule (pure: no threads).

Both take their clock and random generator as arguments so tests drive them directly.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """gRPC connection-backoff shape: ``initial * multiplier**n``, capped at ``maximum``,
    each delay spread by +-``jitter`` (a fraction). ``reset()`` after a success."""

    def __init__(self, initial: float = 1.0, maximum: float = 120.0, multiplier: float = 1.6,
                 jitter: float = 0.2, rng: random.Random | None = None) -> None:
        if initial <= 0 or maximum < initial or multiplier < 1 or not 0 <= jitter < 1:
            raise ValueError("backoff needs 0 < initial <= maximum, multiplier >= 1, "
                             "0 <= jitter < 1")
        self.initial, self.maximum = initial, maximum
        self.multiplier, self.jitter = multiplier, jitter
        self._rng = rng or random.Random()
        self._current = initial

    def next(self) -> float:
        """The delay before the next attempt; grows the following one."""
        base = self._current
        self._current = min(self._current * self.multiplier, self.maximum)
        spread = base * self.jitter
        return max(0.0, min(self.maximum, base + self._rng.uniform(-spread, spread)))

    def reset(self) -> None:
        self._current = self.initial


class ResolveSchedule:
    """When the next lookup may start.

    * The first lookup is due at once.
    * After a success the next is due ``refresh`` seconds later.
    * After a failure it is due after a backoff delay (capped at ``refresh``).
    * ``request_now()`` (a connection failed) makes a lookup due at
      ``last_start + min_interval`` if that is sooner, so re-resolution is never requested
      more often than ``min_interval`` (gRPC's rate limit for re-resolution).

    Not thread-safe: the owner serializes calls.
    """

    def __init__(self, refresh: float, min_interval: float, backoff: Backoff,
                 clock: Callable[[], float]) -> None:
        self.refresh = refresh
        self.min_interval = min_interval
        self._backoff = backoff
        self._clock = clock
        self._last_start: float | None = None
        self._next: float = clock()
        self._requested = False

    def request_now(self) -> None:
        self._requested = True

    def due_at(self) -> float:
        if self._requested and self._last_start is not None:
            return min(self._next, self._last_start + self.min_interval)
        return self._next

    def seconds_until_due(self) -> float:
        return max(0.0, self.due_at() - self._clock())

    def started(self) -> None:
        """A lookup starts now (clears any pending request: it is being served)."""
        self._last_start = self._clock()
        self._requested = False

    def finished(self, ok: bool) -> None:
        start = self._last_start if self._last_start is not None else self._clock()
        if ok:
            self._backoff.reset()
            self._next = start + self.refresh
        else:
            self._next = start + min(self._backoff.next(), self.refresh)
