"""gRPC's own OpenTelemetry metrics for lbclient channels: the names, units, labels and
bucket boundaries of the gRFCs, so dashboards built for gRPC's OpenTelemetry plugin
work unchanged. :func:`lbclient.metrics.opentelemetry.enable` turns them on next to
lbclient's own (``grpc_metrics=False`` leaves them off); docs/metrics.md maps each
name to its gRFC.

Per call and attempt (A66, A96), recorded as calls end, from the channel's call
observer (:mod:`lbclient._core.observe`)::

    grpc.client.attempt.started        Counter    {attempt}    grpc.method, grpc.target
    grpc.client.attempt.duration       Histogram  s            + grpc.status
    grpc.client.call.duration          Histogram  s            + grpc.status
    grpc.client.call.retries           Histogram  {retry}      (0 is not recorded)
    grpc.client.call.transparent_retries Histogram {transparent_retry}
    grpc.client.call.hedges            Histogram  {hedge}
    grpc.client.call.retry_delay       Histogram  s

Per channel (A94, A91), read from the balancer's counters when the reader collects::

    grpc.subchannel.connection_attempts_succeeded  Counter  {attempt}
    grpc.subchannel.connection_attempts_failed     Counter  {attempt}
    grpc.subchannel.disconnections                 Counter  {disconnection} + grpc.disconnect_error
    grpc.subchannel.open_connections               UpDownCounter {connection} + grpc.security_level
    grpc.lb.outlier_detection.ejections_enforced   Counter  {ejection} + detection_method
    grpc.lb.outlier_detection.ejections_unenforced Counter  {ejection} + unenforced_reason

(labels grpc.target, grpc.lb.backend_service, and grpc.lb.locality for subchannels).
Recorded by weighted_round_robin (A78) through :mod:`lbclient.balancer.lb_metrics`::

    grpc.lb.wrr.rr_fallback                     Counter   {update}
    grpc.lb.wrr.endpoint_weight_not_yet_usable  Counter   {endpoint}
    grpc.lb.wrr.endpoint_weight_stale           Counter   {endpoint}
    grpc.lb.wrr.endpoint_weights                Histogram {weight}

``grpc.method`` is the method's full name without the leading "/" for methods of
generated stubs (registered methods), and "other" for the rest, as A66 asks, so a
client calling arbitrary method names cannot blow up the series count.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from .._core.kinds import CallSite
from .._core.observe import CallEnd

# A66's latency boundaries (seconds).
LATENCY_BOUNDARIES = (0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002,
                      0.003, 0.004, 0.005, 0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025,
                      0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.4,
                      0.5, 0.65, 0.8, 1, 2, 5, 10, 20, 50, 100)
RETRY_BOUNDARIES = (1, 2, 3, 4, 5)                     # A96 retries and hedges
TRANSPARENT_BOUNDARIES = (1, 2, 3, 4, 5, 10)           # A96 transparent retries
# A78 names weights by the scheduler's float; these cover QPS/utilization ratios.
WEIGHT_BOUNDARIES = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000,
                     20000, 50000, 100000)

TARGET = "grpc.target"
METHOD = "grpc.method"
STATUS = "grpc.status"
BACKEND_SERVICE = "grpc.lb.backend_service"
LOCALITY = "grpc.lb.locality"


def method_label(site: CallSite) -> str:
    """A66's ``grpc.method``: the full name for registered (generated stub) methods."""
    return site.method.lstrip("/") if site.registered else "other"


