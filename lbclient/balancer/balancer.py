"""The endpoint-set balancer: one connection per endpoint, eligibility, picker publication.

Threading contract: every control-plane event (resolver update, connectivity change,
health report, ejection, sweep, policy change) is applied under one lock, one at a time,
and ends by publishing what it changed: a new immutable picker (a single attribute
assignment, read without a lock by callers) and/or the aggregate state, then the
listeners are told. Connections and health checkers are created through factories, so
this module never imports grpc. Handle methods that may block or call back (shutdown,
stopping checkers) run *outside* the lock; endpoint events are queued under the lock and
delivered after it is released (:class:`~lbclient.health.events.EventBus`).

Eligibility: an endpoint is *connected* when its connection is READY and, with active
health checking, its first health answer has arrived (gRFC A17); it is *fit* when it is
also not unhealthy and not ejected. Pickers see the fit endpoints, unless fewer than
``panic_threshold`` percent of the connected ones are fit: then (Envoy's panic mode) they
see every connected endpoint. Weights get the slow-start factor of endpoints that are
new, readmitted or healthy again. Active health and outlier ejection are a
:class:`~lbclient.balancer.fitness.Fitness` the balancer owns (same lock, same records);
each endpoint's state is an :class:`~lbclient.balancer.record.EndpointRecord`.

Cost: an event costs the same however many endpoints sit idle. What it reads about all
of them (aggregate state, why none is ready, whether calls wait, the connected ones) is
counted incrementally by a :class:`~lbclient.balancer.tally.RecordTally`; the picker is
rebuilt (over the connected endpoints only) when an endpoint's connected or fit status
changed, or when a rebuild is asked for (policy, options, endpoints, slow start). An
event that changes neither (a connection that was not READY flapping between CONNECTING
and TRANSIENT_FAILURE, a health answer that changes no eligibility) publishes no new
picker and wakes no waiting call; while nothing is eligible, the failing picker's reason
follows the counts, and listeners (waiting calls) are told only when it changes between
"wait" and "fail fast".
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from ..connectivity import Connectivity
from ..endpoint import Endpoint
from ..health.events import EndpointEvent, EventBus, EventKind
from ..health.options import DEFAULT_OPTIONS, BalancingOptions
from ..health.outlier import HOST_OPTION, OutlierConfig, OutlierDetector
from .breaker import BreakerPicker, BreakerState
from .connections import ConnectionTally, locality_of
from .fitness import Fitness, HealthChecker, HealthCheckerFactory
from .lb_metrics import METRICS_OPTION, LbMetrics
from .picker import Candidate, EndpointStats, FailingPicker, Picker
from .policy import Policy, PolicyContext, PolicySpec
from .record import EndpointInfo, EndpointRecord
from .tally import RecordTally

log = logging.getLogger("lbclient.balancer")

__all__ = ["Balancer", "Connection", "EndpointInfo", "EndpointRecord", "HealthChecker",
           "HealthCheckerFactory", "SubchannelFactory", "SubchannelHandle"]


class Connection(Protocol):
    """One endpoint's connection, as the balancer and the call drivers use it (made by a
    :class:`SubchannelFactory`; the sync and asyncio channels each have one)."""

    address: str

    def request_connection(self) -> None:
        """Start connecting if idle (non-blocking)."""

    def poll(self) -> bool:
        """Re-read the connectivity now (a call just failed UNAVAILABLE); True if it
        changed. A connection whose changes are pushed may do nothing."""

    def connection_error(self) -> str | None:
        """Why the connection failed, as the transport tells it (refused, TLS...), while
        it is in TRANSIENT_FAILURE and known; None otherwise. Never blocks."""

    @property
    def closed(self) -> bool:
        """True once :meth:`shutdown` was called."""

    def shutdown(self) -> None:
        """Close the connection; called once, after its in-flight calls have ended."""


SubchannelHandle = Connection   # the name before the call path's rewrite

# A large update (10,000 endpoints) holds the interpreter for a long stretch; every this
# many endpoints it lets waiting threads (callers finishing their calls) run, so they
# wait for about a millisecond instead of the interpreter's 5 ms switch interval each
# time. (The balancer lock stays held: only other control-plane events wait.)
_YIELD_EVERY = 64


def _yield_interpreter() -> None:
    time.sleep(0)


class SubchannelFactory(Protocol):
    def create(self, endpoint: Endpoint,
               on_state: Callable[[Connectivity], None]) -> Connection:
        """Open a connection to ``endpoint``; ``on_state`` receives its connectivity
        changes from any thread. Must not block."""

    def set_batcher(self, batch: Callable[[], Any]) -> None:
        """The balancer's :meth:`Balancer.batch`, for factories that deliver many
        changes at once (a connectivity sweep): one picker rebuild for all of them."""


class Balancer:
    def __init__(self, factory: SubchannelFactory, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, scheduler: Any = None,
                 on_endpoint_failure: Callable[[str], None] | None = None,
                 health_factory: HealthCheckerFactory | None = None) -> None:
        self._factory = factory
        # Publication coalescing: while _batch_depth > 0, events are counted but nothing
        # is published; the outermost batch() publishes once (a connectivity sweep over
        # 10,000 endpoints must not rebuild the picker for each of them).
        self._batch_depth = 0
        self._stale = False        # the eligible set may have changed: rebuild the picker
        self._notify = False       # something was published: tell the listeners
        self._tally = RecordTally()
        self._picked: list[EndpointRecord] = []    # what the current picker chooses from
        factory.set_batcher(self.batch)
        self._clock = clock
        self._rng = rng or random.Random()
        self._scheduler = scheduler
        self._on_endpoint_failure = on_endpoint_failure
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._records: dict[str, EndpointRecord] = {}
        self._resolved: list[Endpoint] = []    # the resolver's latest list, all of it
        self._policy: Policy | None = None
        self._spec: PolicySpec | None = None
        self._resolver_error: str | None = None
        self._resolved_once = False
        self._closed = False
        self._listeners: list[Callable[[], None]] = []
        self._generation = 0
        self._events = EventBus()
        self._options: BalancingOptions = DEFAULT_OPTIONS
        self._ramp_timer: Any = None
        self._panic = False
        self.breaker = BreakerState()          # circuit breaker counters (see breaker.py)
        self.connections = ConnectionTally()   # connection attempts (see connections.py)
        self.metrics = LbMetrics()             # what policies record (see lb_metrics.py)
        # Health checking and outlier ejection: composed, sharing the lock and records.
        self._fitness = Fitness(
            lock=self._lock, records=lambda: self._records, closed=lambda: self._closed,
            post=self._post, note_locked=self._note_locked,
            publish_locked=self._publish_locked, rebuild_locked=self._rebuild_locked,
            after_change=self._after_change, clock=clock, rng=self._rng,
            scheduler=scheduler, health_factory=health_factory)
        self.picker: Picker = FailingPicker("no endpoints yet: waiting for the resolver",
                                            queue=True)
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
                                request_rebuild=self.rebuild,
                                options={HOST_OPTION: self, METRICS_OPTION: self.metrics})
            self._policy, self._spec = spec.create(config, ctx), spec
            # the new policy may select other endpoints (subsetting); this also tells it
            # every endpoint (endpoints_changed) and rebuilds the picker
            to_close, stop = self._apply_endpoints_locked()
        if old is not None:
            old.close()
        self._finish_apply(to_close, stop)

    @property
    def policy(self) -> Policy | None:
        return self._policy

    def set_options(self, options: BalancingOptions) -> None:
        """Panic threshold and slow start (the service config's ``"lbclient"`` block)."""
        with self._lock:
            if self._closed or options == self._options:
                return
            self._options = options
            shared = self.breaker.in_flight if options.max_requests is not None else None
            for rec in self._records.values():
                rec.stats.shared = shared
            self._rebuild_locked()
        self._after_change()

    def set_health_check(self, config: Any) -> None:
        """Turn active health checking on (a ``HealthCheckConfig``), change it, or turn
        it off (None). Connected endpoints restart probing from "pending"."""
        stop: list[HealthChecker] = []
        with self._lock:
            fitness = self._fitness
            if self._closed or config == fitness.health_config:
                return
            if not fitness.set_config_locked(config):
                log.warning("healthCheckConfig ignored: this channel has no health prober")
                return
            for rec in self._records.values():
                stop += fitness.stop_checker_locked(rec)
                rec.tracker = fitness.new_tracker()
                rec.reported_health = None
                if rec.connectivity is Connectivity.READY:
                    fitness.start_checker_locked(rec)
                self._note_locked(rec)
            self._rebuild_locked()
        for checker in stop:
            checker.stop()
        self._after_change()

    # ----------------------------------------------------------------- endpoint updates
    def update_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Apply a whole snapshot: unchanged addresses keep their connection and state;
        new ones connect; removed ones stop being picked at once and are closed once
        their in-flight calls have ended (their health checking stops at once). A
        subsetting policy chooses which of them the balancer keeps
        (:meth:`Policy.select_endpoints`); the others get no connection at all."""
        with self._lock:
            if self._closed:
                return
            self._resolver_error = None
            self._resolved_once = True
            self._resolved = list(endpoints)
            to_close, stop = self._apply_endpoints_locked()
        self._finish_apply(to_close, stop)

    def _finish_apply(self, to_close: list[EndpointRecord], stop: list[HealthChecker]) -> None:
        for checker in stop:
            checker.stop()
        for rec in to_close:
            rec.stats.when_idle(rec.handle.shutdown)
        self._after_change()

    def _apply_endpoints_locked(self) -> tuple[list[EndpointRecord], list[HealthChecker]]:
        """Make the records match the policy's selection of the resolved endpoints;
        returns what to close and stop once the lock is released."""
        to_close: list[EndpointRecord] = []
        stop: list[HealthChecker] = []
        endpoints: Sequence[Endpoint] = self._resolved
        if self._policy is not None:
            endpoints = self._policy.select_endpoints(endpoints)
        now = self._clock()
        wanted = {e.address: e for e in endpoints}
        for i, address in enumerate(list(self._records)):
            if not i % _YIELD_EVERY:
                _yield_interpreter()
            if address not in wanted:
                rec = self._records.pop(address)
                self._tally.forget(rec)
                stop += self._fitness.stop_checker_locked(rec)
                to_close.append(rec)
                self.connections.closed(address)
                self._post("removed", rec, f"{rec.stats.in_flight} calls in flight")
        created: list[EndpointRecord] = []
        for i, (address, endpoint) in enumerate(wanted.items()):
            if not i % _YIELD_EVERY:
                _yield_interpreter()
            known = self._records.get(address)
            if known is not None:
                rec = known
                if rec.endpoint.weight != endpoint.weight or dict(
                        rec.endpoint.attributes) != dict(endpoint.attributes):
                    rec.endpoint = endpoint
                continue
            rec = EndpointRecord(endpoint, EndpointStats(self._clock), now, self._clock)
            rec.stats.window = rec.window
            if self._options.max_requests is not None:
                rec.stats.shared = self.breaker.in_flight
            rec.tracker = self._fitness.new_tracker()
            self._records[address] = rec
            created.append(rec)
            self._tally.account(rec)
        # Reorder to the resolver's order (pick_first and hashing use it).
        self._records = {a: self._records[a] for a in wanted}
        for index, rec in enumerate(self._records.values()):
            rec.index = index
        for i, rec in enumerate(created):
            if not i % _YIELD_EVERY:
                _yield_interpreter()
            rec.handle = self._factory.create(rec.endpoint, self._state_callback(rec))
            self._post("added", rec, f"weight {rec.endpoint.weight}")
        if self._fitness.outliers is not None:
            self._fitness.outliers.set_addresses(self._records)
        if self._policy is not None:  # group policies need every endpoint, not just eligible
            self._policy.endpoints_changed([r.endpoint for r in self._records.values()])
        self._rebuild_locked()
        return to_close, stop

    def resolver_error(self, message: str) -> None:
        """A resolver failure: keep the endpoints; if there are none, calls fail with
        this message."""
        with self._lock:
            self._resolver_error = message
            if not self._records:
                self._rebuild_locked()
        self._after_change()

    def _state_callback(self, rec: EndpointRecord) -> Callable[[Connectivity], None]:
        def on_state(state: Connectivity) -> None:
            self.on_connectivity(rec, state)
        return on_state

    def on_connectivity(self, rec: EndpointRecord, state: Connectivity) -> None:
        stop: list[HealthChecker] = []
        with self._lock:
            if self._closed or self._records.get(rec.address) is not rec:
                return  # a removed endpoint's late event
            if rec.connectivity is state:
                return
            previous, rec.connectivity = rec.connectivity, state
            self.connections.changed(rec.address, locality_of(rec.endpoint.attributes),
                                     previous, state)
            if state is Connectivity.TRANSIENT_FAILURE:
                rec.failed_since_ready = True
            if state is Connectivity.READY:
                if rec.failed_since_ready and rec.ready_count:
                    # Back after a lost connection (a crash and restart, most likely):
                    # its caches are cold, so it ramps up like a new endpoint.
                    rec.ramp_pending = True
                rec.ready_count += 1
                rec.failed_since_ready = False
                rec.ready_since = self._clock()
                self._fitness.start_checker_locked(rec)
            elif previous is Connectivity.READY:
                rec.ready_since = None
                stop = self._fitness.stop_checker_locked(rec)
            self._note_locked(rec)
            self._publish_locked()
        log.debug("endpoint %s: %s -> %s", rec.address, previous.value, state.value)
        for checker in stop:
            checker.stop()
        if state is Connectivity.IDLE:
            rec.handle.request_connection()
        if state is Connectivity.TRANSIENT_FAILURE and self._on_endpoint_failure is not None:
            self._on_endpoint_failure(rec.address)
        self._after_change()

    # ----------------------------------------------------------------- picker
    def rebuild(self) -> None:
        """Publish a fresh picker (policies call this when their inputs change)."""
        with self._lock:
            if not self._closed:
                self._rebuild_locked()
        self._after_change()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Apply the events raised inside the block (from any thread) with a single
        publication (at most one picker rebuild) when the outermost block ends. The
        lock is not held meanwhile; calls keep using the previous picker until then."""
        with self._lock:
            self._batch_depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._batch_depth -= 1
                if self._batch_depth == 0 and not self._closed:
                    self._publish_locked()
            self._after_change()

    def _note_locked(self, rec: EndpointRecord) -> None:
        """``rec``'s state may have changed: count it again (see RecordTally)."""
        if self._tally.account(rec):
            self._stale = True

    def _rebuild_locked(self) -> None:
        """Rebuild the picker now (or at the end of the current batch)."""
        self._stale = True
        self._publish_locked()

    def _publish_locked(self) -> None:
        """Publish what the events since the last publication changed: the picker when
        the eligible set may have changed, the failing picker's reason and queueing
        while nothing is eligible, the aggregate state. Costs O(1) when nothing did."""
        if self._batch_depth:
            return          # the outermost batch() publishes
        if self._stale:
            self._stale = False
            self._build_picker_locked()
        elif not self._picked:
            self._refresh_failing_locked()
        if self._records:
            state = self._tally.aggregate()
        else:   # IDLE until the resolver has answered, as a fresh grpc channel is
            state = (Connectivity.TRANSIENT_FAILURE
                     if self._resolved_once or self._resolver_error else Connectivity.IDLE)
        if state is not self.state:
            self.state = state
            self._notify = True

    def _announce_locked(self) -> None:
        """A new picker that may place calls differently was published."""
        self._generation += 1
        self._notify = True
        self._changed.notify_all()

    def _refresh_failing_locked(self) -> None:
        """Nothing is eligible: keep the failing picker's reason and queueing current.
        A new reason alone is published silently (waiting calls could do nothing
        with it); a change between "wait" and "fail fast" is announced."""
        reason, queue = self._no_endpoint_reason(), self._queue_calls()
        current = self.picker
        if isinstance(current, FailingPicker) and current.reason == reason:
            if current.queue == queue:
                return
        self.picker = FailingPicker(reason, queue=queue)
        if not isinstance(current, FailingPicker) or current.queue != queue:
            self._announce_locked()

    def _build_picker_locked(self) -> None:
        """The policy's picker over the connected endpoints: the fit ones, or (panic
        mode) all of them. O(connected), whatever the number of endpoints."""
        now = self._clock()
        policy = self._policy
        connected = self._tally.connected_in_order()
        fit = [r for r in connected if r.fit()]
        threshold = self._options.panic_threshold
        panic = False
        if threshold > 0 and connected:
            share = (policy.available_share([r.endpoint for r in fit],
                                            [r.endpoint for r in connected])
                     if policy is not None else len(fit) / len(connected))
            panic = share * 100.0 < threshold
        if panic != self._panic:
            self._panic = panic
            (log.warning if panic else log.info)(
                "panic mode %s: %d of %d connected endpoints are fit (threshold %g%%)",
                "on, picking among all connected endpoints" if panic else "off",
                len(fit), len(connected), threshold)
        chosen = connected if panic else fit
        for r in self._picked:
            r.picked = False
        self._picked = []
        if policy is None or not chosen:
            self.picker = FailingPicker(self._no_endpoint_reason(), queue=self._queue_calls())
        else:
            candidates = []
            for r in chosen:
                r.picked = True
                c = Candidate(r.endpoint, r.endpoint.weight, r.stats, r.handle)
                w = policy.endpoint_weight(c)
                factor = self._slow_start_factor(r, now)
                r.effective_weight = w * factor
                candidates.append(c.with_weight(w * factor))
            picker = policy.build_picker(candidates)
            opts = self._options
            if opts.max_requests is not None or opts.max_concurrent_requests is not None:
                picker = BreakerPicker(picker, self.breaker, opts.max_requests,
                                       opts.max_concurrent_requests, len(candidates))
            self.picker = picker
            self._picked = chosen
        self._announce_locked()

    def _slow_start_factor(self, rec: EndpointRecord, now: float) -> float:
        slow = self._options.slow_start
        if slow is None:
            rec.ramp_pending, rec.ramp_start = False, None
            return 1.0
        if rec.ramp_pending:
            rec.ramp_pending, rec.ramp_start = False, now
        if rec.ramp_start is None:
            return 1.0
        factor = slow.factor(now - rec.ramp_start)
        if factor >= 1.0:
            rec.ramp_start = None
        elif self._ramp_timer is None and self._scheduler is not None:
            step = min(max(slow.window / 20.0, 0.05), 1.0)
            self._ramp_timer = self._scheduler.call_later(step, self._ramp_tick)
        return factor

    def _ramp_tick(self) -> None:
        with self._lock:
            self._ramp_timer = None
            if self._closed:
                return
            self._rebuild_locked()
        self._after_change()

    def _queue_calls(self) -> bool:
        """Whether calls should wait (within their deadline) instead of failing at once,
        as gRPC queues picks while the channel is CONNECTING: before the first
        resolution, or while some endpoint is connecting that has not failed since it
        was last READY, or READY and waiting for its first health answer (gRFC A17
        reports such a subchannel CONNECTING). Ejected, unhealthy and failed endpoints
        fail calls fast. (Counted: see EndpointRecord.classify.)"""
        if not self._records:
            return not self._resolved_once and not self._resolver_error
        if self._policy is None:
            return True
        return self._tally.queueing > 0

    def _no_endpoint_reason(self) -> str:
        if not self._records:
            if self._resolver_error:
                return f"no endpoints: {self._resolver_error}"
            if self._resolved_once:
                return "no endpoints: the resolver returned an empty list"
            return "no endpoints yet: waiting for the resolver"
        if self._policy is None:
            return "no load-balancing policy yet"
        parts = ", ".join(f"{n} {k}" for k, n in self._tally.reasons())
        return f"no ready endpoints: {parts}"

    def wait_for_change(self, generation: int, timeout: float | None) -> int:
        """Block until a picker newer than ``generation`` is published (or timeout);
        returns the current generation. (A failing picker whose reason alone changed is
        published without a new generation.)"""
        with self._lock:
            if self._generation == generation and not self._closed:
                self._changed.wait(timeout)
            return self._generation

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def panic(self) -> bool:
        """True while the panic threshold makes pickers ignore health and ejection."""
        return self._panic

    # ----------------------------------------------------------------- listeners/events
    def add_listener(self, fn: Callable[[], None]) -> None:
        """``fn()`` after every picker or state change (outside the lock, any thread)."""
        with self._lock:
            self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def add_event_listener(self, fn: Callable[[EndpointEvent], None]) -> None:
        """``fn(event)`` for every endpoint event, in order, one at a time, outside the
        balancer lock (on whichever thread caused the event)."""
        self._events.add_listener(fn)

    def remove_event_listener(self, fn: Callable[[EndpointEvent], None]) -> None:
        self._events.remove_listener(fn)

    def _post(self, kind: EventKind, rec: EndpointRecord, reason: str = "", *,
              healthy: bool | None = None, ejected_until: float | None = None) -> None:
        self._events.post(EndpointEvent(kind, rec.address, self._clock(), reason, healthy,
                                        ejected_until))

    def _after_change(self) -> None:
        """Deliver the queued events, and tell the listeners if something was published
        since they were last told (by whichever thread gets here first: the flag is set
        under the lock before the publishing thread gets here itself)."""
        self._events.flush()
        if not self._notify:
            return
        self._notify = False
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
    def record(self, address: str) -> EndpointRecord | None:
        return self._records.get(address)

    def records(self) -> list[EndpointRecord]:
        with self._lock:
            return list(self._records.values())

    def snapshot(self) -> list[EndpointInfo]:
        """One immutable :class:`EndpointInfo` per endpoint, in resolver order."""
        with self._lock:
            now = self._clock()
            det = self._fitness.outliers
            slow = self._options.slow_start
            return [r.info(now, det.multiplier(r.address) if det is not None else 0,
                           slow, self._panic) for r in self._records.values()]

    def outlier_decisions(self) -> dict[tuple[str, str], int]:
        """Every outlier found so far: (detection method, "" if ejected, else why not)
        -> count (see :attr:`lbclient.health.outlier.OutlierDetector.decisions`)."""
        return dict(self._fitness.outlier_decisions)

    def close(self) -> None:
        """Close every connection now (in-flight calls are cancelled by their transport)
        and stop health checking and timers."""
        stop: list[HealthChecker] = []
        with self._lock:
            if self._closed:
                return
            self._closed = True
            records = list(self._records.values())
            for rec in records:
                stop += self._fitness.stop_checker_locked(rec)
            self._records.clear()
            self._tally = RecordTally()
            self._picked = []
            self.picker = FailingPicker("channel closed")
            self.state = Connectivity.SHUTDOWN
            self._notify = True
            policy, self._policy = self._policy, None
            self._fitness.schedule_sweep(None)
            if self._ramp_timer is not None:
                self._ramp_timer.cancel()
            self._changed.notify_all()
        for checker in stop:
            checker.stop()
        if policy is not None:
            policy.close()
        for rec in records:
            rec.handle.shutdown()
        for checker in stop:
            checker.join(2.0)
        self._after_change()

    @property
    def closed(self) -> bool:
        return self._closed

    # ----------------------------------------------------------------- health, ejection
    @property
    def failure_codes(self) -> frozenset[str]:
        """Status codes counted as endpoint failures (outlier detection's, if it runs)."""
        return self._fitness.failure_codes

    def attach_outlier_detection(self, config: OutlierConfig) -> OutlierDetector:
        """For the ``outlier_detection`` policy (the balancer is its ``OutlierHost``)."""
        return self._fitness.attach_outlier_detection(config)

    def detach_outlier_detection(self, detector: OutlierDetector) -> None:
        self._fitness.detach_outlier_detection(detector)

    def sweep(self) -> None:
        """The outlier detector's interval sweep (on the scheduler; tests call it)."""
        self._fitness.sweep()
