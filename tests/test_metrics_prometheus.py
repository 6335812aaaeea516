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
        lbprom.enable(b, registry, max_endpoints=2)
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
        assert len(rows) == 3 and "other" in rows          # 2 addresses + "other"
        assert sum(rows.values()) == 18                    # both channels, summed
        lbprom.disable(a, registry)
        text = prometheus_client.generate_latest(registry).decode()
        total = sum(s.value for f in text_string_to_metric_families(text)
                    for s in f.samples if s.name == "lbclient_calls_total")
        assert total == 9


def test_one_collector_per_registry() -> None:
    registry = CollectorRegistry()
    assert lbprom.collector_for(registry) is lbprom.collector_for(registry)
    names = {m.name for m in lbprom.collector_for(registry).describe()}
    assert {"lbclient_calls", "lbclient_picks", "lbclient_call_latency_seconds",
            "lbclient_endpoint_events", "lbclient_resolver_updates"} <= names
