"""Active health and outlier ejection inside the balancer (a mixin of
:class:`lbclient.balancer.balancer.Balancer`; stdlib only).

Everything here runs under the balancer's lock, like every other control-plane event:
health reports from the probers, the outlier detector's interval sweep, consecutive-failure
trips, and the ``outlier_detection`` policy attaching or detaching. The rules:

* a health checker runs while an endpoint's connection is READY (started and stopped by
  the balancer's connectivity handling); stale reports from a stopped checker are ignored;
* an ejection takes the endpoint out at once and (watch mode) turns on Check probes;
* an ejected endpoint is readmitted when its ejection time has passed and, with active
  health checking, its last ``healthyThreshold`` probes were good — checked at each sweep
  and at each health report.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any, Protocol

from .codes import SERVER_FAILURE_CODES
from .events import EventKind
from .outlier import Ejection, OutlierConfig, OutlierDetector
from .record import EndpointRecord
from .tracker import HealthReport

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



class EndpointFitness:
    """The balancer's health and ejection handling. The balancer provides the state
    below and ``_post``, ``_rebuild_locked`` and ``_after_change``."""

    _lock: threading.RLock
    _records: dict[str, EndpointRecord]
    _closed: bool
    _clock: Callable[[], float]
    _rng: random.Random
    _scheduler: Any
    _health_config: Any
    _health_factory: HealthCheckerFactory | None
    _outliers: OutlierDetector | None
    _outlier_refs: int
    _sweep_timer: Any
    failure_codes: frozenset[str]

    def _post(self, kind: EventKind, rec: EndpointRecord, reason: str = "", *,
              healthy: bool | None = None, ejected_until: float | None = None) -> None:
        raise NotImplementedError

    def _rebuild_locked(self) -> None:
        raise NotImplementedError

    def _after_change(self) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------- active health
    def _start_checker_locked(self, rec: EndpointRecord) -> None:
        if self._health_config is None or self._health_factory is None or rec.tracker is None:
            return
        rec.tracker.reset()
        token = object()
        rec.checker_token = token

        def report(r: HealthReport) -> None:
            self._on_health_report(rec, token, r)

        rec.checker = self._health_factory.start(rec.handle, self._health_config, report)
        if rec.ejected:
            rec.checker.set_probing(True)

    def _stop_checker_locked(self, rec: EndpointRecord) -> list[HealthChecker]:
        checker, rec.checker, rec.checker_token = rec.checker, None, None
        if rec.tracker is not None:
            rec.tracker.reset()
        return [checker] if checker is not None else []

    def _on_health_report(self, rec: EndpointRecord, token: object, report: HealthReport) -> None:
        with self._lock:
            if (self._closed or self._records.get(rec.address) is not rec
                    or rec.checker_token is not token or rec.tracker is None):
                return
            tracker = rec.tracker
            before = tracker.state
            changed = tracker.apply(report)
            if report.kind == "unimplemented" and not rec.unimplemented_logged:
                rec.unimplemented_logged = True
                health_log.warning("endpoint %s does not implement grpc.health.v1: "
                                   "treating it as healthy", rec.address)
            healthy = tracker.healthy
            if changed and healthy is not None and healthy != rec.reported_health:
                rec.reported_health = healthy
                if healthy and before == "unhealthy":
                    rec.ramp_pending = True
                self._post("health_changed", rec, tracker.reason, healthy=healthy)
            readmitted = rec.ejected and self._maybe_readmit_locked(rec)
            if changed or readmitted:
                self._rebuild_locked()
        self._after_change()

    # ----------------------------------------------------------------- outlier ejection
    def attach_outlier_detection(self, config: OutlierConfig) -> OutlierDetector:
        """Called by the ``outlier_detection`` policy when it is created: returns the
        channel's detector (kept across config changes, as A50 keeps its timer and
        counters) and starts its interval timer."""
        with self._lock:
            det = self._outliers
            if det is None:
                det = OutlierDetector(config, self._clock, self._rng)
                det.set_addresses(self._records)
                det.on_trip = self._on_trip
                self._outliers = det
            self._outlier_refs += 1
            self._schedule_sweep(det.reconfigure(config))
            self.failure_codes = config.failure_codes
            self._sync_ejections_locked()
        return det

    def detach_outlier_detection(self, detector: OutlierDetector) -> None:
        """The policy is gone: when no policy uses the detector any more, stop the
        timer and readmit every ejected endpoint."""
        with self._lock:
            if detector is not self._outliers:
                return
            self._outlier_refs -= 1
            if self._outlier_refs > 0:
                return
            self._outliers = None
            self._schedule_sweep(None)
            self.failure_codes = SERVER_FAILURE_CODES
            if not self._closed:
                self._sync_ejections_locked()
                self._rebuild_locked()
        self._after_change()

    def _schedule_sweep(self, delay: float | None) -> None:
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        if delay is not None and self._scheduler is not None and not self._closed:
            self._sweep_timer = self._scheduler.call_later(delay, self.sweep)

    def sweep(self) -> None:
        """The outlier detector's interval (runs on the scheduler; tests call it)."""
        with self._lock:
            det = self._outliers
            if det is None or self._closed:
                return
            result = det.sweep()
            for ejection in result.ejected:
                self._apply_ejection_locked(ejection)
            for address in result.expired:
                rec = self._records.get(address)
                if rec is not None:
                    self._maybe_readmit_locked(rec)
            self._rebuild_locked()
            self._schedule_sweep(max(det.config.interval, _MIN_SWEEP))
        self._after_change()

    def _on_trip(self, address: str) -> None:
        """Consecutive failures reached the limit (a caller's thread)."""
        with self._lock:
            det = self._outliers
            if det is None or self._closed:
                return
            limit = det.config.consecutive_failures
            ejection = det.eject(address, f"{limit} consecutive failures")
            if ejection is None:
                return
            self._apply_ejection_locked(ejection)
            self._rebuild_locked()
        self._after_change()

    def _apply_ejection_locked(self, ejection: Ejection) -> None:
        rec = self._records.get(ejection.address)
        if rec is None:
            return
        rec.ejected, rec.ejected_until, rec.eject_reason = True, ejection.until, ejection.reason
        if rec.tracker is not None:
            rec.tracker.reset_streak()
        if rec.checker is not None:
            rec.checker.set_probing(True)
        self._post("ejected", rec, ejection.reason, ejected_until=ejection.until)

    def _maybe_readmit_locked(self, rec: EndpointRecord) -> bool:
        """Readmit an ejected endpoint whose ejection time has passed, if active health
        checking (when on) has seen ``healthyThreshold`` good probes in a row."""
        det = self._outliers
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
        self._post("readmitted", rec, reason)

    def _sync_ejections_locked(self) -> None:
        """Make records agree with the detector (after a no-op config or a detach)."""
        det = self._outliers
        for rec in self._records.values():
            if rec.ejected and (det is None or not det.is_ejected(rec.address)):
                self._readmit_locked(rec, "outlier detection turned off")
