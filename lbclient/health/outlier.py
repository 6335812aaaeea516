"""Passive outlier detection as gRFC A50 specifies it, plus consecutive-failure ejection.

Pure counting and ejection math (stdlib only): time comes from an injected clock and the
enforcement draws from an injected ``random.Random``, so tests build state and call
:meth:`OutlierDetector.sweep` directly instead of sleeping.

Threading: :meth:`OutlierDetector.record` runs on caller threads (from a picker's
``on_done``) and only touches counters under the detector's own lock. Ejection state
changes (:meth:`sweep`, :meth:`eject`, :meth:`uneject`, :meth:`set_addresses`,
:meth:`reconfigure`) are made by the owner (the balancer, one event at a time); they take
the same lock, so readers always see consistent state. ``on_trip`` is called outside the
lock.
"""

from __future__ import annotations

import collections
import functools
import itertools
import math
import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .codes import SERVER_FAILURE_CODES, classify

# The ``PolicyContext.options`` key under which the balancer offers itself as the
# :class:`OutlierHost` of the ``outlier_detection`` policy.
HOST_OPTION = "lbclient.outlier_host"


@dataclass(frozen=True)
class SuccessRateEjection:
    """``successRateEjection`` (A50 defaults)."""

    stdev_factor: int = 1900            # threshold = mean - stdev * stdev_factor / 1000
    enforcement_percentage: int = 100   # % chance an outlier is actually ejected
    minimum_hosts: int = 5              # addresses with enough volume needed to run at all
    request_volume: int = 100           # calls in the interval for an address to count


@dataclass(frozen=True)
class FailurePercentageEjection:
    """``failurePercentageEjection`` (A50 defaults)."""

    threshold: int = 85                 # eject when failure % is greater than this
    enforcement_percentage: int = 100
    minimum_hosts: int = 5              # addresses (in the whole list) needed to run at all
    request_volume: int = 50


@dataclass(frozen=True)
class OutlierConfig:
    """The ejection part of an ``outlier_detection`` config (durations in seconds).

    ``consecutive_failures`` (lbclient, like Envoy's consecutive 5xx): eject as soon as that
    many calls in a row failed, without waiting for the interval; None disables it.
    ``failure_codes``: the status codes that count as failures.
    ``split_local`` (Envoy's ``split_external_local_origin_errors``): local-origin
    failures (connection failures, resets, timeouts; see ``lbclient.health.origin``) are
    kept apart: they count only toward ``consecutive_local_failures`` (eject after that
    many in a row), while the other algorithms and ``consecutive_failures`` see only the
    statuses servers chose.
    """

    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 10
    success_rate: SuccessRateEjection | None = None
    failure_percentage: FailurePercentageEjection | None = None
    consecutive_failures: int | None = None
    failure_codes: frozenset[str] = field(default=SERVER_FAILURE_CODES)
    split_local: bool = False
    consecutive_local_failures: int | None = None

    @property
    def counting(self) -> bool:
        """False for A50's "no-op" config: nothing to count, no timer, nobody ejected."""
        return (self.success_rate is not None or self.failure_percentage is not None
                or self.consecutive_failures is not None
                or (self.split_local and self.consecutive_local_failures is not None))

    def ejection_duration(self, multiplier: int) -> float:
        """A50: ``min(base * multiplier, max(base, max_ejection_time))``."""
        return min(self.base_ejection_time * multiplier,
                   max(self.base_ejection_time, self.max_ejection_time))


class Bucket:
    """One interval's call counts. Successes are counted without a lock (an
    ``itertools.count`` increment is atomic); failures under the detector's lock."""

    __slots__ = ("_successes", "failures")

    def __init__(self) -> None:
        self._successes = itertools.count()
        self.failures = 0

    def success(self) -> None:
        next(self._successes)

    @property
    def successes(self) -> int:
        return int(repr(self._successes)[6:-1])     # "count(42)": read, not advanced

    @successes.setter
    def successes(self, value: int) -> None:
        self._successes = itertools.count(value)

    @property
    def volume(self) -> int:
        return self.successes + self.failures


