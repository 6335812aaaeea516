"""A sliding window of call and failure counts (pure; stdlib only).

``RecentWindow(span, slots, clock)`` keeps ``slots`` sub-buckets covering ``span``
seconds; :meth:`counts` sums the buckets younger than ``span``.

Threading: :meth:`add` takes no lock (calls end on many threads): each bucket's counters
are ``itertools.count`` objects, whose increments are atomic. A bucket is replaced when
its slot comes round again; two calls racing that replacement may lose one of their
counts (once per slot width at most), which a visibility window can afford.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable


def _value(counter: itertools.count[int]) -> int:
    return int(repr(counter)[6:-1])     # "count(42)": read without advancing


class _Bucket:
    __slots__ = ("slot", "calls", "failures")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.calls = itertools.count()
        self.failures = itertools.count()


class RecentWindow:
    __slots__ = ("span", "_width", "_slots", "_clock", "_buckets")

    def __init__(self, clock: Callable[[], float], span: float = 10.0, slots: int = 10) -> None:
        if span <= 0 or slots < 1:
            raise ValueError("span must be > 0 and slots >= 1")
        self.span = span
        self._slots = slots
        self._width = span / slots
        self._clock = clock
        self._buckets = [_Bucket(-1) for _ in range(slots)]

    def add(self, failed: bool, now: float | None = None) -> None:
        """Count one call (``now``: the clock's current time, if the caller has it)."""
        n = int((self._clock() if now is None else now) // self._width)
        buckets = self._buckets
        bucket = buckets[n % self._slots]
        if bucket.slot != n:
            bucket = buckets[n % self._slots] = _Bucket(n)
        next(bucket.calls)
        if failed:
            next(bucket.failures)

    def counts(self) -> tuple[int, int]:
        """(calls, failures) within the last ``span`` seconds (to one slot's width)."""
        n = int(self._clock() // self._width)
        oldest = n - self._slots + 1
        calls = failures = 0
        for bucket in list(self._buckets):
            if bucket.slot >= oldest:
                calls += _value(bucket.calls)
                failures += _value(bucket.failures)
        return calls, failures
