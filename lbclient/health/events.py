"""Endpoint events: what they are, and their in-order delivery (stdlib only).

Events (``added``, ``removed``, ``health_changed``, ``ejected``, ``readmitted``, and the
channel-wide ``panic_started`` / ``panic_ended`` with an empty address) are logged on the
``lbclient.events`` logger and passed to every registered listener.

Threading: the balancer queues events while it holds its lock and calls :meth:`flush`
after releasing it. One thread at a time delivers, in queue order; a thread that finds
another delivering leaves its events to it, so listeners never run concurrently, never
under the balancer lock, and may call back into the channel (e.g. ``endpoints()``).
A listener that raises is logged and the others still run.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger("lbclient.events")

EventKind = Literal["added", "removed", "health_changed", "ejected", "readmitted",
                    "panic_started", "panic_ended"]

_LEVELS = {"ejected": logging.WARNING, "panic_started": logging.WARNING}


@dataclass(frozen=True)
class EndpointEvent:
    """One event. ``time`` is the channel clock (``time.monotonic`` by default);
    ``healthy`` is set for ``health_changed`` (None: pending); ``ejected_until`` for
    ``ejected``; ``reason`` says why in words."""

    kind: EventKind
    address: str
    time: float
    reason: str = ""
    healthy: bool | None = None
    ejected_until: float | None = None

    def __str__(self) -> str:
        where = f"endpoint {self.address}: " if self.address else ""
        what = {"health_changed": {True: "healthy", False: "unhealthy",
                                   None: "health pending"}[self.healthy]}.get(
            self.kind, self.kind.replace("_", " "))
        return f"{where}{what}" + (f" ({self.reason})" if self.reason else "")


Listener = Callable[[EndpointEvent], None]


class EventBus:
    def __init__(self) -> None:
        self._queue: collections.deque[EndpointEvent] = collections.deque()
        self._listeners: list[Listener] = []
        self._delivering = threading.Lock()

    def add_listener(self, fn: Listener) -> None:
        self._listeners = [*self._listeners, fn]

    def remove_listener(self, fn: Listener) -> None:
        self._listeners = [f for f in self._listeners if f != fn]

    def post(self, event: EndpointEvent) -> None:
        """Queue an event (cheap; call under the owner's lock)."""
        self._queue.append(event)

    def flush(self) -> None:
        """Deliver queued events (call without holding the owner's lock)."""
        while self._queue:
            if not self._delivering.acquire(blocking=False):
                return  # the delivering thread re-checks the queue after releasing
            try:
                while self._queue:
                    self._deliver(self._queue.popleft())
            finally:
                self._delivering.release()

    def _deliver(self, event: EndpointEvent) -> None:
        level = _LEVELS.get(event.kind, logging.INFO)
        if event.kind == "health_changed" and event.healthy is False:
            level = logging.WARNING
        log.log(level, "%s", event)
        for fn in self._listeners:
            try:
                fn(event)
            except Exception:
                log.exception("endpoint event listener failed")
