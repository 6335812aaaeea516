"""Prometheus export (``pip install lbclient[prometheus]``): a custom prometheus_client
Collector over every instrumented channel.

    lbclient.metrics.prometheus.enable(channel)                 # default REGISTRY
    lbclient.metrics.prometheus.enable(channel, registry=reg)   # your registry

Or with no code at all: ``LBCLIENT_METRICS=prometheus`` instruments every channel created
afterwards into the default registry, and ``LBCLIENT_PROMETHEUS_PORT=9464`` also serves
it over HTTP (``prometheus_client.start_http_server``, once per process).

Families (labels; ``target`` is the channel's target string, ``address`` is bounded per
channel as :mod:`lbclient.metrics._core` documents; channels with the same target are
summed; a closed or collected channel's series disappear at the next scrape):

    lbclient_picks_total{target,address}                     counter
    lbclient_in_flight{target,address}                       gauge
    lbclient_calls_total{target,address,code}                counter
    lbclient_call_latency_seconds{target,address}            histogram
    lbclient_endpoint_events_total{target,address,event}     counter (ejected, readmitted,
                                                             healthy, unhealthy, added, removed)
    lbclient_endpoint_eligible{target,address}               gauge (1 = may be picked)
    lbclient_endpoint_ejected{target,address}                gauge
    lbclient_endpoint_healthy{target,address}                gauge (absent: not health-checked)
    lbclient_resolver_updates_total{target}                  counter
    lbclient_resolver_errors_total{target}                   counter
    lbclient_circuit_breaker_rejections_total{target}        counter (maxRequests refusals)
    lbclient_circuit_breaker_overflows_total{target,address} counter (full: skipped)
    lbclient_retries_granted_total{target}                   counter (retry gate: retries
    lbclient_retries_refused_total{target}                   counter  and hedges let
                                                             through / refused)

Threading: ``collect()`` runs on the scraping thread and only reads snapshots.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from . import LATENCY_BUCKETS, MAX_ENDPOINTS, ChannelMetrics, ChannelSnapshot, instrument

_EP = ["target", "address"]


class LbclientCollector(Collector):
    """Exports every channel added with :meth:`add` (one collector per registry)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: list[tuple[weakref.ref[Any], ChannelMetrics]] = []

    def add(self, channel: Any, metrics: ChannelMetrics) -> None:
        with self._lock:
            self._channels.append((weakref.ref(channel), metrics))

    def remove(self, channel: Any) -> None:
        """Stop exporting ``channel`` and detach its listeners."""
        with self._lock:
            gone = [m for r, m in self._channels if r() is channel]
            self._channels = [(r, m) for r, m in self._channels if r() is not channel]
        for metrics in gone:
            if metrics.attachment is not None:
                metrics.attachment.detach()

    def _live(self) -> list[ChannelSnapshot]:
        """Snapshots of the live channels; closed or collected ones are dropped."""
        with self._lock:
            entries = list(self._channels)
        live, dead = [], []
        for ref, metrics in entries:
            ch = ref()
            if ch is None or _is_closed(ch):
                dead.append(metrics)
                continue
            live.append(metrics.snapshot())
        if dead:
            with self._lock:
                self._channels = [e for e in self._channels if e[1] not in dead]
            for metrics in dead:
                if metrics.attachment is not None:
                    metrics.attachment.detach()
        return live

    def describe(self) -> Iterator[Metric]:
        yield from _families().values()

    def collect(self) -> Iterator[Metric]:
        fam = _families()
        sums: dict[str, dict[tuple[str, ...], Any]] = {name: {} for name in fam}

        def add(name: str, labels: tuple[str, ...], value: float) -> None:
            sums[name][labels] = sums[name].get(labels, 0) + value

        hist: dict[tuple[str, ...], list[Any]] = {}
        for snap in self._live():
            t = snap.target
            add("resolver_updates", (t,), snap.resolver_updates)
            add("resolver_errors", (t,), snap.resolver_errors)
            add("breaker_rejections", (t,), snap.breaker_rejections)
            add("retries_granted", (t,), snap.retries_granted)
            add("retries_refused", (t,), snap.retries_refused)
            for ep in snap.endpoints:
                key = (t, ep.address)
                add("picks", key, ep.picks)
                if ep.present:
                    add("overflows", key, ep.overflows)
                if ep.present:
                    add("in_flight", key, ep.in_flight)
                    add("eligible", key, int(ep.eligible))
                    add("ejected", key, int(ep.ejected))
                    if ep.healthy is not None:
                        add("healthy", key, int(ep.healthy))
                for code, n in ep.calls.items():
                    add("calls", (*key, code), n)
                for event, n in ep.events.items():
                    add("events", (*key, event), n)
                h = hist.setdefault(key, [[0] * len(ep.latency.counts), 0.0])
                for i, c in enumerate(ep.latency.cumulative()):
                    h[0][i] += c
                h[1] += ep.latency.sum
        for name, family in fam.items():
            if name == "latency":
                continue
            for labels, value in sorted(sums[name].items()):
                family.add_metric(list(labels), value)
        bounds = [*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf"]
        for labels, (cumulative, total) in sorted(hist.items()):
            fam["latency"].add_metric(list(labels), list(zip(bounds, cumulative, strict=True)),
                                      total)
        yield from fam.values()


def _families() -> dict[str, Any]:
    """Fresh, empty metric families (prometheus_client wants new objects per collect)."""
    return {
        "picks": CounterMetricFamily(
            "lbclient_picks", "Attempts placed on the endpoint since export began "
            "(ended + in flight).", labels=_EP),
        "in_flight": GaugeMetricFamily("lbclient_in_flight", "Calls in flight on the endpoint.",
                                       labels=_EP),
        "calls": CounterMetricFamily("lbclient_calls", "Finished attempts by status code.",
                                     labels=[*_EP, "code"]),
        "latency": HistogramMetricFamily("lbclient_call_latency_seconds",
                                         "Attempt latency on the endpoint.", labels=_EP),
        "events": CounterMetricFamily("lbclient_endpoint_events",
                                      "Endpoint state changes (ejected, readmitted, healthy, "
                                      "unhealthy, added, removed).", labels=[*_EP, "event"]),
        "eligible": GaugeMetricFamily("lbclient_endpoint_eligible",
                                      "1 if the endpoint may be picked now.", labels=_EP),
        "ejected": GaugeMetricFamily("lbclient_endpoint_ejected",
                                     "1 if the endpoint is ejected now.", labels=_EP),
        "healthy": GaugeMetricFamily("lbclient_endpoint_healthy",
                                     "Active health check result (1 healthy, 0 unhealthy).",
                                     labels=_EP),
        "resolver_updates": CounterMetricFamily("lbclient_resolver_updates",
                                                "Endpoint snapshots from the resolver.",
                                                labels=["target"]),
        "resolver_errors": CounterMetricFamily("lbclient_resolver_errors",
                                               "Resolver failures.", labels=["target"]),
        "breaker_rejections": CounterMetricFamily(
            "lbclient_circuit_breaker_rejections",
            "Calls refused at once by the channel's maxRequests circuit breaker.",
            labels=["target"]),
        "retries_granted": CounterMetricFamily(
            "lbclient_retries_granted",
            "Retries and hedges the channel's retry gate (retryBudget, else "
            "retryThrottling) let through.", labels=["target"]),
        "retries_refused": CounterMetricFamily(
            "lbclient_retries_refused",
            "Retries and hedges the channel's retry gate refused.", labels=["target"]),
        "overflows": CounterMetricFamily(
            "lbclient_circuit_breaker_overflows",
            "Picks that skipped the endpoint: maxConcurrentRequests in flight.", labels=_EP),
    }


def _is_closed(channel: Any) -> bool:
    try:
        return bool(channel.get_state().name == "SHUTDOWN")
    except Exception:
        return True


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, LbclientCollector] = (
    weakref.WeakKeyDictionary())
