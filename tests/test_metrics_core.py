"""The metrics core: exact counts from real calls, bounded labels, events, detaching,
no strong reference to the channel, and LBCLIENT_METRICS auto-instrumentation."""

from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from helpers import wait_ready, wait_until

import lbclient
import lbclient.metrics as metrics
from lbclient.metrics import LATENCY_BUCKETS, OTHER, ChannelMetrics
from lbclient.metrics._attach import Attachment
from lbclient.testing import NOT_SERVING, echo_pb2, echo_pb2_grpc
from lbclient.testing.pytest_plugin import FleetFactory


def info(address: str, picks: int = 0, in_flight: int = 0) -> SimpleNamespace:
    return SimpleNamespace(address=address, picks=picks, in_flight=in_flight,
                           connectivity="READY", healthy=None, ejected_until=None,
                           eligible=True)


def by_address(snap: metrics.ChannelSnapshot) -> dict[str, metrics.EndpointMetrics]:
    return {e.address: e for e in snap.endpoints}


# ------------------------------------------------------------------ pure collector
def test_counts_codes_and_histogram_buckets() -> None:
    live = [info("a", picks=4, in_flight=1)]
    m = ChannelMetrics("t", lambda: live)
    m.call_ended("a", "OK", 0.003)
    m.call_ended("a", "OK", 0.0005)            # exactly a bound: that bucket (le)
    m.call_ended("a", "UNAVAILABLE", 20.0)     # above the last bound: +Inf bucket
    m.call_ended("a", "NOT_A_CODE", 0.0)       # outside the label set: UNKNOWN
    a = by_address(m.snapshot())["a"]
    assert a.calls == {"OK": 2, "UNAVAILABLE": 1, "UNKNOWN": 1}
    assert a.total_calls == 4
    counts = a.latency.counts
    assert len(counts) == len(LATENCY_BUCKETS) + 1
    assert counts[LATENCY_BUCKETS.index(0.005)] == 1
    assert counts[LATENCY_BUCKETS.index(0.0005)] == 2     # 0.0005 and 0.0
    assert counts[-1] == 1
    assert a.latency.cumulative()[-1] == a.latency.count == 4
    assert a.latency.sum == pytest.approx(20.0035)
    assert a.picks == 5 and a.in_flight == 1 and a.present and a.eligible  # 4 ended + 1


def test_address_labels_are_bounded_and_totals_kept() -> None:
    live = [info("a"), info("b")]
    m = ChannelMetrics("t", lambda: live, max_endpoints=2)
    m.snapshot()
    for address in ("a", "b", "c", "d"):
        m.call_ended(address, "OK", 0.001)
    rows = by_address(m.snapshot())
    assert set(rows) == {"a", "b", OTHER}             # c and d share "other"
    assert rows[OTHER].calls == {"OK": 2}
    # "a" is removed from the channel: its record makes room and folds into "other".
    live[:] = [info("b"), info("e")]
    m.snapshot()
    m.call_ended("e", "OK", 0.001)
    snap = m.snapshot()
    rows = by_address(snap)
    assert set(rows) == {"b", "e", OTHER}
    assert rows[OTHER].calls == {"OK": 3}
    assert snap.calls == {"OK": 5}                    # channel totals never go down
    with pytest.raises(ValueError):
        ChannelMetrics("t", max_endpoints=0)


def test_events_and_resolver_counters() -> None:
    m = ChannelMetrics("t")
    for kind in ("added", "ejected", "readmitted", "ejected", "bogus"):
        m.endpoint_event("a", kind)
    m.resolver_update(3)
    m.resolver_error("boom")
    m.resolver_error("boom")
    snap = m.snapshot()
    assert by_address(snap)["a"].events == {"added": 1, "ejected": 2, "readmitted": 1}
    assert by_address(snap)["a"].present is False        # no live source: not present
    assert (snap.resolver_updates, snap.resolver_errors) == (1, 2)


class FakeChannel:
    """Our own channel interface without add_event_listener: the diff fallback."""

    def __init__(self) -> None:
        self.infos: list[Any] = []
        self.call_listeners: list[Any] = []
        self._balancer = self
        self.listeners: list[Any] = []

    def add_call_listener(self, fn: Any) -> None:
        self.call_listeners.append(fn)

    def remove_call_listener(self, fn: Any) -> None:
        self.call_listeners.remove(fn)

    def add_listener(self, fn: Any) -> None:
        self.listeners.append(fn)

    def remove_listener(self, fn: Any) -> None:
        self.listeners.remove(fn)

    def endpoints(self) -> list[Any]:
        return list(self.infos)

    def change(self, *infos: Any) -> None:
        self.infos = list(infos)
        for fn in list(self.listeners):
            fn()


def test_fallback_diffs_endpoint_snapshots() -> None:
    ch = FakeChannel()
    m = ChannelMetrics("t", ch.endpoints)
    att = Attachment(ch, m)
    ch.change(info("a"), info("b"))
    ch.change(SimpleNamespace(**{**vars(info("a")), "healthy": False}),
              SimpleNamespace(**{**vars(info("b")), "ejected_until": 5.0}))
    ch.change(SimpleNamespace(**{**vars(info("a")), "healthy": True}), info("b"))
    ch.change(info("b"))
    for fn in ch.call_listeners:
        fn("b", SimpleNamespace(code="OK", latency=0.01))
    rows = by_address(m.snapshot())
    assert rows["a"].events == {"added": 1, "unhealthy": 1, "healthy": 1, "removed": 1}
    assert rows["b"].events == {"added": 1, "ejected": 1, "readmitted": 1}
    assert rows["b"].calls == {"OK": 1}
    att.detach()
    att.detach()                                   # idempotent
    assert ch.listeners == [] and ch.call_listeners == []


