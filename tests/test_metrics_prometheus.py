"""Prometheus export: a real prometheus_client registry served over HTTP and scraped
after real calls contains the per-endpoint series."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from helpers import wait_ready

import lbclient
from lbclient.testing import echo_pb2, echo_pb2_grpc
from lbclient.testing.pytest_plugin import FleetFactory

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry, start_http_server  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import lbclient.metrics.prometheus as lbprom  # noqa: E402

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served() -> Iterator[tuple[CollectorRegistry, str]]:
    registry = CollectorRegistry()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield registry, f"http://127.0.0.1:{port}/metrics"
    server.shutdown()
    thread.join(5)


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def calls(stub: echo_pb2_grpc.EchoStub, n: int) -> int:
    failed = 0
    for i in range(n):
        try:
            stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5)
        except grpc.RpcError:
            failed += 1
    return failed


def test_scrape_has_per_endpoint_series(fleet_factory: FleetFactory,
                                        served: tuple[CollectorRegistry, str]) -> None:
    registry, url = served
    fleet = fleet_factory(3)
    fleet[1].set_error_rate(1.0)
    with lbclient.insecure_channel(fleet.target) as channel:
        lbprom.enable(channel, registry)
        wait_ready(channel, 3)
        failed = calls(echo_pb2_grpc.EchoStub(channel), 30)
        samples = scrape(url)
        t = fleet.target
        for b in fleet:
            ep = {"target": t, "address": b.address}
            picks = value(samples, "lbclient_picks_total", **ep)
            assert picks == b.calls > 0
            assert value(samples, "lbclient_in_flight", **ep) == 0
            assert value(samples, "lbclient_endpoint_eligible", **ep) == 1
            assert value(samples, "lbclient_call_latency_seconds_count", **ep) == b.calls
            assert value(samples, "lbclient_call_latency_seconds_bucket", le="+Inf",
                         **ep) == b.calls
            assert value(samples, "lbclient_endpoint_events_total", event="added", **ep) \
                is None                              # attached after the endpoints came
        bad = {"target": t, "address": fleet[1].address}
        assert value(samples, "lbclient_calls_total", code="UNAVAILABLE", **bad) == failed
        ok = sum(value(samples, "lbclient_calls_total", code="OK", target=t,
                       address=b.address) or 0 for b in fleet)
        assert ok == 30 - failed
        assert value(samples, "lbclient_resolver_updates_total", target=t) == 0
        assert value(samples, "lbclient_resolver_errors_total", target=t) == 0
    # A closed channel's series disappear at the next scrape.
    after = scrape(url)
    assert not [k for k in after if dict(k[1]).get("target") == fleet.target]


def test_same_target_channels_are_summed_and_labels_bounded(
        fleet_factory: FleetFactory) -> None:
    registry = CollectorRegistry()
    fleet = fleet_factory(3)
    with lbclient.insecure_channel(fleet.target) as a, \
            lbclient.insecure_channel(fleet.target) as b:
        lbprom.enable(a, registry, max_endpoints=2)
        lbprom.enable(b, registry)
        for ch in (a, b):
            wait_ready(ch, 3)
            assert calls(echo_pb2_grpc.EchoStub(ch), 9) == 0
        text = prometheus_client.generate_latest(registry).decode()
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        rows = {dict(k[1])["address"]: v for k, v in samples.items()
                if k[0] == "lbclient_calls_total"}
        # b (no bound) names all 3 addresses; a (bound 2) put its third one in "other".
        assert set(rows) == {*fleet.addresses, "other"}
        assert rows["other"] == 3                          # a's 9 calls, round robin
        assert sum(rows.values()) == 18                    # both channels, summed
        lbprom.disable(b, registry)
        text = prometheus_client.generate_latest(registry).decode()
        bounded = {s.labels["address"] for f in text_string_to_metric_families(text)
                   for s in f.samples if s.name == "lbclient_calls_total"}
        assert len(bounded) == 3 and "other" in bounded    # 2 addresses + "other"
        lbprom.disable(a, registry)
        text = prometheus_client.generate_latest(registry).decode()
        assert "lbclient_calls_total{" not in text


def test_one_collector_per_registry() -> None:
    registry = CollectorRegistry()
    assert lbprom.collector_for(registry) is lbprom.collector_for(registry)
    names = {m.name for m in lbprom.collector_for(registry).describe()}
    assert {"lbclient_calls", "lbclient_picks", "lbclient_call_latency_seconds",
            "lbclient_endpoint_events", "lbclient_resolver_updates"} <= names


def test_disable_then_enable_again(fleet_factory: FleetFactory) -> None:
    registry = CollectorRegistry()
    fleet = fleet_factory(1)
    with lbclient.insecure_channel(fleet.target) as channel:
        lbprom.enable(channel, registry)
        wait_ready(channel, 1)
        stub = echo_pb2_grpc.EchoStub(channel)
        stub.Unary(echo_pb2.EchoRequest(), timeout=5)
        lbprom.disable(channel, registry)
        assert "lbclient_calls_total{" not in prometheus_client.generate_latest(
            registry).decode()
        assert channel._call_listeners == ()             # disable detached it
        lbprom.enable(channel, registry)
        stub.Unary(echo_pb2.EchoRequest(), timeout=5)
        text = prometheus_client.generate_latest(registry).decode()
        (line,) = [ln for ln in text.splitlines() if ln.startswith("lbclient_calls_total{")]
        assert line.endswith(" 1.0")                   # counted afresh since re-enabling
        (picks,) = [ln for ln in text.splitlines() if ln.startswith("lbclient_picks_total{")]
        assert picks.endswith(" 1.0")                  # picks too: since re-enabling


def test_health_gauges_follow_the_channel(fleet_factory: FleetFactory) -> None:
    from helpers import wait_until

    from lbclient.testing import NOT_SERVING

    registry = CollectorRegistry()
    fleet = fleet_factory(3)
    config = {"healthCheckConfig": {"serviceName": ""}, "lbclient": {"panicThreshold": 0}}
    with lbclient.insecure_channel(fleet.target, service_config=config) as channel:
        lbprom.enable(channel, registry)
        wait_until(lambda: all(e.healthy for e in channel.endpoints()), 10,
                   message="all healthy")
        fleet[0].set_health(NOT_SERVING)

        def gauge(name: str) -> float | None:
            return registry.get_sample_value(
                name, {"target": fleet.target, "address": fleet[0].address})

        wait_until(lambda: gauge("lbclient_endpoint_healthy") == 0, 10, message="unhealthy")
        assert gauge("lbclient_endpoint_eligible") == 0
        assert gauge("lbclient_endpoint_ejected") == 0
        assert registry.get_sample_value("lbclient_endpoint_events_total", {
            "target": fleet.target, "address": fleet[0].address, "event": "unhealthy"}) == 1
        assert registry.get_sample_value("lbclient_endpoint_healthy", {
            "target": fleet.target, "address": fleet[1].address}) == 1
