""":class:`CallContext`: what a channel gives its call drivers.

Drivers (``lbclient._sync``, ``lbclient._async``) read these attributes and never a
channel's private fields; only the channel writes them: ``closed`` when it closes, the
rest when a service config is applied (each attribute is replaced whole, so a call reads a
consistent value without a lock), then ``generation`` is bumped so call sites refresh
their cached method config and hot-path flag (``CallSite.fast``). The call listener and
the observer are set through :meth:`CallContext.set_call_listener` and
:meth:`CallContext.set_observer`, which bump it too.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..balancer.balancer import Balancer
from ..balancer.picker import CallOutcome
from ..health.codes import SERVER_FAILURE_CODES
from ..method_config import MethodConfig, MethodConfigTable
from .kinds import CallKind, CallSite, SiteTable
from .observe import Observers
from .replay import ReplayBudget
from .throttle import RetryCounts, RetryGate

CallListener = Callable[[str, CallOutcome], None]


class CallContext:
    __slots__ = ("balancer", "closed", "generation", "methods", "failure_codes",
                 "call_listener", "observer", "throttle", "retry_counts", "replay_budget",
                 "rng", "sites")

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer
        self.closed = False
        self.generation = 0
        self.methods = MethodConfigTable(())
        # Status codes that count as an endpoint failure (passive health).
        self.failure_codes: frozenset[str] = SERVER_FAILURE_CODES
        # fn(address, outcome) after every attempt, or None (then nothing is built for it).
        self.call_listener: CallListener | None = None
        # Per-call telemetry (lbclient._core.observe), or None (then nothing is measured).
        self.observer: Observers | None = None
        # The retry gate: gRFC A6 retryThrottling or a retry budget (lbclient._core.budget)
        self.throttle: RetryGate | None = None
        self.retry_counts = RetryCounts()               # every gate's decisions, in total
        self.replay_budget = ReplayBudget()             # every call's replay buffers
        self.rng = random.Random()                       # retry backoff jitter
        self.sites = SiteTable()

    def site(self, kind: CallKind, method: str, ser: object, deser: object,
             registered: bool) -> CallSite:
        return self.sites.get(kind, method, ser, deser, registered)

    def config_for(self, site: CallSite) -> MethodConfig | None:
        """The method config of ``site`` (cached on the site per config generation, with
        its hot-path flag)."""
        generation = self.generation
        if site.generation != generation:
            config = self.methods.lookup(site.method) if self.methods else None
            site.config = config
            site.fast = (generation if config is None and self.observer is None
                         and self.call_listener is None else -1)
            site.generation = generation
            return config
        cached: MethodConfig | None = site.config
        return cached

    def set_call_listener(self, listener: CallListener | None) -> None:
        self.call_listener = listener
        self.generation += 1

    def set_observer(self, observer: Observers | None) -> None:
        self.observer = observer
        self.generation += 1

    def set_methods(self, methods: MethodConfigTable, throttle: RetryGate | None,
                    failure_codes: frozenset[str]) -> None:
        """A new service config's method table, retry gate and failure codes."""
        self.methods = methods
        self.throttle = throttle
        self.failure_codes = failure_codes
        self.generation += 1
