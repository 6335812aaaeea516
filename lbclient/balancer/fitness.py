"""Active health and outlier ejection of a balancer's endpoints (stdlib only).

:class:`Fitness` is owned by the :class:`~lbclient.balancer.balancer.Balancer` and gets
everything it touches explicitly at construction: the balancer's lock and records, and
the balancer's ways to post an event, count a changed record again (``note_locked``),
publish what changed or rebuild the picker (under the lock) and finish a change (after
the lock). Every change to a record's health or ejection is noted, so the balancer
rebuilds the picker only when eligibility changed. Everything here runs under that lock,
like every other control-plane event: health reports from the checkers, the outlier
detector's interval sweep, consecutive-failure trips, and the ``outlier_detection``
policy attaching or detaching. The rules:

* a health checker runs while an endpoint's connection is READY (the balancer starts and
  stops it on connectivity changes); stale reports from a stopped checker are ignored;
* a server without the health service is treated as healthy (gRFC A17), said once per
  channel at INFO;
* an ejection takes the endpoint out at once and (watch mode) turns on Check probes;
* an ejected endpoint is readmitted when its ejection time has passed and, with active
  health checking, its last ``healthyThreshold`` probes were good — checked at each
  sweep and at each health report.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
from collections.abc import Callable
from typing import Any, Protocol

from ..health.codes import SERVER_FAILURE_CODES
from ..health.events import EventKind
from ..health.outlier import Ejection, OutlierConfig, OutlierDetector
from ..health.tracker import HealthReport, HealthTracker
from .record import EndpointRecord

health_log = logging.getLogger("lbclient.health")

_MIN_SWEEP = 0.01   # an outlier "interval" of 0 is valid JSON; sweeps stay 10 ms apart


class HealthChecker(Protocol):
    def set_probing(self, on: bool) -> None:
        """While on, run Check probes even in watch mode (an ejected endpoint)."""

    def stop(self) -> None:
        """Stop probing (non-blocking, idempotent); later reports are ignored."""

    def join(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) for a stopped checker's thread, if it has one."""


class HealthCheckerFactory(Protocol):
    def start(self, handle: Any, config: Any,
              report: Callable[[HealthReport], None]) -> HealthChecker:
        """Start probing a READY endpoint; ``report`` may be called from any thread but
        never synchronously from ``start``/``set_probing``/``stop``."""


class Post(Protocol):
    def __call__(self, kind: EventKind, rec: EndpointRecord, reason: str = "", *,
                 healthy: bool | None = None, ejected_until: float | None = None) -> None: ...


