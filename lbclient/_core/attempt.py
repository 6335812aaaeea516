"""One attempt of a call on its endpoint: begun when placed, ended exactly once.

Contract (both flavours): ``EndpointStats.begin()`` runs before the attempt's call starts
(unless the picker counted it at pick time) and :func:`end_attempt` runs exactly once when
it ends: the endpoint's stats (in-flight, latency, failures), then the pick's ``on_done``,
then the channel's call listener. An outcome object is built only when one of those is
there to read it, and metadata only when the pick asked for it or the attempt failed.
Threading: no lock; :class:`Attempt` ends once even when two threads race to end it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from ..balancer.picker import CallOutcome, PickResult
from ..health.origin import local_origin
from .context import CallContext
from .kinds import CallSite

log = logging.getLogger("lbclient.channel")

# How many times a call is picked again when its endpoint was removed (its connection
# closing) between the pick and the start of the attempt.
REPICKS = 3

clock = time.perf_counter


def end_attempt(ctx: CallContext, result: PickResult, latency: float, code: str,
                trailing: Sequence[Any] = (), initial: Sequence[Any] = (),
                details: str | None = None, site: CallSite | None = None) -> None:
    """Account for an attempt that ended with ``code`` after ``latency`` seconds
    (``details``: the status details of a failure, to tell its origin; ``site``: the
    attempt was reported started to the call observer, so report its end too)."""
    observer = ctx.observer
    if observer is not None and site is not None:
        observer.attempt_ended(site, code, latency)
    candidate = result.candidate
    stats = candidate.stats
    local = False
    if code != "OK":
        if code == "UNAVAILABLE":
            # The connection may have just gone down: re-check it now rather than at the
            # next connectivity sweep, so the next pick already avoids it.
            candidate.handle.poll()
        local = local_origin(code, details)
        if local:
            stats.local_failure()
    failure = code in ctx.failure_codes
    listener = ctx.call_listener
    on_done = result.on_done
    if on_done is None and listener is None and not stats.has_end_listeners:
        # a cancelled call (the caller's choice, mostly) is no latency sample
        stats.record(latency if code != "CANCELLED" else None, failure)
        return
    outcome = CallOutcome(code, latency, tuple(trailing), tuple(initial), local)
    stats.end(outcome, failure)
    if on_done is not None:
        try:
            on_done(outcome)
        except Exception:
            log.exception("on_done callback of the picker failed")
    if listener is not None:
        try:
            listener(candidate.address, outcome)
        except Exception:
            log.exception("call listener failed")


class Attempt:
    """A placed attempt whose end is reported later (futures, streams, retries): begun
    on creation; :meth:`end` accounts for it once and ignores later calls. The call
    observer hears of it unless it was :attr:`retired` already (it never starts)."""

    __slots__ = ("ctx", "result", "t0", "site", "_open", "__weakref__")

    def __init__(self, ctx: CallContext, result: PickResult,
                 site: CallSite | None = None) -> None:
        self.ctx = ctx
        self.result = result
        stats = result.candidate.stats
        if not result.counted:
            stats.begin()
        self.site: CallSite | None = None
        if ctx.observer is not None and site is not None and not stats.retiring:
            self.site = site
            ctx.observer.attempt_started(site)
        self._open = [True]          # popped by the one end() that counts
        self.t0 = clock()

    @property
    def address(self) -> str:
        return self.result.candidate.address

    @property
    def handle(self) -> Any:
        """The endpoint's connection (a ``lbclient.balancer.Connection``)."""
        return self.result.candidate.handle

    @property
    def retired(self) -> bool:
        """The endpoint was removed before this attempt began: its connection closes
        once its calls end, maybe before this one starts (read after the begin, so a
        removal ordered after it waits for this attempt instead)."""
        return self.result.candidate.stats.retiring

    @property
    def wants_metadata(self) -> bool:
        return self.result.wants_metadata

    @property
    def ended(self) -> bool:
        return not self._open

    def end(self, code: str, trailing: Sequence[Any] = (), initial: Sequence[Any] = (),
            details: str | None = None) -> bool:
        """End the attempt with a status code name (and metadata and details already in
        hand); False if it had ended already."""
        try:
            self._open.pop()
        except IndexError:
            return False
        end_attempt(self.ctx, self.result, clock() - self.t0, code, trailing, initial,
                    details, self.site)
        return True
