"""Timers on the event loop (the asyncio twin of ``lbclient._sync.scheduler``).

Contract: ``call_later(delay, fn)`` may be called from any thread; ``fn`` runs on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class _Handle:
    __slots__ = ("_handle", "cancelled")

    def __init__(self) -> None:
        self._handle: asyncio.TimerHandle | None = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        if self._handle is not None:
            self._handle.cancel()


class LoopScheduler:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._closed = False

    def now(self) -> float:
        return self._loop.time()

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def call_later(self, delay: float, fn: Callable[[], None]) -> _Handle:
        handle = _Handle()
        if self._closed:
            handle.cancelled = True
            return handle

        def schedule() -> None:
            if not handle.cancelled and not self._closed:
                handle._handle = self._loop.call_later(max(delay, 0.0), _guard(handle, fn))

        if self._on_loop():
            schedule()
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(schedule)
        return handle

    def call_soon(self, fn: Callable[[], None]) -> _Handle:
        return self.call_later(0.0, fn)

    def close(self) -> None:
        self._closed = True


def _guard(handle: _Handle, fn: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        if not handle.cancelled:
            fn()
    return run
