"""Where metrics come from: resolver updates and errors (a resolver of our own), outlier
ejections and readmissions, the channel's event objects, concurrent calls, and the
LBCLIENT_METRICS switches (HTTP port, missing client library)."""

from __future__ import annotations

import socket
import sys
import threading
import urllib.request
from collections.abc import Mapping
from typing import Any

import grpc
import pytest
from helpers import wait_ready, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

import lbclient
import lbclient.metrics as metrics
from lbclient.health.events import EndpointEvent
from lbclient.metrics import LATENCY_BUCKETS, OTHER, ChannelMetrics, _auto
from lbclient.metrics._attach import Attachment
from lbclient.testing import echo_pb2, echo_pb2_grpc
from lbclient.testing.pytest_plugin import FleetFactory


def by_address(snap: metrics.ChannelSnapshot) -> dict[str, metrics.EndpointMetrics]:
    return {e.address: e for e in snap.endpoints}


# ------------------------------------------------------------------ a resolver we drive
class PushResolver(lbclient.Resolver):
    """Delivers whatever the test pushes (registered as the ``metricspush`` scheme)."""

    instances: list[PushResolver] = []

    def __init__(self, target: lbclient.Target, listener: lbclient.ResolverListener,
                 options: Mapping[str, Any]) -> None:
        super().__init__(target, listener, options)
        PushResolver.instances.append(self)

    def start(self) -> None:
        pass

    def push(self, *addresses: str) -> None:
        self.listener.on_resolved(lbclient.ResolverState(
            tuple(lbclient.Endpoint(a) for a in addresses)))

    def fail(self, message: str) -> None:
        self.listener.on_resolver_error(lbclient.ResolverError(message))


lbclient.register_resolver("metricspush", PushResolver)


def test_resolver_updates_errors_and_endpoint_churn(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(3)
    with lbclient.insecure_channel("metricspush:///svc") as channel:
        m = metrics.instrument(channel)
        resolver = PushResolver.instances[-1]
        resolver.push(*fleet.addresses[:2])
        resolver.fail("lookup timed out")
        resolver.push(*fleet.addresses[1:])
        snap = m.snapshot()
        assert (snap.resolver_updates, snap.resolver_errors) == (2, 1)
        rows = by_address(snap)
        a, b, c = fleet.addresses
        assert rows[a].events == {"added": 1, "removed": 1} and not rows[a].present
        assert rows[b].events == {"added": 1} and rows[b].present
        assert rows[c].events == {"added": 1} and rows[c].present
        m.attachment.detach()
        resolver.push(a)
        assert m.snapshot().resolver_updates == 2               # detached: not counted


def test_ejection_and_readmission_are_counted(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(4)
    fleet[0].set_error_rate(1.0)
    config = {"loadBalancingConfig": [{"outlier_detection": {
        "interval": "0.2s", "baseEjectionTime": "0.5s", "maxEjectionPercent": 50,
        "consecutiveFailures": 3, "childPolicy": [{"round_robin": {}}]}}]}
    with lbclient.insecure_channel(fleet.target, service_config=config) as channel:
        m = metrics.instrument(channel)
        wait_ready(channel, 4)
        stub = echo_pb2_grpc.EchoStub(channel)
        bad = fleet[0].address

        def call_until(predicate: Any) -> None:
            for _ in range(400):                                  # bounded
                if predicate():
                    return
                try:
                    stub.Unary(echo_pb2.EchoRequest(), timeout=5)
                except grpc.RpcError:
                    pass
            raise AssertionError("condition not reached within 400 calls")

        call_until(lambda: by_address(m.snapshot())[bad].events.get("ejected", 0) >= 1)
        row = by_address(m.snapshot())[bad]
        assert row.ejected and not row.eligible
        assert row.calls.get("UNAVAILABLE", 0) >= 3
        fleet[0].set_error_rate(0.0)
        wait_until(lambda: by_address(m.snapshot())[bad].events.get("readmitted", 0) >= 1,
                   10, message="readmission")
        assert not by_address(m.snapshot())[bad].ejected


def test_channel_event_objects_are_translated() -> None:
    m = ChannelMetrics("t")
    att = Attachment.__new__(Attachment)      # only the translation, no channel needed
    att.sink = m
    for event in (EndpointEvent("added", "a", 0.0),
                  EndpointEvent("health_changed", "a", 0.0, healthy=False),
                  EndpointEvent("health_changed", "a", 0.0, healthy=None),   # pending
                  EndpointEvent("health_changed", "a", 0.0, healthy=True),
                  EndpointEvent("ejected", "a", 0.0, ejected_until=3.0),
                  EndpointEvent("readmitted", "a", 0.0),
                  EndpointEvent("panic_started", "", 0.0),                   # channel-wide
                  EndpointEvent("removed", "a", 0.0)):
        att._on_event(event)
    (row,) = m.snapshot().endpoints
    assert row.events == {"added": 1, "unhealthy": 1, "healthy": 1, "ejected": 1,
                          "readmitted": 1, "removed": 1}


# ------------------------------------------------------------------ concurrency
def test_concurrent_calls_are_all_counted(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(3)
    with lbclient.insecure_channel(fleet.target) as channel:
        m = metrics.instrument(channel)
        wait_ready(channel, 3)
        stub = echo_pb2_grpc.EchoStub(channel)
        snapshots: list[metrics.ChannelSnapshot] = []
        stop = threading.Event()

        def caller() -> None:
            for _ in range(50):
                stub.Unary(echo_pb2.EchoRequest(), timeout=10)

        def reader() -> None:
            while not stop.is_set():
                snapshots.append(m.snapshot())

        threads = [threading.Thread(target=caller) for _ in range(8)]
        watcher = threading.Thread(target=reader)
        watcher.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stop.set()
        watcher.join(10)
        final = m.snapshot()
        assert final.calls == {"OK": 400}
        assert sum(r.picks for r in final.endpoints) == 400
        assert all(r.in_flight == 0 for r in final.endpoints)
        totals = [s.calls.get("OK", 0) for s in snapshots]
        assert totals == sorted(totals)                     # counters never go backwards


# ------------------------------------------------------------------ properties
@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=20.0, allow_nan=False), max_size=50))
def test_each_latency_lands_in_its_bucket(latencies: list[float]) -> None:
    m = ChannelMetrics("t")
    for lat in latencies:
        m.call_ended("a", "OK", lat)
    snap = m.snapshot()
    if not latencies:
        assert snap.endpoints == ()
        return
    (row,) = snap.endpoints
    for i, bound in enumerate(LATENCY_BUCKETS):
        assert row.latency.cumulative()[i] == sum(1 for x in latencies if x <= bound)
    assert row.latency.count == len(latencies)
    assert row.latency.sum == pytest.approx(sum(latencies))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["call", "present", "gone"]),
                          st.integers(0, 9)), max_size=60),
       st.integers(1, 4))
