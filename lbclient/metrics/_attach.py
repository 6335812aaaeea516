"""Wiring a :class:`MetricsSink` to a live channel.

Sources:
  * calls: ``channel.add_call_listener`` (one event per finished attempt);
  * resolver updates and errors: ``channel.add_resolver_listener``;
  * endpoint events: ``channel.add_event_listener`` when the channel has it; otherwise
    the balancer's change notification, diffed against the previous endpoint snapshot
    (added/removed/healthy/unhealthy/ejected/readmitted), on the control-plane thread
    that made the change, never per call.

Threading: callbacks run on the channel's threads; ``detach()`` may be called from any
thread and is idempotent. The channel is held weakly, so metrics never keep an abandoned
channel alive.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from ._core import MetricsSink

log = logging.getLogger("lbclient.metrics")

_EVENT_ALIASES = {"endpoint_added": "added", "endpoint_removed": "removed",
                  "ejection": "ejected", "uneject": "readmitted", "unejected": "readmitted"}


class Attachment:
    """One sink attached to one channel; :meth:`detach` undoes it."""

    def __init__(self, channel: Any, sink: MetricsSink) -> None:
        if not hasattr(channel, "add_call_listener"):
            raise TypeError(f"lbclient.metrics needs a channel with add_call_listener "
                            f"(lbclient.insecure_channel / secure_channel, or their "
                            f"lbclient.aio twins), got "
                            f"{type(channel).__module__}.{type(channel).__name__}")
        self._channel = weakref.ref(channel)
        self.sink = sink
        self._lock = threading.Lock()
        self._detached = False
        self._undo: list[tuple[str, Any]] = []
        self._last: dict[str, tuple[bool | None, bool]] = {}

        channel.add_call_listener(self._on_call)
        self._undo.append(("remove_call_listener", self._on_call))
        if hasattr(channel, "add_resolver_listener"):
            channel.add_resolver_listener(self._on_resolver)
            self._undo.append(("remove_resolver_listener", self._on_resolver))
        if hasattr(channel, "add_event_listener"):
            channel.add_event_listener(self._on_event)
            self._undo.append(("remove_event_listener", self._on_event))
        else:
            channel._balancer.add_listener(self._on_change)
            self._undo.append(("_balancer.remove_listener", self._on_change))
            self._on_change()   # endpoints already known count as "added"

    @property
    def channel(self) -> Any:
        """The channel, or None once it was garbage-collected."""
        return self._channel()

    def _on_call(self, address: str, outcome: Any) -> None:
        self.sink.call_ended(address, outcome.code, outcome.latency)

    def _on_resolver(self, state: Any, error: Exception | None) -> None:
        if error is not None:
            self.sink.resolver_error(str(error))
        elif state is not None:
            self.sink.resolver_update(len(state.endpoints))

    # ------------------------------------------------------------ event listener
    def _on_event(self, event: Any) -> None:
        """Translate a channel event (duck-typed: ``kind``/``type`` and ``address``)."""
        kind = str(getattr(event, "kind", getattr(event, "type", "")) or "").lower()
        address = getattr(event, "address", None)
        if kind in ("resolver_update", "resolved"):
            self.sink.resolver_update(int(getattr(event, "endpoints", 0) or 0))
        elif kind == "resolver_error":
            self.sink.resolver_error(str(getattr(event, "message", "")))
        elif kind == "health_changed":
            healthy = getattr(event, "healthy", None)
            if healthy is not None and address:
                self.sink.endpoint_event(str(address), "healthy" if healthy else "unhealthy")
        elif address:
            self.sink.endpoint_event(str(address), _EVENT_ALIASES.get(kind, kind))

    # ------------------------------------------------------------ fallback: diff snapshots
    def _on_change(self) -> None:
        channel = self._channel()
        if self._detached or channel is None:
            return
        try:
            infos = channel.endpoints()
        except Exception:   # closing
            return
        with self._lock:
            now = {i.address: (i.healthy, i.ejected_until is not None) for i in infos}
            before, self._last = self._last, now
        for address in before.keys() - now.keys():
            self.sink.endpoint_event(address, "removed")
        for address, (healthy, ejected) in now.items():
            old = before.get(address)
            if old is None:
                self.sink.endpoint_event(address, "added")
                old = (None, False)
            if healthy is not None and healthy != old[0]:
                self.sink.endpoint_event(address, "healthy" if healthy else "unhealthy")
            if ejected != old[1]:
                self.sink.endpoint_event(address, "ejected" if ejected else "readmitted")

    def detach(self) -> None:
        with self._lock:
            if self._detached:
                return
            self._detached = True
            undo, self._undo = self._undo, []
        channel = self._channel()
        if channel is None:
            return
        for name, fn in undo:
            target = channel
            try:
                for part in name.split("."):
                    target = getattr(target, part)
                target(fn)
            except Exception:
                log.debug("detaching metrics failed", exc_info=True)


def attach(channel: Any, sink: MetricsSink) -> Attachment:
    """Send ``channel``'s call, endpoint and resolver events to ``sink``."""
    return Attachment(channel, sink)