class AddressState:
    """One address's map entry (A50): two call buckets, the ejection timestamp and the
    ejection time multiplier; plus the consecutive-failure run and why it was ejected."""

    __slots__ = ("active", "inactive", "consecutive", "consecutive_local", "ejected_at",
                 "multiplier", "reason", "tripped")

    def __init__(self) -> None:
        self.active = Bucket()
        self.inactive = Bucket()
        self.consecutive = 0
        self.consecutive_local = 0           # local-origin failures in a row (split mode)
        self.ejected_at: float | None = None
        self.multiplier = 0
        self.reason = ""
        self.tripped = CONSECUTIVE     # the detection method of the last trip

    @property
    def ejected(self) -> bool:
        return self.ejected_at is not None

    def clear(self) -> None:
        self.active, self.inactive = Bucket(), Bucket()
        self.consecutive = self.consecutive_local = 0


@dataclass(frozen=True)
class Ejection:
    address: str
    reason: str
    until: float


@dataclass(frozen=True)
class SweepResult:
    """What one interval sweep decided: newly ejected addresses, and ejected addresses
    whose ejection time has passed (the owner un-ejects them, possibly after asking
    active health checking)."""

    ejected: tuple[Ejection, ...] = ()
    expired: tuple[str, ...] = ()


def mean_stdev(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (as A50 and Envoy compute them)."""
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / len(values)
    return mean, math.sqrt(variance)


class OutlierHost(Protocol):
    """What the balancer offers the ``outlier_detection`` policy: the channel's detector
    (ejections change eligibility, so the balancer owns them) and its release."""

    def attach_outlier_detection(self, config: OutlierConfig) -> OutlierDetector: ...

    def detach_outlier_detection(self, detector: OutlierDetector) -> None: ...


def _record_outcome(detector: OutlierDetector, address: str, outcome: Any) -> None:
    detector.record(address, outcome.code, outcome.local_origin)


# Detection methods (gRFC A91's grpc.lb.outlier_detection.detection_method, plus the
# consecutive-failure ones A50 lacks) and the reasons a detected outlier stays in.
SUCCESS_RATE = "success_rate"
FAILURE_PERCENTAGE = "failure_percentage"
CONSECUTIVE = "consecutive_failures"
CONSECUTIVE_LOCAL = "consecutive_local_origin_failures"
ENFORCEMENT_PERCENTAGE = "enforcement_percentage"
MAX_EJECTION_OVERFLOW = "max_ejection_overflow"


class OutlierDetector:
    def __init__(self, config: OutlierConfig, clock: Callable[[], float],
                 rng: random.Random | None = None) -> None:
        self._config = config
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._states: dict[str, AddressState] = {}
        self._timer_start: float | None = None
        # consecutive-failure trigger: on_trip(address, reason)
        self.on_trip: Callable[[str, str], None] | None = None
        # Every detected outlier, counted under the lock: (detection method, "" when it
        # was ejected or the reason it was not) -> count. The owner may share one
        # Counter across detectors, so totals survive a config change (gRFC A91).
        self.decisions: collections.Counter[tuple[str, str]] = collections.Counter()

    @property
    def config(self) -> OutlierConfig:
        return self._config

    # ----------------------------------------------------------------- configuration
    def reconfigure(self, config: OutlierConfig) -> float | None:
        """Apply a (new) config; returns the delay until the next sweep, None for no timer.

        A50: the first config starts the timer for a full interval and clears the
        counters; a later one keeps the timer's phase (interval minus the time since the
        last sweep, at least 0). A no-op config stops the timer, un-ejects everybody and
        resets every multiplier (the owner must re-read ejection state)."""
        now = self._clock()
        with self._lock:
            self._config = config
            if not config.counting:
                self._timer_start = None
                for st in self._states.values():
                    st.ejected_at, st.multiplier, st.reason = None, 0, ""
                return None
            if self._timer_start is None:
                self._timer_start = now
                for st in self._states.values():
                    st.clear()
                return config.interval
            return max(config.interval - (now - self._timer_start), 0.0)

    def set_addresses(self, addresses: Iterable[str]) -> None:
        """Create an entry for each new address and drop the entries of missing ones."""
        wanted = list(dict.fromkeys(addresses))
        with self._lock:
            self._states = {a: self._states.get(a) or AddressState() for a in wanted}

    def addresses(self) -> list[str]:
        with self._lock:
            return list(self._states)

    # ----------------------------------------------------------------- counting
    def record(self, address: str, code: str, local: bool = False) -> None:
        """Count one finished call (any thread; a success takes no lock). ``local``: a
        local-origin failure (see :class:`OutlierConfig` ``split_local``). Calls
        ``on_trip(address, reason)`` when a consecutive-failure limit is reached on a
        non-ejected address."""
        cfg = self._config
        if local and cfg.split_local:
            self._record_local(address, cfg)
            return
        verdict = classify(code, cfg.failure_codes)
        if verdict is None:
            return
        if not verdict:
            st = self._states.get(address)
            if st is not None:
                st.active.success()
                st.consecutive = 0
                if cfg.split_local:
                    st.consecutive_local = 0     # the server answered: the host is alive
            return
        trip = False
        with self._lock:
            st = self._states.get(address)
            if st is None:
                return
            st.active.failures += 1
            st.consecutive += 1
            if cfg.split_local:
                st.consecutive_local = 0
            limit = cfg.consecutive_failures
            trip = limit is not None and st.consecutive >= limit and not st.ejected
            if trip:
                st.tripped = CONSECUTIVE
        if trip and self.on_trip is not None:
            self.on_trip(address, f"{limit} consecutive failures")

    def _record_local(self, address: str, cfg: OutlierConfig) -> None:
        limit = cfg.consecutive_local_failures
        with self._lock:
            st = self._states.get(address)
            if st is None:
                return
            st.consecutive_local += 1
            trip = limit is not None and st.consecutive_local >= limit and not st.ejected
            if trip:
                st.tripped = CONSECUTIVE_LOCAL
        if trip and self.on_trip is not None:
            self.on_trip(address, f"{limit} consecutive local-origin failures "
                                  "(connection failures, resets, timeouts)")

    def recorder(self, address: str) -> Callable[[Any], None]:
        """A pick's ``on_done`` that counts the outcome for ``address``."""
        return functools.partial(_record_outcome, self, address)

    # ----------------------------------------------------------------- ejection
    def _may_eject(self, st: AddressState) -> bool:
        """A50's max-ejection-percent check (one ejection always fits, as in gRPC), plus
        lbclient's rule: never eject the last address that is not ejected."""
        if st.ejected:
            return False
        total = len(self._states)
        ejected = sum(1 for s in self._states.values() if s.ejected)
        if ejected + 1 >= total:
            return False
        return ejected == 0 or 100.0 * ejected / total < self._config.max_ejection_percent

    def _eject(self, address: str, st: AddressState, now: float, reason: str) -> Ejection:
        st.ejected_at = now
        st.multiplier += 1
        st.reason = reason
        st.consecutive = st.consecutive_local = 0
        return Ejection(address, reason, now + self._config.ejection_duration(st.multiplier))

    def eject(self, address: str, reason: str) -> Ejection | None:
        """Eject now if the limits allow it (used for consecutive failures: counted in
        :attr:`decisions` under the method of the address's last trip)."""
        with self._lock:
            st = self._states.get(address)
            if st is None or st.ejected:
                return None
            if not self._may_eject(st):
                self.decisions[st.tripped, MAX_EJECTION_OVERFLOW] += 1
                return None
            self.decisions[st.tripped, ""] += 1
            return self._eject(address, st, self._clock(), reason)

    def _decide(self, st: AddressState, method: str, percentage: int) -> bool:
        """A detected outlier: eject it? (A50's order: the max-ejection limit, then the
        enforcement percentage's draw), counted in :attr:`decisions`."""
        if st.ejected:
            return False
        if not self._may_eject(st):
            self.decisions[method, MAX_EJECTION_OVERFLOW] += 1
            return False
        if not self._enforced(percentage):
            self.decisions[method, ENFORCEMENT_PERCENTAGE] += 1
            return False
        self.decisions[method, ""] += 1
        return True

    def uneject(self, address: str) -> bool:
        with self._lock:
            st = self._states.get(address)
            if st is None or not st.ejected:
                return False
            st.ejected_at, st.reason = None, ""
            st.consecutive = st.consecutive_local = 0
            return True

    def is_ejected(self, address: str) -> bool:
        with self._lock:
            st = self._states.get(address)
            return st is not None and st.ejected

    def ejected_until(self, address: str) -> float | None:
        with self._lock:
            st = self._states.get(address)
            if st is None or st.ejected_at is None:
                return None
            return st.ejected_at + self._config.ejection_duration(st.multiplier)

    def expired(self, address: str, now: float) -> bool:
        """True when ``address`` is ejected and its ejection time has passed."""
        until = self.ejected_until(address)
        return until is not None and now >= until

    def multiplier(self, address: str) -> int:
        with self._lock:
            st = self._states.get(address)
            return 0 if st is None else st.multiplier

    def last_interval(self, address: str) -> tuple[int, int]:
        """(successes, failures) counted in the last complete interval."""
        with self._lock:
            st = self._states.get(address)
            return (0, 0) if st is None else (st.inactive.successes, st.inactive.failures)

    # ----------------------------------------------------------------- the interval sweep
    def sweep(self) -> SweepResult:
        """One run of A50's interval timer: swap buckets, run success rate then failure
        percentage, shrink multipliers of non-ejected addresses, report expirations."""
        now = self._clock()
        ejected: list[Ejection] = []
        with self._lock:
            cfg = self._config
            self._timer_start = now
            for st in self._states.values():
                st.inactive, st.active = st.active, Bucket()
            if cfg.success_rate is not None:
                ejected += self._success_rate(cfg.success_rate, now)
            if cfg.failure_percentage is not None:
                ejected += self._failure_percentage(cfg.failure_percentage, now)
            just = {e.address for e in ejected}
            expired: list[str] = []
            for address, st in self._states.items():
                if not st.ejected:
                    if st.multiplier > 0:
                        st.multiplier -= 1
                elif address not in just:
                    assert st.ejected_at is not None
                    if now >= st.ejected_at + cfg.ejection_duration(st.multiplier):
                        expired.append(address)
        return SweepResult(tuple(ejected), tuple(expired))

    def _enforced(self, percentage: int) -> bool:
        return self._rng.randrange(100) < percentage

    def _success_rate(self, sre: SuccessRateEjection, now: float) -> list[Ejection]:
        candidates = [(a, st) for a, st in self._states.items()
                      if st.inactive.volume >= sre.request_volume and st.inactive.volume > 0]
        if len(candidates) < sre.minimum_hosts or not candidates:
            return []
        rates = [st.inactive.successes / st.inactive.volume for _, st in candidates]
        mean, stdev = mean_stdev(rates)
        required = mean - stdev * (sre.stdev_factor / 1000.0)
        out: list[Ejection] = []
        for (address, st), rate in zip(candidates, rates, strict=True):
            if rate < required and self._decide(st, SUCCESS_RATE,
                                                sre.enforcement_percentage):
                out.append(self._eject(address, st, now,
                                       f"success rate {rate:.1%} below {required:.1%} "
                                       f"(mean {mean:.1%}, stdev {stdev:.1%})"))
        return out

    def _failure_percentage(self, fpe: FailurePercentageEjection,
                            now: float) -> list[Ejection]:
        if len(self._states) < fpe.minimum_hosts:
            return []
        out: list[Ejection] = []
        for address, st in self._states.items():
            volume = st.inactive.volume
            if volume < fpe.request_volume or volume == 0:
                continue
            pct = 100.0 * st.inactive.failures / volume
            if pct > fpe.threshold and self._decide(st, FAILURE_PERCENTAGE,
                                                    fpe.enforcement_percentage):
                out.append(self._eject(address, st, now,
                                       f"failure percentage {pct:.1f}% above "
                                       f"{fpe.threshold}% ({st.inactive.failures}/{volume})"))
        return out
