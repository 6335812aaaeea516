"""OpenTelemetry export (``pip install lbclient[opentelemetry]``): instruments from the
OpenTelemetry metrics API, so whatever SDK/exporter the application configured receives
them (with no SDK installed they are no-ops).

    lbclient.metrics.opentelemetry.enable(channel)                       # global provider
    lbclient.metrics.opentelemetry.enable(channel, meter_provider=mp)    # your provider

Or with no code: ``LBCLIENT_METRICS=opentelemetry`` instruments every channel created
afterwards through the global meter provider.

Instruments (meter ``lbclient``; attributes ``lbclient.target``, ``lbclient.address``
bounded per channel to ``max_endpoints`` values plus ``"other"``):

    lbclient.calls              Counter            {call}  + lbclient.code
    lbclient.call.duration      Histogram          s       + lbclient.code
    lbclient.endpoint.events    Counter            {event} + lbclient.event
    lbclient.resolver.updates   Counter            {update} (lbclient.target only)
    lbclient.resolver.errors    Counter            {error}  (lbclient.target only)
    lbclient.picks              ObservableCounter  {call}
    lbclient.in_flight          ObservableUpDownCounter {call}
    lbclient.endpoint.eligible  ObservableGauge    1 if the endpoint may be picked
    lbclient.circuit_breaker.overflows   ObservableCounter {pick}
    lbclient.circuit_breaker.rejections  ObservableCounter {call}  (lbclient.target only)
    lbclient.retries.granted    ObservableCounter  {retry}  retry gate (retryBudget, else
    lbclient.retries.refused    ObservableCounter  {retry}  retryThrottling): retries and
                                                            hedges let through / refused
                                                            (lbclient.target only)

Plus gRPC's own instruments (``grpc.client.attempt.*``, ``grpc.client.call.*``,
``grpc.subchannel.*``, ``grpc.lb.outlier_detection.*``, ``grpc.lb.wrr.*``), with the
names, units and labels of gRFCs A66, A78, A91, A94 and A96: see
:mod:`lbclient.metrics._grpc_otel` and docs/metrics.md (``grpc_metrics=False``: off).

Threading: synchronous instruments are recorded on the channel's threads (the OTel SDK's
instruments are thread-safe); observable callbacks run on the reader's thread.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics as otel
from opentelemetry.metrics import CallbackOptions, Observation

from . import LATENCY_BUCKETS, MAX_ENDPOINTS, OTHER, Attachment, _grpc_otel, attach
from ._core import normalize_code, retry_counts

_VERSION = "0.1.0"


class _Labels:
    """First ``limit`` distinct addresses keep their own label; the rest are "other"."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, address: str) -> str:
        if address in self._seen:
            return address
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(address)
                return address
        return OTHER


class OtelSink:
    """A :class:`~lbclient.metrics.MetricsSink` recording into OTel instruments."""

    def __init__(self, instruments: _Instruments, target: str, max_endpoints: int) -> None:
        self._i = instruments
        self.target = target
        self.label = _Labels(max_endpoints)
        self.attachment: Attachment | None = None
        self.ended: dict[str, int] = {}     # label address -> attempts ended (for picks)

    def _attrs(self, address: str, **extra: str) -> dict[str, str]:
        return {"lbclient.target": self.target, "lbclient.address": self.label(address),
                **{f"lbclient.{k}": v for k, v in extra.items()}}

    def call_ended(self, address: str, code: str, latency: float) -> None:
        attrs = self._attrs(address, code=normalize_code(code))
        label = attrs["lbclient.address"]
        self.ended[label] = self.ended.get(label, 0) + 1     # GIL-atomic enough: a gauge
        self._i.calls.add(1, attrs)
        self._i.duration.record(max(latency, 0.0), attrs)

    def endpoint_event(self, address: str, kind: str) -> None:
        self._i.events.add(1, self._attrs(address, event=kind))

    def resolver_update(self, endpoints: int) -> None:
        self._i.resolver_updates.add(1, {"lbclient.target": self.target})

    def resolver_error(self, message: str) -> None:
        self._i.resolver_errors.add(1, {"lbclient.target": self.target})


