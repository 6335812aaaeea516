"""The demo's event feed: lbclient's own log lines (one per state change: ejected,
readmitted, healthy, unhealthy, ...), with backend names instead of bare addresses; and
:class:`TakenOut`, which backends the channel took out during a phase and why.

While installed, the feed is the ``lbclient`` logger's handler (INFO and up), so nothing
is printed behind the live table; plain mode prints each line as it arrives.
Threading: ``emit`` runs on whichever thread logged; the deque append is atomic.
:class:`TakenOut` is updated from the channel's event delivery and the demo's loop under
its own lock.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any


class EventFeed(logging.Handler):
    def __init__(self, names: Mapping[str, str], *, echo: bool, keep: int = 6) -> None:
        super().__init__(logging.INFO)
        self._names = dict(names)
        self._echo = echo
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._t0 = time.monotonic()
        self._logger = logging.getLogger("lbclient")
        self._saved = (self._logger.level, self._logger.propagate)

    def phase_started(self) -> None:
        self._t0 = time.monotonic()
        self.lines.clear()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            return
        for address, name in self._names.items():
            text = text.replace(address, name)
        line = f"+{time.monotonic() - self._t0:4.1f}s {text}"
        self.lines.append(line)
        if self._echo:
            print(f"  {line}", file=sys.stdout, flush=True)

    def __enter__(self) -> EventFeed:
        self._logger.addHandler(self)
        self._logger.setLevel(logging.INFO)
        self._logger.propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._saved[0])
        self._logger.propagate = self._saved[1]


class TakenOut:
    """Why each backend stopped getting traffic during a phase: ``reasons[name]`` maps a
    kind (``ejected``, ``unhealthy``, ``connection failed``) to (times, first reason).

    Ejections and health changes come from the channel's endpoint events
    (``channel.add_event_listener(taken_out.on_event)``), so none is missed however
    briefly it lasted: a backend being killed says NOT_SERVING (graceful shutdown) only
    moments before its connection drops, after which its health is "pending" again, so
    a snapshot taken every quarter second would rarely see it unhealthy. Connection
    failures come from the snapshots (:meth:`observe`): they last while it is down."""

    def __init__(self, names: Mapping[str, str]) -> None:
        self._names = dict(names)
        self._lock = threading.Lock()
        self.reasons: dict[str, dict[str, tuple[int, str]]] = {}

    def _add(self, address: str, kind: str, reason: str, count: bool = True) -> None:
        name = self._names.get(address, address)
        with self._lock:
            kinds = self.reasons.setdefault(name, {})
            times, first = kinds.get(kind, (0, reason))
            if count or not times:
                times += 1
            kinds[kind] = (times, first or reason)

    def on_event(self, event: Any) -> None:
        """The channel's event listener (an :class:`lbclient.EndpointEvent`)."""
        if event.kind == "ejected":
            self._add(event.address, "ejected", event.reason)
        elif event.kind == "health_changed" and event.healthy is False:
            self._add(event.address, "unhealthy", event.reason)

    def observe(self, infos: Sequence[Any]) -> None:
        """A ``channel.endpoints()`` snapshot: note endpoints whose connection failed."""
        for info in infos:
            if info.connectivity == "TRANSIENT_FAILURE":
                self._add(info.address, "connection failed", "", count=False)

    def copy(self) -> dict[str, dict[str, tuple[int, str]]]:
        with self._lock:
            return {name: dict(kinds) for name, kinds in self.reasons.items()}


def describe(kinds: Mapping[str, tuple[int, str]]) -> str:
    """``ejected 2x (failure percentage 40% above 20% (8/20)); unhealthy (NOT_SERVING)``:
    each kind, how often if more than once, and the first reason."""
    parts = []
    for kind, (times, reason) in kinds.items():
        text = kind + (f" {times}x" if times > 1 and kind != "connection failed" else "")
        parts.append(text + (f" ({reason})" if reason else ""))
    return "; ".join(parts)
