"""The simulator's virtual clock and scheduler (stdlib only).

:class:`EventLoop` is both the clock (calling it returns the virtual time in seconds) and
the scheduler (``call_later``/``call_at``) handed to the real
:class:`~lbclient.balancer.balancer.Balancer` and its policies. Time only moves when
:meth:`EventLoop.run` takes the next event off the heap, so a simulated hour costs what
its events cost, not an hour.

Contract: events run one at a time, in time order; events due at the same time run in the
order they were scheduled (FIFO), so a run is deterministic. A callback may schedule
further events (also "now"), cancel timers, or call :meth:`EventLoop.stop`. Not
thread-safe: the whole simulation runs on the caller's thread.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

_NO_ARG: Any = object()


class Timer:
    """A scheduled callback; :meth:`cancel` before it runs drops it."""

    __slots__ = ("when", "fn", "arg", "cancelled")

    def __init__(self, when: float, fn: Callable[..., None], arg: Any) -> None:
        self.when = when
        self.fn = fn
        self.arg = arg
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """Virtual time plus a heap of timers. ``loop()`` is the current virtual time."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._stopped = False
        self.events = 0          # callbacks run so far (for the report)

    def __call__(self) -> float:
        return self.now

    # ------------------------------------------------------------ the Scheduler protocol
    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn()`` ``delay`` virtual seconds from now (negative delays mean now)."""
        return self.call_at(self.now + max(delay, 0.0), fn)

    def call_soon(self, fn: Callable[[], None]) -> Timer:
        return self.call_at(self.now, fn)

    def call_at(self, when: float, fn: Callable[..., None], arg: Any = _NO_ARG) -> Timer:
        """Run ``fn()`` (or ``fn(arg)`` when ``arg`` is given) at virtual time ``when``
        (never earlier than now)."""
        timer = Timer(max(when, self.now), fn, arg)
        heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
        return timer

    # ------------------------------------------------------------ running
    def stop(self) -> None:
        """End :meth:`run` after the current callback."""
        self._stopped = True

    @property
    def stopped(self) -> bool:
        return self._stopped

    def run(self, until: float) -> None:
        """Run events in order until :meth:`stop` (the clock stays at that event's time)
        or no event is left before ``until`` (the clock then moves to ``until``)."""
        heap = self._heap
        pop = heapq.heappop
        noarg = _NO_ARG
        count = 0
        try:
            while heap and not self._stopped:
                when = heap[0][0]
                if when > until:
                    break
                timer = pop(heap)[2]
                if timer.cancelled:
                    continue
                self.now = when
                count += 1
                if timer.arg is noarg:
                    timer.fn()
                else:
                    timer.fn(timer.arg)
            if not self._stopped:
                self.now = max(self.now, until)
        finally:
            self.events += count

    def pending(self) -> int:
        """Timers still on the heap (cancelled ones included until they are reached)."""
        return len(self._heap)