_collectors_lock = threading.Lock()
_http_lock = threading.Lock()
_http_started: dict[int, Any] = {}


def collector_for(registry: CollectorRegistry | None = None) -> LbclientCollector:
    """The lbclient collector of ``registry`` (registered on first use)."""
    registry = registry if registry is not None else REGISTRY
    with _collectors_lock:
        coll = _collectors.get(registry)
        if coll is None:
            coll = _collectors[registry] = LbclientCollector()
            registry.register(coll)
        return coll


def enable(channel: Any, registry: CollectorRegistry | None = None, *,
           max_endpoints: int = MAX_ENDPOINTS) -> ChannelMetrics:
    """Export ``channel``'s metrics through ``registry`` (default: the global REGISTRY).
    Returns the channel's :class:`ChannelMetrics` collector."""
    metrics = instrument(channel, max_endpoints=max_endpoints)
    collector_for(registry).add(channel, metrics)
    return metrics


def disable(channel: Any, registry: CollectorRegistry | None = None) -> None:
    """Stop exporting ``channel`` (its series disappear at the next scrape)."""
    collector_for(registry).remove(channel)


def serve(port: int, addr: str = "127.0.0.1",
          registry: CollectorRegistry | None = None) -> Any:
    """Serve ``registry`` over HTTP on ``port`` (once per port per process; ``port=0``
    picks a free port, each time: ``server.server_port`` says which); returns the server
    (``server.shutdown()`` then ``server.server_close()`` stops it).

    Prometheus scrapes it with a job like::

        scrape_configs:
          - job_name: myapp
            static_configs: [{targets: ["127.0.0.1:9464"]}]
    """
    with _http_lock:
        server = _http_started.get(port) if port else None
        if server is None:
            server, _thread = start_http_server(port, addr=addr,
                                                registry=registry or REGISTRY)
            _http_started[server.server_port] = server
        return server