class Fitness:
    """Health checking and outlier ejection for one balancer (see the module doc)."""

    def __init__(self, *, lock: threading.RLock, records: Callable[[], dict[str, EndpointRecord]],
                 closed: Callable[[], bool], post: Post,
                 note_locked: Callable[[EndpointRecord], None],
                 publish_locked: Callable[[], None], rebuild_locked: Callable[[], None],
                 after_change: Callable[[], None], clock: Callable[[], float],
                 rng: random.Random, scheduler: Any,
                 health_factory: HealthCheckerFactory | None) -> None:
        self._lock = lock
        self._records = records
        self._closed = closed
        self._post = post
        self._note_locked = note_locked
        self._publish_locked = publish_locked
        self._rebuild_locked = rebuild_locked
        self._after_change = after_change
        self._clock = clock
        self._rng = rng
        self._scheduler = scheduler
        self._health_factory = health_factory
        self.health_config: Any = None              # a HealthCheckConfig, or None
        self.outliers: OutlierDetector | None = None
        # Every outlier the detectors found, (method, unenforced reason or "") -> count,
        # kept across detectors (gRFC A91's counters read it).
        self.outlier_decisions: collections.Counter[tuple[str, str]] = collections.Counter()
        self._outlier_refs = 0
        self._sweep_timer: Any = None
        self._unimplemented_said = False
        # Status codes counted as endpoint failures (the outlier policy's, else lbclient's).
        self.failure_codes: frozenset[str] = SERVER_FAILURE_CODES

    # ----------------------------------------------------------------- active health
    def set_config_locked(self, config: Any) -> bool:
        """Use health check ``config`` (None: off). False if this balancer cannot check."""
        if config is not None and self._health_factory is None:
            return False
        self.health_config = config
        return True

    def new_tracker(self) -> HealthTracker | None:
        return HealthTracker(self.health_config) if self.health_config is not None else None

    def start_checker_locked(self, rec: EndpointRecord) -> None:
        if self.health_config is None or self._health_factory is None or rec.tracker is None:
            return
        rec.tracker.reset()
        token = object()
        rec.checker_token = token

        def report(r: HealthReport) -> None:
            self._on_health_report(rec, token, r)

        rec.checker = self._health_factory.start(rec.handle, self.health_config, report)
        if rec.ejected:
            rec.checker.set_probing(True)

    def stop_checker_locked(self, rec: EndpointRecord) -> list[HealthChecker]:
        """Detach the endpoint's checker; the caller stops it outside the lock."""
        checker, rec.checker, rec.checker_token = rec.checker, None, None
        if rec.tracker is not None:
            rec.tracker.reset()
        return [checker] if checker is not None else []

    def _on_health_report(self, rec: EndpointRecord, token: object, report: HealthReport) -> None:
        with self._lock:
            if (self._closed() or self._records().get(rec.address) is not rec
                    or rec.checker_token is not token or rec.tracker is None):
                return
            tracker = rec.tracker
            before = tracker.state
            changed = tracker.apply(report)
            if report.kind == "unimplemented" and not self._unimplemented_said:
                self._unimplemented_said = True
                health_log.info("endpoint %s does not implement grpc.health.v1: treating it "
                                "(and any other endpoint without it) as healthy", rec.address)
            healthy = tracker.healthy
            if changed and healthy is not None and healthy != rec.reported_health:
                rec.reported_health = healthy
                if healthy and before == "unhealthy":
                    rec.ramp_pending = True
                self._post("health_changed", rec, tracker.reason, healthy=healthy)
            readmitted = rec.ejected and self._maybe_readmit_locked(rec)
            if changed or readmitted:
                self._note_locked(rec)
                self._publish_locked()
        self._after_change()

    # ----------------------------------------------------------------- outlier ejection
    def attach_outlier_detection(self, config: OutlierConfig) -> OutlierDetector:
        """Called by the ``outlier_detection`` policy when it is created: returns the
        channel's detector (kept across config changes, as A50 keeps its timer and
        counters) and starts its interval timer."""
        with self._lock:
            det = self.outliers
            if det is None:
                det = OutlierDetector(config, self._clock, self._rng)
                det.decisions = self.outlier_decisions
                det.set_addresses(self._records())
                det.on_trip = self._on_trip
                self.outliers = det
            self._outlier_refs += 1
            self.schedule_sweep(det.reconfigure(config))
            self.failure_codes = config.failure_codes
            self._sync_ejections_locked()
        return det

    def detach_outlier_detection(self, detector: OutlierDetector) -> None:
        """The policy is gone: when no policy uses the detector any more, stop the
        timer and readmit every ejected endpoint."""
        with self._lock:
            if detector is not self.outliers:
                return
            self._outlier_refs -= 1
            if self._outlier_refs > 0:
                return
            self.outliers = None
            self.schedule_sweep(None)
            self.failure_codes = SERVER_FAILURE_CODES
            if not self._closed():
                self._sync_ejections_locked()
                self._rebuild_locked()
        self._after_change()

    def schedule_sweep(self, delay: float | None) -> None:
        """(Re)arm the outlier interval timer (None: stop it)."""
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        if delay is not None and self._scheduler is not None and not self._closed():
            self._sweep_timer = self._scheduler.call_later(delay, self.sweep)

    def sweep(self) -> None:
        """The outlier detector's interval (runs on the scheduler; tests call it)."""
        with self._lock:
            det = self.outliers
            if det is None or self._closed():
                return
            result = det.sweep()
            records = self._records()
            for ejection in result.ejected:
                self._apply_ejection_locked(ejection)
            for address in result.expired:
                rec = records.get(address)
                if rec is not None:
                    self._maybe_readmit_locked(rec)
            self._publish_locked()
            self.schedule_sweep(max(det.config.interval, _MIN_SWEEP))
        self._after_change()

    def _on_trip(self, address: str, reason: str) -> None:
        """A consecutive-failure limit was reached (a caller's thread)."""
        with self._lock:
            det = self.outliers
            if det is None or self._closed():
                return
            ejection = det.eject(address, reason)
            if ejection is None:
                return
            self._apply_ejection_locked(ejection)
            self._publish_locked()
        self._after_change()

    def _apply_ejection_locked(self, ejection: Ejection) -> None:
        rec = self._records().get(ejection.address)
        if rec is None:
            return
        rec.ejected, rec.ejected_until, rec.eject_reason = True, ejection.until, ejection.reason
        if rec.tracker is not None:
            rec.tracker.reset_streak()
        if rec.checker is not None:
            rec.checker.set_probing(True)
        self._note_locked(rec)
        self._post("ejected", rec, ejection.reason, ejected_until=ejection.until)

    def _maybe_readmit_locked(self, rec: EndpointRecord) -> bool:
        """Readmit an ejected endpoint whose ejection time has passed, if active health
        checking (when on) has seen ``healthyThreshold`` good probes in a row."""
        det = self.outliers
        now = self._clock()
        if det is not None and not det.expired(rec.address, now):
            return False
        tracker = rec.tracker
        if det is not None and tracker is not None and not tracker.readmit_ok():
            if "awaiting" not in rec.eject_reason:
                rec.eject_reason += (f"; ejection over, awaiting {tracker.healthy_threshold} "
                                     "good health probes in a row")
            return False
        if det is not None:
            det.uneject(rec.address)
        self._readmit_locked(rec, "ejection time over")
        return True

    def _readmit_locked(self, rec: EndpointRecord, reason: str) -> None:
        rec.ejected, rec.ejected_until, rec.eject_reason = False, None, ""
        rec.ramp_pending = True
        if rec.checker is not None:
            rec.checker.set_probing(False)
        self._note_locked(rec)
        self._post("readmitted", rec, reason)

    def _sync_ejections_locked(self) -> None:
        """Make records agree with the detector (after a no-op config or a detach)."""
        det = self.outliers
        for rec in self._records().values():
            if rec.ejected and (det is None or not det.is_ejected(rec.address)):
                self._readmit_locked(rec, "outlier detection turned off")
