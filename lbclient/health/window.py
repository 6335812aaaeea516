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
    __slots__ = ("span", "_per_second", "_slots", "_clock", "_buckets")

    def __init__(self, clock: Callable[[], float], span: float = 10.0, slots: int = 10) -> None:
        if span <= 0 or slots < 1:
            raise ValueError("span must be > 0 and slots >= 1")
        self.span = span
        self._slots = slots
        self._per_second = slots / span       # slot numbers per second
        self._clock = clock
        empty: _Bucket = (-(1 << 62), itertools.count(), itertools.count())
        self._buckets: list[_Bucket] = [empty] * slots

    def add(self, failed: bool) -> None:
        """Count one call (on the per-call path: one clock read, no allocation but once
        per slot width)."""
        n = int(self._clock() * self._per_second)
        buckets = self._buckets
        i = n % self._slots
        bucket = buckets[i]
        if bucket[0] != n:
            bucket = buckets[i] = (n, itertools.count(), itertools.count())
        next(bucket[1])
        if failed:
            next(bucket[2])

    def counts(self) -> tuple[int, int]:
        """(calls, failures) within the last ``span`` seconds (to one slot's width)."""
        n = int(self._clock() * self._per_second)
        oldest = n - self._slots + 1
        calls = failures = 0
        for bucket in list(self._buckets):
            if bucket[0] >= oldest:
                calls += _value(bucket[1])
                failures += _value(bucket[2])
        return calls, failures
