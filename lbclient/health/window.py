"""A sliding window of call and failure counts (pure; stdlib only).

``RecentWindow(span, slots, clock)`` keeps ``slots`` sub-buckets covering ``span``
seconds; :meth:`counts` sums the buckets younger than ``span``. Thread-safe (calls end on
many threads); time comes from the injected clock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class RecentWindow:
    __slots__ = ("span", "_width", "_slots", "_clock", "_lock", "_calls", "_failures",
                 "_stamps")

    def __init__(self, clock: Callable[[], float], span: float = 10.0, slots: int = 10) -> None:
        if span <= 0 or slots < 1:
            raise ValueError("span must be > 0 and slots >= 1")
        self.span = span
        self._slots = slots
        self._width = span / slots
        self._clock = clock
        self._lock = threading.Lock()
        self._calls = [0] * slots
        self._failures = [0] * slots
        self._stamps = [-1] * slots    # the slot number each bucket currently holds

    def add(self, failed: bool) -> None:
        n = int(self._clock() // self._width)
        i = n % self._slots
        with self._lock:
            if self._stamps[i] != n:
                self._stamps[i], self._calls[i], self._failures[i] = n, 0, 0
            self._calls[i] += 1
            if failed:
                self._failures[i] += 1

    def counts(self) -> tuple[int, int]:
        """(calls, failures) within the last ``span`` seconds (to one slot's width)."""
        n = int(self._clock() // self._width)
        oldest = n - self._slots + 1
        calls = failures = 0
        with self._lock:
            for i in range(self._slots):
                if self._stamps[i] >= oldest:
                    calls += self._calls[i]
                    failures += self._failures[i]
        return calls, failures
