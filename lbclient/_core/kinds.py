"""Call kinds and call sites.

A :class:`CallSite` is one method of one channel as its multicallables see it: kind, full
method name, serializers. Sites are interned per channel (:meth:`SiteTable.get`), so every
stub of the same method shares one site, and an endpoint connection can cache its own
grpc multicallable per site with a dict keyed by identity.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from typing import Any

from ..balancer.picker import PickInfo
from .deadline import deadline_from


class CallKind(enum.Enum):
    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"

    @property
    def streams_requests(self) -> bool:
        return self in (CallKind.STREAM_UNARY, CallKind.STREAM_STREAM)

    @property
    def streams_responses(self) -> bool:
        return self in (CallKind.UNARY_STREAM, CallKind.STREAM_STREAM)


class CallSite:
    """One method as a channel calls it. ``info`` is the pick of a call without metadata
    (shared, immutable); ``generation``/``config`` cache the method config (see
    :meth:`lbclient._core.context.CallContext.config_for`); ``fast`` equals the
    channel's generation while a call of this method may take the hot path (no method
    config, no call observer, no call listener), else -1."""

    __slots__ = ("kind", "method", "ser", "deser", "registered", "info", "generation",
                 "config", "fast", "__weakref__")

    def __init__(self, kind: CallKind, method: str, ser: Any, deser: Any,
                 registered: bool) -> None:
        self.kind = kind
        self.method = method
        self.ser = ser
        self.deser = deser
        self.registered = registered
        self.info = PickInfo(method)
        self.generation = -1
        self.config: Any = None
        self.fast = -1

    def __repr__(self) -> str:
        return f"CallSite({self.kind.value}, {self.method!r})"


class SiteTable:
    """Interns call sites: one per (kind, method, serializers) and channel. Thread-safe
    (a lock only when a multicallable is made, never per call)."""

    def __init__(self) -> None:
        self._sites: dict[tuple[Any, ...], CallSite] = {}
        self._lock = threading.Lock()

    def get(self, kind: CallKind, method: str, ser: Any, deser: Any,
            registered: bool) -> CallSite:
        key = (kind, method, ser, deser, registered)
        site = self._sites.get(key)
        if site is None:
            with self._lock:
                site = self._sites.setdefault(key, CallSite(kind, method, ser, deser,
                                                            registered))
        return site


@dataclass(frozen=True, slots=True)
class Invocation:
    """Everything about one call that each of its attempts repeats. ``request`` is the
    request message, or the caller's request iterator (``None`` for a grpc.aio
    request-streaming call whose caller will ``write()``)."""

    site: CallSite
    request: Any
    deadline: float | None
    metadata: Any
    wait_for_ready: bool
    credentials: Any
    compression: Any


def invocation(site: CallSite, config: Any, request: Any, timeout: float | None,
               metadata: Any, credentials: Any, wait_for_ready: bool | None,
               compression: Any) -> Invocation:
    """A call's :class:`Invocation`: its deadline is the caller's timeout or the method
    config's ``timeout`` (a ``MethodConfig`` or None), whichever is shorter, fixed now;
    ``wait_for_ready`` the caller's, else the method config's."""
    deadline = deadline_from(timeout, config.timeout if config is not None else None)
    if wait_for_ready is None and config is not None:
        wait_for_ready = config.wait_for_ready
    return Invocation(site, request, deadline, metadata, bool(wait_for_ready), credentials,
                      compression)
