"""Bounded background work of a sync channel's endpoint connections (stdlib only).

A resolver update that adds 10,000 endpoints must not take the caller threads' share of
the interpreter: making a grpc channel costs ~50-100 us of CPU with the GIL held, and a
connection-error probe ~0.5 ms (a call and a grpc thread). So:

* :class:`Opener` opens new connections on the channel's scheduler a slice at a time
  (about a millisecond of work, then the interpreter is offered to waiting threads, so
  callers wait at most a slice for it): the first ``FAST`` of a burst without pauses (a
  new channel, a modest update), the rest with a pause after each slice (~5% of the
  interpreter). Each connection opened also costs grpc's own
  connection attempts and the connectivity bookkeeping, so the pace bounds those too: a
  grow to 10,000 endpoints gets its connections over some seconds (~15 s on the
  reference machine) instead of starving the calls in flight.
* :class:`TokenBucket` bounds how many connection-error probes run per second: only
  one failed endpoint's account is ever shown with a failed call.

Threading: ``add``/``take`` from any thread; the opener's slices run on the scheduler.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol


class Openable(Protocol):
    def open(self) -> None:
        """Make the connection now (idempotent; nothing once it was shut down)."""


class Opener:
    FAST = 256             # opened without pauses at the start of a burst
    SLICE = 0.001          # then seconds of opening per slice...
    MIN_PER_SLICE = 8      # ...but at least this many connections
    PAUSE = 0.019          # between slices: opening takes ~5% of the time

    def __init__(self, scheduler: Any, clock: Callable[[], float] = time.perf_counter) -> None:
        self._scheduler = scheduler
        self._clock = clock
        self._lock = threading.Lock()
        self._queue: collections.deque[Openable] = collections.deque()
        self._timer: Any = None
        self._closed = False
        self._burst = 0        # opened since the queue was last empty

    def add(self, conn: Openable) -> None:
        """Open ``conn`` soon (in the order added)."""
        with self._lock:
            if self._closed:
                return
            self._queue.append(conn)
            if self._timer is None:
                self._timer = self._scheduler.call_later(0.0, self._slice)

    def pending(self) -> int:
        return len(self._queue)

    def _slice(self) -> None:
        end = self._clock() + self.SLICE
        opened = 0
        while True:
            with self._lock:
                if self._closed or not self._queue:
                    self._timer = None
                    self._burst = 0
                    return
                if opened >= self.MIN_PER_SLICE and self._clock() >= end:
                    if self._burst >= self.FAST:
                        self._timer = self._scheduler.call_later(self.PAUSE, self._slice)
                        return
                    end, opened = self._clock() + self.SLICE, 0
                    pause = True
                else:
                    pause = False
                    conn = self._queue.popleft()
                    self._burst += 1
            if pause:
                time.sleep(0)      # let waiting threads (callers) have the interpreter
                continue
            conn.open()
            opened += 1

    def close(self) -> None:
        """Open nothing more (the connections not opened yet never will be)."""
        with self._lock:
            self._closed = True
            self._queue.clear()
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()


class TokenBucket:
    """``take()`` is True at most ``burst`` times at once and ``rate`` times a second
    on average."""

    def __init__(self, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
            self._at = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True
