"""Per-call telemetry hooks (what gRFC A66/A96 metrics need), for both flavours.

A channel with no observer attached measures nothing (one attribute check per call).
With one, drivers report:

* ``attempt_started(site)`` when an attempt is placed on an endpoint (``site``: the
  method's :class:`~lbclient._core.kinds.CallSite`);
* ``attempt_ended(site, code, seconds)`` when it ends (``seconds``: pick to end);
* ``call_ended(CallEnd)`` when the whole call ends (see :class:`CallEnd`).

Observers must be quick and must not raise; they run on whatever thread ended the
attempt or call (the event loop for ``lbclient.aio``).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple, Protocol

from .kinds import CallSite

log = logging.getLogger("lbclient.metrics")


class CallEnd(NamedTuple):
    """How one whole call ended. ``retries``/``hedges``: the attempts after the first
    (a retryPolicy's or a hedgingPolicy's); ``transparent_retries``: the attempts
    lbclient re-made on another endpoint because the picked one was removed before the
    attempt could start; ``retry_delay``: seconds between attempts with none in flight
    (gRFC A96; measured by the call's RetryPlan / HedgePlan)."""

    site: CallSite
    code: str
    seconds: float
    retries: int = 0
    hedges: int = 0
    transparent_retries: int = 0
    retry_delay: float = 0.0


class AttemptTelemetry:
    """What a call lbclient drives itself (retried, queued, hedged) tells of its attempts
    (read by :func:`call_end`; gRFC A96), for both flavours. Subclasses keep
    ``_previous`` (attempts before the final one) and ``_transparent`` (picks made again
    because the endpoint was removed before the attempt could start), and override
    :meth:`_retry_delay` when a plan measures it."""

    __slots__ = ()
    _previous = 0
    _transparent = 0

    def _retry_delay(self) -> float:
        return 0.0

    @property
    def previous_rpc_attempts(self) -> int:
        """Attempts made before the final one (0 before the call finished)."""
        return self._previous

    @property
    def retry_delay(self) -> float:
        """Seconds spent between attempts with none in flight (gRFC A96), so far."""
        return self._retry_delay()

    @property
    def transparent_retries(self) -> int:
        """Times an attempt was picked again because its endpoint was removed before it
        could start (gRFC A96's transparent retries)."""
        return self._transparent


def call_end(site: CallSite, code: str, seconds: float, call: Any) -> CallEnd:
    """The :class:`CallEnd` of ``call`` (lbclient's retried calls, futures, streams and
    errors say how many attempts they made - ``previous_rpc_attempts`` - and, when they
    did, ``retry_delay`` and ``transparent_retries``; grpc's own objects made one)."""
    earlier = int(getattr(call, "previous_rpc_attempts", 0) or 0)
    config = site.config
    hedging = config is not None and config.hedging_policy is not None
    return CallEnd(site, code, seconds, 0 if hedging else earlier,
                   earlier if hedging else 0,
                   int(getattr(call, "transparent_retries", 0) or 0),
                   float(getattr(call, "retry_delay", 0.0) or 0.0))


class CallObserver(Protocol):
    def attempt_started(self, site: CallSite) -> None: ...

    def attempt_ended(self, site: CallSite, code: str, seconds: float) -> None: ...

    def call_ended(self, end: CallEnd) -> None: ...


class Observers:
    """Several observers as one (what ``CallContext.observer`` holds)."""

    __slots__ = ("members",)

    def __init__(self, members: tuple[CallObserver, ...]) -> None:
        self.members = members

    def attempt_started(self, site: CallSite) -> None:
        for m in self.members:
            try:
                m.attempt_started(site)
            except Exception:
                log.exception("call observer failed")

    def attempt_ended(self, site: CallSite, code: str, seconds: float) -> None:
        for m in self.members:
            try:
                m.attempt_ended(site, code, seconds)
            except Exception:
                log.exception("call observer failed")

    def call_ended(self, end: CallEnd) -> None:
        for m in self.members:
            try:
                m.call_ended(end)
            except Exception:
                log.exception("call observer failed")