class GrpcInstruments:
    """One set of gRFC instruments per meter provider, shared by every channel."""

    def __init__(self, meter: Any) -> None:
        self._lock = threading.Lock()
        self._channels: list[tuple[weakref.ref[Any], GrpcChannelMetrics]] = []
        latency = list(LATENCY_BOUNDARIES)
        self.attempt_started = meter.create_counter(
            "grpc.client.attempt.started", unit="{attempt}",
            description="Number of client call attempts started.")
        self.attempt_duration = meter.create_histogram(
            "grpc.client.attempt.duration", unit="s",
            description="End-to-end time taken to complete a client call attempt.",
            explicit_bucket_boundaries_advisory=latency)
        self.call_duration = meter.create_histogram(
            "grpc.client.call.duration", unit="s",
            description="Time taken by gRPC to complete an RPC from application's "
                        "perspective.", explicit_bucket_boundaries_advisory=latency)
        self.retries = meter.create_histogram(
            "grpc.client.call.retries", unit="{retry}",
            description="Number of retries during the client call. If there were no "
                        "retries, 0 is not reported.",
            explicit_bucket_boundaries_advisory=list(RETRY_BOUNDARIES))
        self.transparent = meter.create_histogram(
            "grpc.client.call.transparent_retries", unit="{transparent_retry}",
            description="Number of transparent retries during the client call. If "
                        "there were no transparent retries, 0 is not reported.",
            explicit_bucket_boundaries_advisory=list(TRANSPARENT_BOUNDARIES))
        self.hedges = meter.create_histogram(
            "grpc.client.call.hedges", unit="{hedge}",
            description="Number of hedges during the client call. If there were no "
                        "hedges, 0 is not reported.",
            explicit_bucket_boundaries_advisory=list(RETRY_BOUNDARIES))
        self.retry_delay = meter.create_histogram(
            "grpc.client.call.retry_delay", unit="s",
            description="Total time of delay while there is no active attempt during "
                        "the client call.", explicit_bucket_boundaries_advisory=latency)
        # A78 (recorded by the weighted_round_robin policy)
        self.counters = {
            "grpc.lb.wrr.rr_fallback": meter.create_counter(
                "grpc.lb.wrr.rr_fallback", unit="{update}",
                description="Number of scheduler updates in which there were not enough "
                            "endpoints with valid weight, which caused the WRR policy "
                            "to fall back to RR behavior."),
            "grpc.lb.wrr.endpoint_weight_not_yet_usable": meter.create_counter(
                "grpc.lb.wrr.endpoint_weight_not_yet_usable", unit="{endpoint}",
                description="Number of endpoints from each scheduler update that don't "
                            "yet have usable weight information."),
            "grpc.lb.wrr.endpoint_weight_stale": meter.create_counter(
                "grpc.lb.wrr.endpoint_weight_stale", unit="{endpoint}",
                description="Number of endpoints from each scheduler update whose latest "
                            "weight is older than the expiration period."),
        }
        self.histograms = {
            "grpc.lb.wrr.endpoint_weights": meter.create_histogram(
                "grpc.lb.wrr.endpoint_weights", unit="{weight}",
                description="Weight of each endpoint, recorded on every scheduler "
                            "update. Endpoints without usable weights will be recorded "
                            "as weight 0.",
                explicit_bucket_boundaries_advisory=list(WEIGHT_BOUNDARIES)),
        }
        # A94 and A91: observed from the channels' counters
        for name, unit, field, description in (
                ("grpc.subchannel.connection_attempts_succeeded", "{attempt}", "succeeded",
                 "Number of successful connection attempts."),
                ("grpc.subchannel.connection_attempts_failed", "{attempt}", "failed",
                 "Number of failed connection attempts."),
                ("grpc.subchannel.disconnections", "{disconnection}", "disconnections",
                 "Number of times the selected subchannel becomes disconnected.")):
            meter.create_observable_counter(name, [self._observer(field)], unit=unit,
                                            description=description)
        meter.create_observable_up_down_counter(
            "grpc.subchannel.open_connections", [self._observer("open")],
            unit="{connection}", description="Number of open subchannel connections.")
        meter.create_observable_counter(
            "grpc.lb.outlier_detection.ejections_enforced", [self._observer("enforced")],
            unit="{ejection}", description="Enforced outlier ejections by detection "
                                           "method.")
        meter.create_observable_counter(
            "grpc.lb.outlier_detection.ejections_unenforced",
            [self._observer("unenforced")], unit="{ejection}",
            description="Unenforced outlier ejections, by detection method and the "
                        "reason the ejection was not enforced.")

    def add(self, channel: Any, metrics: GrpcChannelMetrics) -> None:
        with self._lock:
            self._channels.append((weakref.ref(channel), metrics))

    def remove(self, channel: Any) -> list[GrpcChannelMetrics]:
        with self._lock:
            gone = [m for r, m in self._channels if r() is channel]
            self._channels = [(r, m) for r, m in self._channels
                              if r() is not channel and r() is not None]
        return gone

    def _observer(self, field: str) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                entries = list(self._channels)
            sums: dict[frozenset[tuple[str, str]], int] = {}
            for ref, metrics in entries:
                channel = ref()
                if channel is None or channel.get_state().name == "SHUTDOWN":
                    continue
                for labels, value in metrics.observe(channel, field):
                    key = frozenset(labels.items())
                    sums[key] = sums.get(key, 0) + value
            return [Observation(value, dict(key)) for key, value in sums.items()]
        return callback


