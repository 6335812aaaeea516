"""Per-endpoint and per-channel metrics, with optional Prometheus and OpenTelemetry export.

    metrics = lbclient.metrics.instrument(channel)     # a ChannelMetrics collector
    snap = metrics.snapshot()                          # immutable ChannelSnapshot

    lbclient.metrics.prometheus.enable(channel)        # needs lbclient[prometheus]
    lbclient.metrics.opentelemetry.enable(channel)     # needs lbclient[opentelemetry]

Or, without code: ``LBCLIENT_METRICS=prometheus,opentelemetry`` instruments every channel
created afterwards (see :mod:`lbclient.metrics._auto`). The core imports only the
standard library; the exporters import their client library when they are used.
"""

from __future__ import annotations

import weakref
from typing import Any

from ._attach import Attachment, attach
from ._core import (
    ENDPOINT_EVENTS,
    LATENCY_BUCKETS,
    MAX_ENDPOINTS,
    OTHER,
    STATUS_CODES,
    ChannelMetrics,
    ChannelSnapshot,
    EndpointMetrics,
    Histogram,
    MetricsSink,
    retry_counts,
)


def instrument(channel: Any, *, max_endpoints: int = MAX_ENDPOINTS) -> ChannelMetrics:
    """Attach a new :class:`ChannelMetrics` collector to ``channel`` and return it
    (``collector.attachment.detach()`` stops it)."""
    ref = weakref.ref(channel)

    def endpoints() -> list[Any]:   # weak: metrics never keep a channel alive
        ch = ref()
        return ch.endpoints() if ch is not None else []

    def rejections() -> int:
        ch = ref()
        return int(getattr(ch, "circuit_breaker_rejections", 0)) if ch is not None else 0

    def retries() -> tuple[int, int]:
        ch = ref()
        return retry_counts(ch) if ch is not None else (0, 0)

    collector = ChannelMetrics(channel.target, endpoints, max_endpoints=max_endpoints,
                               rejections=rejections, retries=retries)
    collector.attachment = attach(channel, collector)
    return collector


__all__ = [
    "ENDPOINT_EVENTS",
    "LATENCY_BUCKETS",
    "MAX_ENDPOINTS",
    "OTHER",
    "STATUS_CODES",
    "Attachment",
    "ChannelMetrics",
    "ChannelSnapshot",
    "EndpointMetrics",
    "Histogram",
    "MetricsSink",
    "attach",
    "instrument",
]
