"""The metrics core: a sink protocol and a bounded per-channel collector (stdlib only).

Contract:
  * A :class:`MetricsSink` receives events: one ``call_ended`` per finished attempt (from
    the thread that finished it: a caller thread or grpc's callback thread), endpoint
    events (ejected, readmitted, healthy, unhealthy, added, removed) and resolver updates
    and errors (from the channel's control-plane threads). Methods must be quick and must
    not raise; they never block a call for longer than a dict update under a lock.
  * :class:`ChannelMetrics` is the stock sink: it aggregates per endpoint and per channel
    and hands out immutable :class:`ChannelSnapshot` values; in-flight counts and live
    state are read from ``channel.endpoints()`` at snapshot time. ``picks`` = attempts
    ended since attaching + attempts in flight.

Label bounds (what keeps an exporter's series count finite):
  * ``address``: at most ``max_endpoints`` (default :data:`MAX_ENDPOINTS` = 100) distinct
    addresses per channel. When the table is full, a removed endpoint's record is folded
    into the ``"other"`` record to make room; if every recorded endpoint is still present,
    the new address is counted under ``"other"``. So a channel exports at most
    ``max_endpoints + 1`` address values, and channel totals never go down.
  * ``code``: gRPC's 17 status code names; anything else is counted as ``UNKNOWN``.
  * ``event``: the six endpoint event kinds in :data:`ENDPOINT_EVENTS`.
  * latency: the fixed buckets :data:`LATENCY_BUCKETS` (seconds).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

MAX_ENDPOINTS = 100
OTHER = "other"

# Upper bounds (seconds) of the latency histogram; a last bucket catches the rest.
LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                      0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

STATUS_CODES: tuple[str, ...] = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED")
_CODES = frozenset(STATUS_CODES)

ENDPOINT_EVENTS: tuple[str, ...] = ("added", "removed", "ejected", "readmitted", "healthy",
                                    "unhealthy")
_EVENTS = frozenset(ENDPOINT_EVENTS)


class MetricsSink(Protocol):
    """Where a channel's events go. Every method may be called from any thread."""

    def call_ended(self, address: str, code: str, latency: float) -> None:
        """One attempt on ``address`` ended with status ``code`` after ``latency`` s."""

    def endpoint_event(self, address: str, kind: str) -> None:
        """``kind`` is one of :data:`ENDPOINT_EVENTS`."""

    def resolver_update(self, endpoints: int) -> None:
        """The resolver delivered a snapshot of ``endpoints`` endpoints."""

    def resolver_error(self, message: str) -> None:
        """The resolver failed (the channel keeps its last endpoints)."""


def retry_counts(channel: Any) -> tuple[int, int]:
    """``channel``'s retry gate counts: (retries_granted, retries_refused)."""
    return (int(getattr(channel, "retries_granted", 0)),
            int(getattr(channel, "retries_refused", 0)))


def normalize_code(code: str) -> str:
    """A status code name within the bounded label set."""
    return code if code in _CODES else "UNKNOWN"