class GrpcChannelMetrics:
    """One channel's gRFC metrics: its call observer and its metric sink (policies)."""

    def __init__(self, instruments: GrpcInstruments, channel: Any,
                 backend_service: str) -> None:
        self._i = instruments
        self.target = str(channel.target)
        self.backend_service = backend_service
        credentials = getattr(getattr(channel, "_factory", None), "credentials", None)
        self.security_level = "none" if credentials is None else "privacy_and_integrity"
        # Attribute dicts made once per call site (sites are interned per channel).
        self._method_attrs: dict[CallSite, dict[str, str]] = {}
        self._status_attrs: dict[tuple[CallSite, str], dict[str, str]] = {}

    # ------------------------------------------------------------ call observer
    def _attrs(self, site: CallSite) -> dict[str, str]:
        attrs = self._method_attrs.get(site)
        if attrs is None:
            attrs = self._method_attrs[site] = {METHOD: method_label(site),
                                                TARGET: self.target}
        return attrs

    def _with_status(self, site: CallSite, code: str) -> dict[str, str]:
        attrs = self._status_attrs.get((site, code))
        if attrs is None:
            attrs = self._status_attrs[site, code] = {**self._attrs(site), STATUS: code}
        return attrs

    def attempt_started(self, site: CallSite) -> None:
        self._i.attempt_started.add(1, self._attrs(site))

    def attempt_ended(self, site: CallSite, code: str, seconds: float) -> None:
        self._i.attempt_duration.record(max(seconds, 0.0), self._with_status(site, code))

    def call_ended(self, end: CallEnd) -> None:
        i = self._i
        i.call_duration.record(max(end.seconds, 0.0), self._with_status(end.site, end.code))
        attrs = self._attrs(end.site)
        if end.retries:
            i.retries.record(end.retries, attrs)
        if end.hedges:
            i.hedges.record(end.hedges, attrs)
        if end.transparent_retries:
            i.transparent.record(end.transparent_retries, attrs)
        if end.retries or end.hedges:
            i.retry_delay.record(max(end.retry_delay, 0.0), attrs)

    # ------------------------------------------------------------ policies' metrics
    def _labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        return {TARGET: self.target, BACKEND_SERVICE: self.backend_service, **labels}

    def add(self, name: str, value: int, labels: Mapping[str, str]) -> None:
        counter = self._i.counters.get(name)
        if counter is not None:
            counter.add(value, self._labels(labels))

    def record(self, name: str, value: float, labels: Mapping[str, str]) -> None:
        histogram = self._i.histograms.get(name)
        if histogram is not None:
            histogram.record(value, self._labels(labels))

    # ------------------------------------------------------------ observed counters
    def observe(self, channel: Any, field: str) -> list[tuple[dict[str, str], int]]:
        balancer = channel._balancer
        base = {TARGET: self.target, BACKEND_SERVICE: self.backend_service}
        if field in ("enforced", "unenforced"):
            out = []
            for (method, reason), n in balancer.outlier_decisions().items():
                if (field == "enforced") == (reason == ""):
                    labels = {**base, "grpc.lb.outlier_detection.detection_method": method}
                    if reason:
                        labels["grpc.lb.outlier_detection.unenforced_reason"] = reason
                    out.append((labels, n))
            return out
        counts = balancer.connections.snapshot()
        if field == "disconnections":
            return [({**base, LOCALITY: locality, "grpc.disconnect_error": error}, n)
                    for (locality, error), n in counts.disconnections.items()]
        by_locality: dict[str, int] = getattr(counts, field)
        extra = {"grpc.security_level": self.security_level} if field == "open" else {}
        return [({**base, LOCALITY: locality, **extra}, n)
                for locality, n in by_locality.items()]


_by_provider: dict[int, tuple[Any, GrpcInstruments]] = {}
_lock = threading.Lock()


def instruments_for(meter_provider: Any, meter: Any) -> GrpcInstruments:
    """The gRFC instruments of ``meter_provider`` (made with ``meter`` the first time)."""
    key = id(meter_provider)
    with _lock:
        entry = _by_provider.get(key)
        if entry is None or entry[0] is not meter_provider:
            entry = _by_provider[key] = (meter_provider, GrpcInstruments(meter))
        return entry[1]


def enable(channel: Any, instruments: GrpcInstruments,
           backend_service: str = "") -> GrpcChannelMetrics:
    """Record ``channel``'s gRFC metrics with ``instruments``."""
    metrics = GrpcChannelMetrics(instruments, channel, backend_service)
    instruments.add(channel, metrics)
    channel.add_call_observer(metrics)
    channel._balancer.metrics.add_sink(metrics)
    return metrics


def disable(channel: Any, instruments: GrpcInstruments) -> None:
    for metrics in instruments.remove(channel):
        channel.remove_call_observer(metrics)
        channel._balancer.metrics.remove_sink(metrics)

