"""The sync channel's timer thread (``lbclient._async.scheduler`` uses the loop instead).

Contract: ``call_later(delay, fn)`` runs ``fn`` once on the scheduler thread after
``delay`` seconds unless cancelled; callbacks must be short and must not block (they post
work elsewhere). ``close()`` cancels everything and joins the thread (bounded).
The thread starts on first use, so a channel without timers has no extra thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("lbclient.scheduler")


class TimerHandle:
    __slots__ = ("cancelled", "when", "fn")

    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ThreadScheduler:
    def __init__(self, name: str = "lbclient-timer",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._name = name
        self._clock = clock
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def now(self) -> float:
        return self._clock()

    def call_later(self, delay: float, fn: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(self._clock() + max(delay, 0.0), fn)
        with self._cv:
            if self._closed:
                handle.cancelled = True
                return handle
            heapq.heappush(self._heap, (handle.when, next(self._seq), handle))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cv.notify()
        return handle

    def call_soon(self, fn: Callable[[], None]) -> TimerHandle:
        return self.call_later(0.0, fn)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed:
                    if self._heap:
                        wait = self._heap[0][0] - self._clock()
                        if wait <= 0:
                            break
                        self._cv.wait(min(wait, 1.0))
                    else:
                        self._cv.wait(1.0)
                if self._closed:
                    return
                _, _, handle = heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            try:
                handle.fn()
            except Exception:  # a failing timer must not kill the others
                log.exception("timer callback failed")

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._heap.clear()
            self._cv.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