@dataclass(frozen=True)
class Histogram:
    """Per-bucket counts: ``counts[i]`` for latencies <= ``bounds[i]`` (and above
    ``bounds[i-1]``); ``counts[-1]`` for the rest. ``sum`` in seconds."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float
    count: int

    def cumulative(self) -> list[int]:
        out, total = [], 0
        for c in self.counts:
            total += c
            out.append(total)
        return out


@dataclass(frozen=True)
class EndpointMetrics:
    address: str
    present: bool                      # still one of the channel's endpoints
    picks: int
    in_flight: int
    calls: Mapping[str, int]           # status code name -> attempts
    latency: Histogram
    events: Mapping[str, int]          # ENDPOINT_EVENTS kind -> count
    # Live state from the channel's snapshot (None/False for removed endpoints):
    connectivity: str | None = None
    healthy: bool | None = None
    ejected: bool = False
    eligible: bool = False
    overflows: int = 0                 # circuit breaker: picks that skipped it (it was full)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


@dataclass(frozen=True)
class ChannelSnapshot:
    target: str
    endpoints: tuple[EndpointMetrics, ...]
    resolver_updates: int
    resolver_errors: int
    calls: Mapping[str, int] = field(default_factory=dict)   # channel totals by code
    breaker_rejections: int = 0        # circuit breaker: calls refused by maxRequests
    retries_granted: int = 0           # retry gate (retryBudget / retryThrottling): let
    retries_refused: int = 0           # through / refused retries and hedges


class _Record:
    """Mutable per-address aggregate (guarded by the collector's lock)."""

    __slots__ = ("calls", "buckets", "lat_sum", "lat_count", "events")

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.lat_sum = 0.0
        self.lat_count = 0
        self.events: dict[str, int] = {}

    def merge_into(self, other: _Record) -> None:
        for k, v in self.calls.items():
            other.calls[k] = other.calls.get(k, 0) + v
        for i, v in enumerate(self.buckets):
            other.buckets[i] += v
        other.lat_sum += self.lat_sum
        other.lat_count += self.lat_count
        for k, v in self.events.items():
            other.events[k] = other.events.get(k, 0) + v


EndpointSource = Callable[[], list[Any]]


class ChannelMetrics:
    """Aggregates one channel's events (a :class:`MetricsSink`).

    ``endpoints`` returns the channel's current ``EndpointInfo`` list (duck-typed:
    ``address``, ``in_flight``, ``connectivity``, ``healthy``, ``ejected_until``,
    ``eligible``); it is called only from :meth:`snapshot`.
    """

    def __init__(self, target: str, endpoints: EndpointSource | None = None, *,
                 max_endpoints: int = MAX_ENDPOINTS,
                 rejections: Callable[[], int] | None = None,
                 retries: Callable[[], tuple[int, int]] | None = None) -> None:
        if max_endpoints < 1:
            raise ValueError(f"max_endpoints must be >= 1, got {max_endpoints}")
        self.target = target
        self.max_endpoints = max_endpoints
        self._endpoints = endpoints
        self._rejections = rejections     # the channel's circuit breaker rejections
        self._retries = retries           # its retry gate's (granted, refused)
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}
        self._present: set[str] = set()
        self._other: _Record | None = None
        self._resolver_updates = 0
        self._resolver_errors = 0
        self.attachment: Any = None     # set by lbclient.metrics.instrument()

    # ----------------------------------------------------------------- sink
    def _record(self, address: str) -> _Record:
        """The record for ``address`` (lock held), within the label bound."""
        rec = self._records.get(address)
        if rec is not None:
            return rec
        if len(self._records) >= self.max_endpoints:
            gone = next((a for a in self._records if a not in self._present), None)
            if gone is None:
                return self._other_record()
            self._records.pop(gone).merge_into(self._other_record())
        rec = self._records[address] = _Record()
        return rec

    def _other_record(self) -> _Record:
        if self._other is None:
            self._other = _Record()
        return self._other

    def call_ended(self, address: str, code: str, latency: float) -> None:
        code = normalize_code(code)
        i = bisect.bisect_left(LATENCY_BUCKETS, latency)
        with self._lock:
            self._present.add(address)
            rec = self._record(address)
            rec.calls[code] = rec.calls.get(code, 0) + 1
            rec.buckets[i] += 1
            rec.lat_sum += max(latency, 0.0)
            rec.lat_count += 1

    def endpoint_event(self, address: str, kind: str) -> None:
        if kind not in _EVENTS:
            return
        with self._lock:
            if kind == "added":
                self._present.add(address)
            elif kind == "removed":
                self._present.discard(address)
            rec = self._record(address)
            rec.events[kind] = rec.events.get(kind, 0) + 1

    def resolver_update(self, endpoints: int) -> None:
        with self._lock:
            self._resolver_updates += 1

    def resolver_error(self, message: str) -> None:
        with self._lock:
            self._resolver_errors += 1

    # ----------------------------------------------------------------- reading
    def snapshot(self) -> ChannelSnapshot:
        """Everything recorded so far, plus live in-flight counts and state from the
        channel."""
        live = list(self._endpoints()) if self._endpoints is not None else []
        with self._lock:
            self._present = {info.address for info in live}
            infos: dict[str, Any] = {}
            other_in_flight = 0
            for info in live:
                rec = self._record(info.address)
                if rec is self._other:
                    other_in_flight += info.in_flight
                    continue
                infos[info.address] = info
            rows = [self._export(a, r, infos.get(a)) for a, r in self._records.items()]
            if self._other is not None:
                row = self._export(OTHER, self._other, None)
                rows.append(replace(row, in_flight=other_in_flight,
                                    picks=row.picks + other_in_flight))
            totals: dict[str, int] = {}
            for row in rows:
                for k, v in row.calls.items():
                    totals[k] = totals.get(k, 0) + v
            rejected = self._rejections() if self._rejections is not None else 0
            granted, refused = self._retries() if self._retries is not None else (0, 0)
            return ChannelSnapshot(self.target, tuple(rows), self._resolver_updates,
                                   self._resolver_errors, totals, rejected, granted, refused)

    @staticmethod
    def _export(address: str, rec: _Record, info: Any) -> EndpointMetrics:
        return EndpointMetrics(
            # Every placed attempt either ended (counted by call_ended) or is in flight,
            # so this is exact, monotone, and survives an endpoint leaving and coming back
            # (the channel's own per-endpoint counter restarts then).
            address=address, present=info is not None,
            picks=sum(rec.calls.values()) + (info.in_flight if info is not None else 0),
            in_flight=info.in_flight if info is not None else 0,
            calls=dict(rec.calls),
            latency=Histogram(LATENCY_BUCKETS, tuple(rec.buckets), rec.lat_sum, rec.lat_count),
            events=dict(rec.events),
            connectivity=info.connectivity if info is not None else None,
            healthy=info.healthy if info is not None else None,
            ejected=info is not None and info.ejected_until is not None,
            eligible=info is not None and bool(info.eligible),
            overflows=int(getattr(info, "overflows", 0)) if info is not None else 0)
