"""One endpoint's mutable state in the balancer, and its immutable snapshot (stdlib only).

:class:`EndpointRecord` is guarded by the balancer lock (except ``stats`` and ``window``,
which are thread-safe and fed by finishing calls). :class:`EndpointInfo` is what
``channel.endpoints()`` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..connectivity import Connectivity
from ..endpoint import Endpoint
from ..health.options import SlowStartConfig
from ..health.tracker import HealthTracker
from ..health.window import RecentWindow
from .picker import EndpointStats

_NOT_READY = {Connectivity.IDLE: "idle", Connectivity.CONNECTING: "connecting",
              Connectivity.TRANSIENT_FAILURE: "failed", Connectivity.SHUTDOWN: "shut down"}


class Classification(NamedTuple):
    """One endpoint's state as the balancer counts it (:meth:`EndpointRecord.classify`)."""

    connectivity: Connectivity
    queueing: bool        # connecting and not failed since READY, or awaiting health
    reason: str           # unfit_reason(): "" when fit
    connected: bool
    fit: bool


@dataclass(frozen=True)
class EndpointInfo:
    """An immutable per-endpoint snapshot for ``channel.endpoints()``.

    ``healthy``: None when not health-checked or while waiting for the first answer
    (``health`` tells which: "unchecked", "pending", "healthy", "unhealthy", or
    "disabled" for a server without the health service, which counts as healthy).
    ``eligible``: the current picker may choose it (panic mode included).
    ``ejected_until``: channel-clock time its ejection ends (None if not ejected);
    ``ejections``: the A50 ejection-time multiplier. ``calls``/``failures``: since the
    endpoint was added; ``recent_calls``/``recent_failures``: within the last
    ``window`` seconds (failures use the channel's failure status codes).
    ``effective_weight``: the weight pickers get (policy weight x slow start);
    ``slow_start``: ramp progress in [0, 1), None when not ramping. ``panic``: the
    channel is in panic mode (the same for every endpoint).
    """

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
    health: str = "unchecked"
    health_reason: str = ""
    ejected: bool = False
    ejections: int = 0
    recent_calls: int = 0
    recent_failures: int = 0
    window: float = 10.0
    effective_weight: float = 0.0
    slow_start: float | None = None
    panic: bool = False
    unfit_reason: str = field(default="", compare=False)
    overflows: int = 0     # picks that skipped it: maxConcurrentRequests in flight
    local_failures: int = 0    # failed calls of local origin (connect, reset, timeout)


class EndpointRecord:
    """The balancer's mutable view of one endpoint (guarded by the balancer lock)."""

    __slots__ = ("endpoint", "handle", "stats", "window", "connectivity", "tracker",
                 "checker", "checker_token", "reported_health",
                 "ejected", "ejected_until", "eject_reason", "added_at", "ready_since",
                 "ramp_pending", "ramp_start", "effective_weight", "picked",
                 "failed_since_ready", "ready_count", "index", "accounted")

    def __init__(self, endpoint: Endpoint, stats: EndpointStats, now: float,
                 clock: Callable[[], float]) -> None:
        self.endpoint = endpoint
        self.handle: Any = None
        self.stats = stats
        self.window = RecentWindow(clock)
        self.connectivity = Connectivity.IDLE
        self.tracker: HealthTracker | None = None     # None: no active health checking
        self.checker: Any = None                      # the running prober, while READY
        self.checker_token: object | None = None      # tells stale reports apart
        self.reported_health: bool | None = None      # last health in an event
        self.ejected = False
        self.ejected_until: float | None = None
        self.eject_reason = ""
        self.added_at = now
        self.ready_since: float | None = None
        self.ramp_pending = True                      # start slow start when next picked
        self.ramp_start: float | None = None
        self.effective_weight = float(endpoint.weight)
        self.picked = False
        # gRPC's sticky TRANSIENT_FAILURE: once a connection attempt failed, the endpoint
        # counts as failed (calls fail fast) until it is READY again, even while it is
        # reconnecting; before any failure, a connecting endpoint makes calls wait.
        self.failed_since_ready = False
        self.ready_count = 0                          # times the connection became READY
        self.index = 0                                # position in the resolver's order
        # what the balancer's RecordTally last counted for it (see classify); None: not
        # counted (new, or removed)
        self.accounted: Classification | None = None

    @property
    def address(self) -> str:
        return self.endpoint.address

    @property
    def healthy(self) -> bool | None:
        return None if self.tracker is None else self.tracker.healthy

    def connected(self) -> bool:
        """READY, and with health checking, past the first answer (A17)."""
        return self.connectivity is Connectivity.READY and (
            self.tracker is None or self.tracker.healthy is not None)

    def fit(self) -> bool:
        return self.connected() and self.healthy is not False and not self.ejected

    def classify(self) -> Classification:
        """Everything the balancer counts about this endpoint, read now: its
        connectivity, whether it makes calls wait (see ``Balancer._queue_calls``), its
        unfit reason, :meth:`connected` and :meth:`fit`."""
        state = self.connectivity
        tracker = self.tracker
        healthy = None if tracker is None else tracker.healthy
        ready = state is Connectivity.READY
        connected = ready and (tracker is None or healthy is not None)
        queueing = ((state is Connectivity.IDLE or state is Connectivity.CONNECTING)
                    and not self.failed_since_ready) or (ready and tracker is not None
                                                         and healthy is None)
        return Classification(state, queueing, self.unfit_reason(), connected,
                              connected and healthy is not False and not self.ejected)

    def unfit_reason(self) -> str:
        if self.connectivity is not Connectivity.READY:
            return _NOT_READY.get(self.connectivity, "not ready")
        if self.tracker is not None and self.tracker.healthy is None:
            return "waiting for health"
        if self.ejected:
            return "ejected"
        if self.healthy is False:
            return "unhealthy"
        return ""

    def info(self, now: float, multiplier: int, slow: SlowStartConfig | None,
             panic: bool) -> EndpointInfo:
        calls, failures = self.window.counts()
        progress = None
        if slow is not None and self.ramp_start is not None:
            progress = min(max((now - self.ramp_start) / slow.window, 0.0), 1.0)
            if progress >= 1.0:
                progress = None
        tracker = self.tracker
        return EndpointInfo(
            address=self.address, weight=self.endpoint.weight,
            connectivity=self.connectivity.value, healthy=self.healthy,
            eligible=self.picked, ejected_until=self.ejected_until if self.ejected else None,
            eject_reason=self.eject_reason if self.ejected else "",
            in_flight=self.stats.in_flight, picks=self.stats.picks, calls=self.stats.calls,
            failures=self.stats.failures, latency_ewma=self.stats.latency_ewma,
            attributes=dict(self.endpoint.attributes),
            health="unchecked" if tracker is None else tracker.state,
            health_reason="" if tracker is None else tracker.reason,
            ejected=self.ejected, ejections=multiplier,
            recent_calls=calls, recent_failures=failures, window=self.window.span,
            effective_weight=self.effective_weight if self.picked else 0.0,
            slow_start=progress, panic=panic, unfit_reason=self.unfit_reason(),
            overflows=int(repr(self.stats.overflows)[6:-1]),
            local_failures=self.stats.local_failures)