def test_labels_stay_bounded_and_totals_exact(ops: list[tuple[str, int]], bound: int) -> None:
    present: set[str] = set()
    m = ChannelMetrics("t", lambda: [_Info(a) for a in sorted(present)], max_endpoints=bound)
    calls = 0
    for op, n in ops:
        address = f"10.0.0.{n}:1"
        if op == "call":
            m.call_ended(address, "OK", 0.001)
            calls += 1
        elif op == "present":
            present.add(address)
            m.snapshot()
        else:
            present.discard(address)
            m.snapshot()
    snap = m.snapshot()
    names = [r.address for r in snap.endpoints]
    assert len(names) == len(set(names))
    assert len([a for a in names if a != OTHER]) <= bound
    assert snap.calls.get("OK", 0) == calls


class _Info:
    def __init__(self, address: str) -> None:
        self.address = address
        self.picks = 0
        self.in_flight = 0
        self.connectivity = "READY"
        self.healthy = None
        self.ejected_until = None
        self.eligible = True


# ------------------------------------------------------------------ LBCLIENT_METRICS
def test_prometheus_port_serves_the_default_registry(
        fleet_factory: FleetFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    from lbclient.metrics import prometheus as lbprom

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fleet = fleet_factory(2)
    monkeypatch.setenv("LBCLIENT_METRICS", "prometheus")
    monkeypatch.setenv("LBCLIENT_PROMETHEUS_PORT", str(port))
    try:
        with lbclient.insecure_channel(fleet.target) as channel:
            wait_ready(channel, 2)
            echo_pb2_grpc.EchoStub(channel).Unary(echo_pb2.EchoRequest(), timeout=5)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
        assert sum(f'target="{fleet.target}"' in line and line.startswith(
            "lbclient_calls_total") for line in text.splitlines()) == 1
    finally:
        server = lbprom._http_started.pop(port, None)
        if server is not None:
            server.shutdown()


def test_missing_client_library_is_logged_once(
        fleet_factory: FleetFactory, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    fleet = fleet_factory(1)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)      # import fails
    monkeypatch.delitem(sys.modules, "lbclient.metrics.prometheus", raising=False)
    monkeypatch.delattr(metrics, "prometheus", raising=False)
    monkeypatch.setattr(_auto, "_warned", set())
    monkeypatch.setenv("LBCLIENT_METRICS", "prometheus")
    for _ in range(2):
        with lbclient.insecure_channel(fleet.target) as channel:   # still works
            wait_ready(channel, 1)
    warnings = [r for r in caplog.records if r.name == "lbclient.metrics"]
    assert len(warnings) == 1
    assert "LBCLIENT_METRICS=prometheus needs lbclient[prometheus]" in warnings[0].getMessage()


def test_picks_keep_counting_when_an_endpoint_comes_back(fleet_factory: FleetFactory) -> None:
    """The channel's per-endpoint counter restarts when an endpoint is removed and added
    again; the exported picks counter keeps growing."""
    fleet = fleet_factory(2)
    a, b = fleet.addresses
    with lbclient.insecure_channel("metricspush:///svc") as channel:
        m = metrics.instrument(channel)
        resolver = PushResolver.instances[-1]
        stub = echo_pb2_grpc.EchoStub(channel)

        def calls(n: int) -> None:
            for _ in range(n):
                stub.Unary(echo_pb2.EchoRequest(), timeout=5, wait_for_ready=True)

        resolver.push(a)
        calls(5)
        assert by_address(m.snapshot())[a].picks == 5
        resolver.push(b)                    # a removed (its counter goes with it)
        calls(2)
        m.snapshot()
        resolver.push(a, b)                 # a is back with a fresh counter
        wait_ready(channel, 2)
        before = {e.address: e.picks for e in channel.endpoints()}
        assert before[a] == 0
        for _ in range(40):                 # bounded: until a has had 3 calls again
            if next(e.picks for e in channel.endpoints() if e.address == a) >= 3:
                break
            calls(1)
        live_a = next(e.picks for e in channel.endpoints() if e.address == a)
        assert live_a >= 3
        row = by_address(m.snapshot())[a]
        assert row.picks == row.total_calls == 5 + live_a      # never dropped back
        assert by_address(m.snapshot())[a].events == {"added": 2, "removed": 1}
