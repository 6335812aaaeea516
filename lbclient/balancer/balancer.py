"""The endpoint-set balancer: one connection per endpoint, eligibility, picker publication.

Threading contract: every control-plane event (resolver update, connectivity change,
health result, ejection, policy change) is applied under one lock, one at a time, and
ends by publishing a new immutable picker (a single attribute assignment, read without a
lock by callers). Connections are created and closed through a :class:`SubchannelFactory`
so this module never imports grpc; handle methods are called *outside* the lock.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..connectivity import Connectivity, aggregate
from ..endpoint import Endpoint
from .picker import Candidate, EndpointStats, FailingPicker, Picker
from .policy import Policy, PolicyContext, PolicySpec

log = logging.getLogger("lbclient.balancer")


class SubchannelHandle(Protocol):
    def request_connection(self) -> None:
        """Start connecting if idle (non-blocking)."""

    def shutdown(self) -> None:
        """Close the connection; called once, after its in-flight calls have ended."""


class SubchannelFactory(Protocol):
    def create(self, endpoint: Endpoint,
               on_state: Callable[[Connectivity], None]) -> SubchannelHandle:
        """Open a connection to ``endpoint``; ``on_state`` receives its connectivity
        changes from any thread. Must not block."""


class EndpointRecord:
    """The balancer's mutable view of one endpoint (guarded by the balancer lock)."""

    __slots__ = ("endpoint", "handle", "stats", "connectivity", "healthy", "health_reason",
                 "ejected_until", "eject_reason", "added_at", "ready_since")

    def __init__(self, endpoint: Endpoint, handle: Any, stats: EndpointStats,
                 now: float) -> None:
        self.endpoint = endpoint
        self.handle = handle
        self.stats = stats
        self.connectivity = Connectivity.IDLE
        self.healthy: bool | None = None       # None: not health-checked (counts as healthy)
        self.health_reason = ""
        self.ejected_until: float | None = None
        self.eject_reason = ""
        self.added_at = now
        self.ready_since: float | None = None

    @property
    def address(self) -> str:
        return self.endpoint.address

    def is_ejected(self, now: float) -> bool:
        return self.ejected_until is not None and now < self.ejected_until

    def eligible(self, now: float) -> bool:
        return (self.connectivity is Connectivity.READY and self.healthy is not False
                and not self.is_ejected(now))


@dataclass(frozen=True)
class EndpointInfo:
    """An immutable per-endpoint snapshot for ``channel.endpoints()``."""

    address: str
    weight: int
    connectivity: str
    healthy: bool | None
    eligible: bool
    ejected_until: float | None
    eject_reason: str
    in_flight: int
    picks: int
    calls: int
    failures: int
    latency_ewma: float | None
    attributes: dict[str, Any]


