"""A sliding window of call and failure counts (pure; stdlib only).

``RecentWindow(span, slots, clock)`` keeps ``slots`` sub-buckets covering ``span``
seconds; :meth:`counts` sums the buckets younger than ``span``. A bucket is made when its
first call arrives, so an endpoint without calls costs a short list.

Threading: :meth:`add` takes no lock (calls end on many threads): a bucket is an
immutable ``(slot, calls, failures)`` tuple of ``itertools.count`` objects, whose
increments are atomic. A bucket is replaced when its slot comes round again; two calls
racing that replacement may lose one of their counts (once per slot width at most),
which a visibility window can afford.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

_Bucket = tuple[int, "itertools.count[int]", "itertools.count[int]"]


def _value(counter: itertools.count[int]) -> int:
    return int(repr(counter)[6:-1])     # "count(42)": read without advancing


class RecentWindow:
    __slots__ = ("span", "_width", "_slots", "_clock", "_buckets")

    def __init__(self, clock: Callable[[], float], span: float = 10.0, slots: int = 10) -> None:
        if span <= 0 or slots < 1:
            raise ValueError("span must be > 0 and slots >= 1")
        self.span = span
        self._slots = slots
        self._width = span / slots
        self._clock = clock
        self._buckets: list[_Bucket | None] = [None] * slots

    def add(self, failed: bool, now: float | None = None) -> None:
        """Count one call (``now``: the clock's current time, if the caller has it)."""
        n = int((self._clock() if now is None else now) // self._width)
        i = n % self._slots
        bucket = self._buckets[i]
        if bucket is None or bucket[0] != n:
            bucket = self._buckets[i] = (n, itertools.count(), itertools.count())
        next(bucket[1])
        if failed:
            next(bucket[2])

    def counts(self) -> tuple[int, int]:
        """(calls, failures) within the last ``span`` seconds (to one slot's width)."""
        n = int(self._clock() // self._width)
        oldest = n - self._slots + 1
        calls = failures = 0
        for bucket in list(self._buckets):
            if bucket is not None and bucket[0] >= oldest:
                calls += _value(bucket[1])
                failures += _value(bucket[2])
        return calls, failures