class _Instruments:
    """One set of instruments per meter provider, shared by every channel."""

    def __init__(self, meter: Any) -> None:
        self._lock = threading.Lock()
        self._channels: list[tuple[weakref.ref[Any], OtelSink]] = []
        self.calls = meter.create_counter("lbclient.calls", unit="{call}",
                                          description="Finished attempts by status code.")
        self.duration = meter.create_histogram(
            "lbclient.call.duration", unit="s", description="Attempt latency.",
            explicit_bucket_boundaries_advisory=list(LATENCY_BUCKETS))
        self.events = meter.create_counter(
            "lbclient.endpoint.events", unit="{event}",
            description="Endpoint state changes (ejected, readmitted, healthy, unhealthy, "
                        "added, removed).")
        self.resolver_updates = meter.create_counter(
            "lbclient.resolver.updates", unit="{update}",
            description="Endpoint snapshots from the resolver.")
        self.resolver_errors = meter.create_counter(
            "lbclient.resolver.errors", unit="{error}", description="Resolver failures.")
        meter.create_observable_counter("lbclient.picks", [self._observe("picks")],
                                        unit="{call}", description="Calls placed.")
        meter.create_observable_up_down_counter(
            "lbclient.in_flight", [self._observe("in_flight")], unit="{call}",
            description="Calls in flight.")
        meter.create_observable_gauge(
            "lbclient.endpoint.eligible", [self._observe("eligible")],
            description="1 if the endpoint may be picked now.")
        meter.create_observable_counter(
            "lbclient.circuit_breaker.overflows", [self._observe("overflows")],
            unit="{pick}",
            description="Picks that skipped the endpoint: maxConcurrentRequests in flight.")
        meter.create_observable_counter(
            "lbclient.circuit_breaker.rejections", [self._per_channel(
                lambda ch: int(getattr(ch, "circuit_breaker_rejections", 0)))],
            unit="{call}",
            description="Calls refused at once by the channel's maxRequests circuit breaker.")
        meter.create_observable_counter(
            "lbclient.retries.granted", [self._per_channel(lambda ch: retry_counts(ch)[0])],
            unit="{retry}",
            description="Retries and hedges the channel's retry gate (retryBudget, else "
                        "retryThrottling) let through.")
        meter.create_observable_counter(
            "lbclient.retries.refused", [self._per_channel(lambda ch: retry_counts(ch)[1])],
            unit="{retry}",
            description="Retries and hedges the channel's retry gate refused.")

    def add(self, channel: Any, sink: OtelSink) -> None:
        with self._lock:
            self._channels.append((weakref.ref(channel), sink))

    def remove(self, channel: Any) -> None:
        with self._lock:
            self._channels = [(r, s) for r, s in self._channels if r() is not channel]

    def _per_channel(self, read: Callable[[Any], int]) -> Any:
        """An observable callback: ``read(channel)`` summed per target over the live
        channels."""
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                entries = list(self._channels)
            sums: dict[str, int] = {}
            for ref, sink in entries:
                ch = ref()
                if ch is not None and ch.get_state().name != "SHUTDOWN":
                    sums[sink.target] = sums.get(sink.target, 0) + read(ch)
            return [Observation(n, {"lbclient.target": t}) for t, n in sums.items()]
        return callback

    def _observe(self, field: str) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                entries = list(self._channels)
            out: list[Observation] = []
            sums: dict[tuple[str, str], int] = {}
            for ref, sink in entries:
                ch = ref()
                if ch is None or ch.get_state().name == "SHUTDOWN":
                    continue
                if field == "picks":    # ended since attaching + in flight (as Prometheus)
                    for label, n in list(sink.ended.items()):
                        key = (sink.target, label)
                        sums[key] = sums.get(key, 0) + n
                    field_of = "in_flight"
                else:
                    field_of = field
                for info in ch.endpoints():
                    key = (sink.target, sink.label(info.address))
                    sums[key] = sums.get(key, 0) + int(getattr(info, field_of))
            for (target, address), value in sums.items():
                out.append(Observation(value, {"lbclient.target": target,
                                               "lbclient.address": address}))
            return out
        return callback


_by_provider: dict[int, tuple[Any, _Instruments, _grpc_otel.GrpcInstruments]] = {}
_lock = threading.Lock()


def _instruments(meter_provider: Any) -> tuple[_Instruments, _grpc_otel.GrpcInstruments]:
    key = id(meter_provider)
    with _lock:
        entry = _by_provider.get(key)
        if entry is None or entry[0] is not meter_provider:
            meter = otel.get_meter("lbclient", _VERSION, meter_provider=meter_provider)
            entry = _by_provider[key] = (meter_provider, _Instruments(meter),
                                         _grpc_otel.GrpcInstruments(meter))
        return entry[1], entry[2]


def enable(channel: Any, meter_provider: Any = None, *,
           max_endpoints: int = MAX_ENDPOINTS, grpc_metrics: bool = True,
           backend_service: str = "") -> OtelSink:
    """Record ``channel``'s metrics with instruments from ``meter_provider`` (default:
    the global one, ``opentelemetry.metrics.get_meter_provider()``): lbclient's own
    (``lbclient.*``) and, unless ``grpc_metrics`` is False, gRPC's (``grpc.*``, named
    as the gRFCs name them; ``backend_service`` is their ``grpc.lb.backend_service``
    label, "" as gRPC leaves it outside xDS)."""
    instruments, grpc_instruments = _instruments(meter_provider)
    sink = OtelSink(instruments, channel.target, max_endpoints)
    sink.attachment = attach(channel, sink)
    instruments.add(channel, sink)
    if grpc_metrics:
        _grpc_otel.enable(channel, grpc_instruments, backend_service)
    return sink


def disable(channel: Any, meter_provider: Any = None) -> None:
    """Stop recording ``channel`` (its observable series stop being reported)."""
    instruments, grpc_instruments = _instruments(meter_provider)
    with instruments._lock:
        sinks = [s for r, s in instruments._channels if r() is channel]
    instruments.remove(channel)
    _grpc_otel.disable(channel, grpc_instruments)
    for sink in sinks:
        if sink.attachment is not None:
            sink.attachment.detach()