class Balancer:
    def __init__(self, factory: SubchannelFactory, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, scheduler: Any = None,
                 on_endpoint_failure: Callable[[str], None] | None = None) -> None:
        self._factory = factory
        self._clock = clock
        self._rng = rng or random.Random()
        self._scheduler = scheduler
        self._on_endpoint_failure = on_endpoint_failure
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._records: dict[str, EndpointRecord] = {}
        self._policy: Policy | None = None
        self._spec: PolicySpec | None = None
        self._resolver_error: str | None = None
        self._resolved_once = False
        self._closed = False
        self._listeners: list[Callable[[], None]] = []
        self._generation = 0
        self.picker: Picker = FailingPicker("no endpoints yet: waiting for the resolver")
        self.state = Connectivity.IDLE

    # ----------------------------------------------------------------- configuration
    def set_policy(self, spec: PolicySpec, config: Any) -> None:
        """Switch to a policy (the same spec and config keep the current policy object)."""
        with self._lock:
            if self._closed:
                return
            if self._policy is not None and self._spec is spec and self._policy.config == config:
                return
            old = self._policy
            ctx = PolicyContext(clock=self._clock, rng=self._rng, scheduler=self._scheduler,
                                request_rebuild=self.rebuild)
            self._policy, self._spec = spec.create(config, ctx), spec
            self._policy.endpoints_changed([r.endpoint for r in self._records.values()])
            self._rebuild_locked()
        if old is not None:
            old.close()

    @property
    def policy(self) -> Policy | None:
        return self._policy

    # ----------------------------------------------------------------- endpoint updates
    def update_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Apply a whole snapshot: unchanged addresses keep their connection and state;
        new ones connect; removed ones stop being picked at once and are closed once
        their in-flight calls have ended."""
        to_close: list[EndpointRecord] = []
        created: list[EndpointRecord] = []
        with self._lock:
            if self._closed:
                return
            self._resolver_error = None
            self._resolved_once = True
            now = self._clock()
            wanted = {e.address: e for e in endpoints}
            for address in list(self._records):
                if address not in wanted:
                    to_close.append(self._records.pop(address))
            for address, endpoint in wanted.items():
                rec = self._records.get(address)
                if rec is not None:
                    if rec.endpoint.weight != endpoint.weight or dict(
                            rec.endpoint.attributes) != dict(endpoint.attributes):
                        rec.endpoint = endpoint
                    continue
                stats = EndpointStats(self._clock)
                rec = EndpointRecord(endpoint, None, stats, now)
                self._records[address] = rec
                created.append(rec)
            # Reorder to the resolver's order (pick_first and hashing use it).
            self._records = {a: self._records[a] for a in wanted}
            for rec in created:
                rec.handle = self._factory.create(rec.endpoint, self._state_callback(rec))
            if self._policy is not None:  # group policies need every endpoint, not just eligible
                self._policy.endpoints_changed([r.endpoint for r in self._records.values()])
            self._rebuild_locked()
        for rec in to_close:
            log.info("endpoint removed: %s (closing after %d in-flight calls)",
                     rec.address, rec.stats.in_flight)
            rec.stats.when_idle(rec.handle.shutdown)
        for rec in created:
            log.info("endpoint added: %s (weight %d)", rec.address, rec.endpoint.weight)
        self._notify()

    def resolver_error(self, message: str) -> None:
        """A resolver failure: keep the endpoints; if there are none, calls fail with
        this message."""
        with self._lock:
            self._resolver_error = message
            if not self._records:
                self._rebuild_locked()
        self._notify()

    def _state_callback(self, rec: EndpointRecord) -> Callable[[Connectivity], None]:
        def on_state(state: Connectivity) -> None:
            self.on_connectivity(rec, state)
        return on_state

    def on_connectivity(self, rec: EndpointRecord, state: Connectivity) -> None:
        connect = False
        with self._lock:
            if self._closed or self._records.get(rec.address) is not rec:
                return  # a removed endpoint's late event
            if rec.connectivity is state:
                return
            previous, rec.connectivity = rec.connectivity, state
            if state is Connectivity.READY:
                rec.ready_since = self._clock()
            elif previous is Connectivity.READY:
                rec.ready_since = None
            connect = state is Connectivity.IDLE
            self._rebuild_locked()
        log.debug("endpoint %s: %s -> %s", rec.address, previous.value, state.value)
        if connect:
            rec.handle.request_connection()
        if state is Connectivity.TRANSIENT_FAILURE and self._on_endpoint_failure is not None:
            self._on_endpoint_failure(rec.address)
        self._notify()

    # ----------------------------------------------------------------- health/ejection
    def set_health(self, address: str, healthy: bool | None, reason: str = "") -> None:
        with self._lock:
            rec = self._records.get(address)
            if rec is None or rec.healthy == healthy:
                return
            rec.healthy, rec.health_reason = healthy, reason
            self._rebuild_locked()
        log.info("endpoint %s: %s%s", address,
                 {True: "healthy", False: "unhealthy", None: "health unknown"}[healthy],
                 f" ({reason})" if reason else "")
        self._notify()

    def record(self, address: str) -> EndpointRecord | None:
        return self._records.get(address)

    def records(self) -> list[EndpointRecord]:
        with self._lock:
            return list(self._records.values())

    # ----------------------------------------------------------------- picker
    def rebuild(self) -> None:
        """Publish a fresh picker (policies call this when their inputs change)."""
        with self._lock:
            if not self._closed:
                self._rebuild_locked()
        self._notify()

    def _rebuild_locked(self) -> None:
        self._generation += 1
        now = self._clock()
        policy = self._policy
        eligible = [r for r in self._records.values() if r.eligible(now)]
        if policy is None or not eligible:
            self.picker = FailingPicker(self._no_endpoint_reason(now))
        else:
            candidates = [Candidate(r.endpoint, r.endpoint.weight, r.stats, r.handle)
                          for r in eligible]
            candidates = [c.with_weight(policy.endpoint_weight(c)) for c in candidates]
            self.picker = policy.build_picker(candidates)
        self.state = aggregate([r.connectivity for r in self._records.values()])
        self._changed.notify_all()

    def _no_endpoint_reason(self, now: float) -> str:
        if not self._records:
            if self._resolver_error:
                return f"no endpoints: {self._resolver_error}"
            if self._resolved_once:
                return "no endpoints: the resolver returned an empty list"
            return "no endpoints yet: waiting for the resolver"
        counts: dict[str, int] = {}
        for r in self._records.values():
            if r.connectivity is not Connectivity.READY:
                key = {Connectivity.IDLE: "idle", Connectivity.CONNECTING: "connecting",
                       Connectivity.TRANSIENT_FAILURE: "failed",
                       Connectivity.SHUTDOWN: "shut down"}[r.connectivity]
            elif r.is_ejected(now):
                key = "ejected"
            else:
                key = "unhealthy"
            counts[key] = counts.get(key, 0) + 1
        parts = ", ".join(f"{n} {k}" for k, n in counts.items())
        return f"no ready endpoints: {parts}"

    def wait_for_change(self, generation: int, timeout: float | None) -> int:
        """Block until a picker newer than ``generation`` is published (or timeout);
        returns the current generation."""
        with self._lock:
            if self._generation == generation and not self._closed:
                self._changed.wait(timeout)
            return self._generation

    @property
    def generation(self) -> int:
        return self._generation

    def add_listener(self, fn: Callable[[], None]) -> None:
        """``fn()`` after every picker or state change (outside the lock, any thread)."""
        with self._lock:
            self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def _notify(self) -> None:
        for fn in tuple(self._listeners):
            try:
                fn()
            except Exception:
                log.exception("balancer listener failed")

    def request_connections(self) -> None:
        """Ask every idle endpoint to connect."""
        for rec in self.records():
            if rec.connectivity is Connectivity.IDLE:
                rec.handle.request_connection()

    # ----------------------------------------------------------------- visibility / close
    def snapshot(self) -> list[EndpointInfo]:
        with self._lock:
            now = self._clock()
            return [EndpointInfo(
                address=r.address, weight=r.endpoint.weight,
                connectivity=r.connectivity.value, healthy=r.healthy,
                eligible=r.eligible(now),
                ejected_until=r.ejected_until if r.is_ejected(now) else None,
                eject_reason=r.eject_reason if r.is_ejected(now) else "",
                in_flight=r.stats.in_flight, picks=r.stats.picks, calls=r.stats.calls,
                failures=r.stats.failures, latency_ewma=r.stats.latency_ewma,
                attributes=dict(r.endpoint.attributes)) for r in self._records.values()]

    def close(self) -> None:
        """Close every connection now (in-flight calls are cancelled by their transport)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            records = list(self._records.values())
            self._records.clear()
            self.picker = FailingPicker("channel closed")
            self.state = Connectivity.SHUTDOWN
            policy, self._policy = self._policy, None
            self._changed.notify_all()
        if policy is not None:
            policy.close()
        for rec in records:
            rec.handle.shutdown()
        self._notify()

    @property
    def closed(self) -> bool:
        return self._closed