# ------------------------------------------------------------------ real channel
def test_real_calls_are_counted_exactly(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(3)
    fleet[2].set_error_rate(1.0)
    with lbclient.insecure_channel(fleet.target) as channel:
        m = metrics.instrument(channel)
        wait_ready(channel, 3)
        stub = echo_pb2_grpc.EchoStub(channel)
        failures = 0
        for i in range(30):
            try:
                stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5)
            except grpc.RpcError:
                failures += 1
        snap = m.snapshot()
        rows = by_address(snap)
        assert snap.calls == {"OK": 30 - failures, "UNAVAILABLE": failures}
        assert failures == rows[fleet[2].address].calls.get("UNAVAILABLE", 0) > 0
        for b in fleet:
            row = rows[b.address]
            assert row.total_calls == b.calls                 # what the backend received
            assert row.picks == row.total_calls and row.in_flight == 0
            assert row.latency.count == row.total_calls
        assert snap.resolver_updates == 0                     # attached after the update
        m.attachment.detach()
        fleet[2].set_error_rate(0.0)
        stub.Unary(echo_pb2.EchoRequest(message="after"), timeout=5, wait_for_ready=True)
        assert sum(r.total_calls for r in by_address(m.snapshot()).values()) == 30


def test_health_events_reach_the_collector(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(3)
    config = {"healthCheckConfig": {"serviceName": ""}, "lbclient": {"panicThreshold": 0}}
    with lbclient.insecure_channel(fleet.target, service_config=config) as channel:
        m = metrics.instrument(channel)
        wait_until(lambda: all(e.healthy for e in channel.endpoints()), 10,
                   message="all healthy")
        fleet[1].set_health(NOT_SERVING)
        wait_until(lambda: by_address(m.snapshot())[fleet[1].address].events.get(
            "unhealthy", 0) == 1, 10, message="unhealthy event")
        row = by_address(m.snapshot())[fleet[1].address]
        assert row.healthy is False and not row.eligible


def test_metrics_hold_the_channel_weakly(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(1)
    channel = lbclient.insecure_channel(fleet.target)
    m = metrics.instrument(channel)
    ref = weakref.ref(channel)
    channel.close()
    del channel
    gc.collect()
    assert ref() is None
    assert m.snapshot().endpoints == ()             # nothing live, nothing recorded
    assert m.attachment.channel is None
    m.attachment.detach()


def test_lbclient_metrics_env_instruments_new_channels(
        fleet_factory: FleetFactory, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from lbclient.metrics import _auto
    from lbclient.metrics.prometheus import collector_for

    fleet = fleet_factory(2)
    monkeypatch.setenv("LBCLIENT_METRICS", "prometheus, bogus")
    monkeypatch.setattr(_auto, "_warned", set())
    with lbclient.insecure_channel(fleet.target) as channel:
        wait_ready(channel, 2)
        echo_pb2_grpc.EchoStub(channel).Unary(echo_pb2.EchoRequest(), timeout=5)
        snaps = [s for s in collector_for()._live() if s.target == fleet.target]
        assert len(snaps) == 1
        assert snaps[0].resolver_updates == 1            # attached before the first update
        assert sum(e.total_calls for e in snaps[0].endpoints) == 1
        assert {e.events.get("added") for e in snaps[0].endpoints} == {1}
    assert "unknown exporter 'bogus'" in caplog.text
    assert not [s for s in collector_for()._live() if s.target == fleet.target]  # closed


def test_logging_is_per_state_change_never_per_call(
        fleet_factory: FleetFactory, caplog: pytest.LogCaptureFixture) -> None:
    """lbclient's loggers say one line per state change: 300 calls (a third failing) add
    no log lines at any level once the channel is up."""
    import logging

    fleet = fleet_factory(3)
    fleet[0].set_error_rate(1.0)
    with lbclient.insecure_channel(fleet.target) as channel:
        wait_ready(channel, 3)
        stub = echo_pb2_grpc.EchoStub(channel)
        with caplog.at_level(logging.DEBUG, logger="lbclient"):
            for i in range(300):
                try:
                    stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5)
                except grpc.RpcError:
                    pass
        per_call = [r for r in caplog.records if r.name.startswith("lbclient")]
        assert per_call == [], [r.getMessage() for r in per_call[:5]]


def test_the_core_needs_neither_exporter_library() -> None:
    """Importing lbclient and using lbclient.metrics loads neither prometheus_client nor
    opentelemetry (checked in a fresh interpreter), and the core modules import only the
    standard library and lbclient."""
    import ast
    import pathlib
    import subprocess
    import sys

    code = ("import sys, lbclient, lbclient.metrics, lbclient.cli; "
            "print(sorted(m for m in sys.modules "
            "if m.startswith(('prometheus_client', 'opentelemetry'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={k: v for k, v in __import__("os").environ.items()
                                          if k != "LBCLIENT_METRICS"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    pkg = pathlib.Path(metrics.__file__).parent
    for name in ("__init__.py", "_core.py", "_attach.py", "_auto.py"):
        tree = ast.parse((pkg / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top = node.module.split(".")[0]
            elif isinstance(node, ast.Import):
                top = node.names[0].name.split(".")[0]
            else:
                continue
            assert top in sys.stdlib_module_names or top == "__future__", (name, top)
