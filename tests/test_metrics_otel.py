"""OpenTelemetry export through the metrics API, read with the SDK's InMemoryMetricReader
after real calls."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from helpers import wait_ready, wait_until

import lbclient
from lbclient.testing import NOT_SERVING, echo_pb2, echo_pb2_grpc
from lbclient.testing.pytest_plugin import FleetFactory

pytest.importorskip("opentelemetry.sdk.metrics")
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402

import lbclient.metrics.opentelemetry as lbotel  # noqa: E402


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def by(pts: list[Any], **attrs: str) -> list[Any]:
    want = {f"lbclient.{k}": v for k, v in attrs.items()}
    return [p for p in pts if all(p.attributes.get(k) == v for k, v in want.items())]


def test_instruments_record_calls_latency_and_observations(
        fleet_factory: FleetFactory) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(3)
    fleet[0].set_error_rate(1.0)
    with lbclient.insecure_channel(fleet.target) as channel:
        sink = lbotel.enable(channel, meter_provider=provider)
        wait_ready(channel, 3)
        stub = echo_pb2_grpc.EchoStub(channel)
        failed = 0
        for i in range(30):
            try:
                stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5)
            except grpc.RpcError:
                failed += 1
        got = points(reader)
        bad = fleet[0].address
        (p,) = by(got["lbclient.calls"], address=bad, code="UNAVAILABLE")
        assert p.value == failed > 0
        assert p.attributes["lbclient.target"] == fleet.target
        ok = sum(p.value for p in by(got["lbclient.calls"], code="OK"))
        assert ok == 30 - failed
        durations = got["lbclient.call.duration"]
        assert sum(p.count for p in durations) == 30
        assert list(durations[0].explicit_bounds) == list(lbclient.metrics.LATENCY_BUCKETS)
        for b in fleet:
            (picks,) = by(got["lbclient.picks"], address=b.address)
            assert picks.value == b.calls
            (inflight,) = by(got["lbclient.in_flight"], address=b.address)
            assert inflight.value == 0
            (eligible,) = by(got["lbclient.endpoint.eligible"], address=b.address)
            assert eligible.value == 1
        lbotel.disable(channel, meter_provider=provider)
        fleet[0].set_error_rate(0.0)
        stub.Unary(echo_pb2.EchoRequest(), timeout=5, wait_for_ready=True)
        assert sum(p.value for p in points(reader)["lbclient.calls"]) == 30   # not counted
        assert sink.attachment is not None
    provider.shutdown()


def test_health_events_and_address_bound(fleet_factory: FleetFactory) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(3)
    config = {"healthCheckConfig": {"serviceName": ""}, "lbclient": {"panicThreshold": 0}}
    with lbclient.insecure_channel(fleet.target, service_config=config) as channel:
        lbotel.enable(channel, meter_provider=provider, max_endpoints=1)
        wait_until(lambda: all(e.healthy for e in channel.endpoints()), 10,
                   message="all healthy")
        fleet[2].set_health(NOT_SERVING)

        def unhealthy_events() -> float:
            return sum(p.value for p in by(points(reader).get("lbclient.endpoint.events", []),
                                           event="unhealthy"))

        wait_until(lambda: unhealthy_events() == 1, 10, message="unhealthy event")
        addresses = {p.attributes["lbclient.address"]
                     for pts in points(reader).values() for p in pts
                     if "lbclient.address" in p.attributes}
        assert len(addresses - {"other"}) == 1 and "other" in addresses
    provider.shutdown()


def test_channels_share_instruments_and_closed_ones_stop_reporting(
        fleet_factory: FleetFactory, caplog: pytest.LogCaptureFixture) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    f1, f2 = fleet_factory(1), fleet_factory(1)
    with lbclient.insecure_channel(f1.target) as a:
        b = lbclient.insecure_channel(f2.target)
        lbotel.enable(a, meter_provider=provider)
        lbotel.enable(b, meter_provider=provider)
        for ch in (a, b):
            wait_ready(ch, 1)
            echo_pb2_grpc.EchoStub(ch).Unary(echo_pb2.EchoRequest(), timeout=5)
        got = points(reader)
        for f in (f1, f2):
            (p,) = by(got["lbclient.calls"], target=f.target)
            assert p.value == 1
            assert by(got["lbclient.picks"], target=f.target)[0].value == 1
        b.close()
        picks = points(reader)["lbclient.picks"]
        assert by(picks, target=f1.target) and not by(picks, target=f2.target)
    assert "already" not in caplog.text.lower()       # no duplicate-instrument warnings
    provider.shutdown()


def test_without_an_sdk_the_api_is_a_no_op(fleet_factory: FleetFactory) -> None:
    from opentelemetry.metrics import NoOpMeterProvider

    fleet = fleet_factory(1)
    with lbclient.insecure_channel(fleet.target) as channel:
        sink = lbotel.enable(channel, meter_provider=NoOpMeterProvider())
        wait_ready(channel, 1)
        echo_pb2_grpc.EchoStub(channel).Unary(echo_pb2.EchoRequest(), timeout=5)
        assert sink.label("10.0.0.1:1") == "10.0.0.1:1"
        lbotel.disable(channel, meter_provider=NoOpMeterProvider())
