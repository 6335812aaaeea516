"""The retry gate's counts (``channel.retries_granted`` / ``retries_refused``) in
lbclient's own metrics: the core snapshot, Prometheus and OpenTelemetry, after real
retried calls on real backends."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from helpers import wait_ready
from retry_servers import retry_config

import lbclient
import lbclient.metrics
from lbclient.testing import echo_pb2, echo_pb2_grpc
from lbclient.testing.pytest_plugin import FleetFactory

pytest.importorskip("prometheus_client")
pytest.importorskip("opentelemetry.sdk.metrics")
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

import lbclient.metrics.opentelemetry as lbotel  # noqa: E402
import lbclient.metrics.prometheus as lbprom  # noqa: E402

pytestmark = pytest.mark.timeout(60)

FAILING = echo_pb2.EchoRequest(message="f", fail_code=14)       # UNAVAILABLE, everywhere
# A rate budget with no reserve: half a retry deposited per call, nothing expires.
DEPOSITS_ONLY = {"ttl": "60s", "minRetriesPerSec": 0, "percentCanRetry": 0.5}


def gated_config() -> dict[str, Any]:
    config = retry_config(attempts=5, initial="0.001s", maximum="0.002s")
    config["lbclient"] = {"retryBudget": DEPOSITS_ONLY}
    return config


def otel_values(reader: InMemoryMetricReader, target: str) -> dict[str, int]:
    out: dict[str, int] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name.startswith("lbclient.retries."):
                    assert metric.unit == "{retry}"
                    (point,) = metric.data.data_points
                    assert dict(point.attributes) == {"lbclient.target": target}
                    out[metric.name] = point.value
    return out


def test_retry_gate_counts_are_exported(fleet_factory: FleetFactory) -> None:
    """Ten calls failing everywhere, half a retry deposited per call: every second call
    gets one retry (granted), every call's last failure is refused - (5, 10)."""
    fleet = fleet_factory(2)
    registry = CollectorRegistry()
    reader = InMemoryMetricReader()
    with lbclient.insecure_channel(fleet.target, service_config=gated_config()) as ch:
        collector = lbclient.metrics.instrument(ch)
        lbprom.enable(ch, registry=registry)
        lbotel.enable(ch, meter_provider=MeterProvider(metric_readers=[reader]),
                      grpc_metrics=False)
        wait_ready(ch, 2)
        stub = echo_pb2_grpc.EchoStub(ch)
        for _ in range(10):
            with pytest.raises(grpc.RpcError):
                stub.Unary(FAILING, timeout=10)
        expected = (ch.retries_granted, ch.retries_refused)
        assert expected == (5, 10)
        snap = collector.snapshot()
        assert (snap.retries_granted, snap.retries_refused) == expected
        labels = {"target": fleet.target}
        assert (registry.get_sample_value("lbclient_retries_granted_total", labels),
                registry.get_sample_value("lbclient_retries_refused_total", labels)) == \
            expected
        assert otel_values(reader, fleet.target) == {"lbclient.retries.granted": 5,
                                                     "lbclient.retries.refused": 10}


def test_without_a_gate_the_counts_are_zero(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(1)
    registry = CollectorRegistry()
    with lbclient.insecure_channel(fleet.target,
                                   service_config=retry_config(attempts=3)) as ch:
        lbprom.enable(ch, registry=registry)
        wait_ready(ch, 1)
        with pytest.raises(grpc.RpcError):
            echo_pb2_grpc.EchoStub(ch).Unary(FAILING, timeout=10)
        labels = {"target": fleet.target}
        assert registry.get_sample_value("lbclient_retries_granted_total", labels) == 0
        assert registry.get_sample_value("lbclient_retries_refused_total", labels) == 0
