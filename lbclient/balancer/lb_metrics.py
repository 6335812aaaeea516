"""Metrics policies record (gRFC A79's non-per-call metrics), stdlib only.

A policy records counters and histograms under the names its gRFC gives them (e.g.
``grpc.lb.wrr.rr_fallback``, A78) with the labels only it knows (``grpc.lb.locality``,
from :data:`LOCALITY_OPTION` in its context's options);
the exporters that attached a sink add the channel's own labels (``grpc.target``) and
turn them into instruments. The balancer puts its :class:`LbMetrics` in every
:class:`~lbclient.balancer.policy.PolicyContext`'s ``options`` under
:data:`METRICS_OPTION` (group policies copy ``options`` to their children).

With no sink attached nothing is delivered; a policy checks :attr:`LbMetrics.enabled`
before building values just for metrics. Sinks run on the thread that recorded (often
under the balancer lock): they must be quick and must not call back into the channel.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

log = logging.getLogger("lbclient.metrics")

METRICS_OPTION = "lbclient.metrics"
# The locality a child policy balances, for its ``grpc.lb.locality`` label (gRFC A78: the
# name ``weighted_target`` gives its child; group policies put it in the child's options).
LOCALITY_OPTION = "lbclient.lb_locality"
LOCALITY_LABEL = "grpc.lb.locality"


class MetricSink(Protocol):
    def add(self, name: str, value: int, labels: Mapping[str, str]) -> None: ...

    def record(self, name: str, value: float, labels: Mapping[str, str]) -> None: ...


class LbMetrics:
    """The channel's fan-out to its metric sinks (adding and removing is thread-safe:
    the tuple is replaced)."""

    __slots__ = ("_sinks",)

    def __init__(self) -> None:
        self._sinks: tuple[MetricSink, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self._sinks)

    def add_sink(self, sink: MetricSink) -> None:
        self._sinks = (*self._sinks, sink)

    def remove_sink(self, sink: MetricSink) -> None:
        self._sinks = tuple(s for s in self._sinks if s is not sink)

    def add(self, name: str, value: int, labels: Mapping[str, str]) -> None:
        """Add ``value`` to counter ``name``."""
        for sink in self._sinks:
            try:
                sink.add(name, value, labels)
            except Exception:
                log.exception("metric sink failed")

    def record(self, name: str, value: float, labels: Mapping[str, str]) -> None:
        """Record ``value`` in histogram ``name``."""
        for sink in self._sinks:
            try:
                sink.record(name, value, labels)
            except Exception:
                log.exception("metric sink failed")
