"""Metrics without code, end to end in a fresh process (the global OpenTelemetry meter
provider and Prometheus' default registry are process-wide), and what the metrics
refuse."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap

import pytest

import lbclient
import lbclient.aio
import lbclient.metrics as metrics
from lbclient.testing.pytest_plugin import FleetFactory

CHILD = textwrap.dedent('''
    import json, sys, time
    from opentelemetry import metrics as otel
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from prometheus_client import REGISTRY
    import lbclient
    from lbclient.testing import echo_pb2, echo_pb2_grpc

    reader = InMemoryMetricReader()
    otel.set_meter_provider(MeterProvider(metric_readers=[reader]))
    target = sys.argv[1]
    with lbclient.insecure_channel(target) as channel:      # no metrics code at all
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(
                e.connectivity == "READY" for e in channel.endpoints()):
            time.sleep(0.01)
        stub = echo_pb2_grpc.EchoStub(channel)
        for i in range(12):
            stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=10)
        otel_calls = {}
        for rm in reader.get_metrics_data().resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == "lbclient.calls":
                        for p in m.data.data_points:
                            otel_calls[p.attributes["lbclient.address"]] = p.value
        prom_calls = {}
        for family in REGISTRY.collect():
            for s in family.samples:
                if s.name == "lbclient_calls_total" and s.labels["target"] == target:
                    prom_calls[s.labels["address"]] = s.value
    print(json.dumps({"otel": otel_calls, "prometheus": prom_calls}))
''')


def test_env_switch_exports_to_both_without_code(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(3)
    env = {**os.environ, "LBCLIENT_METRICS": "prometheus,opentelemetry"}
    env.pop("LBCLIENT_PROMETHEUS_PORT", None)
    proc = subprocess.run([sys.executable, "-c", CHILD, fleet.target], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {b.address: b.calls for b in fleet}
    assert sum(expected.values()) == 12
    assert got["otel"] == expected
    assert {a: int(v) for a, v in got["prometheus"].items()} == expected


def test_without_the_switch_nothing_is_attached(fleet_factory: FleetFactory,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LBCLIENT_METRICS", raising=False)
    fleet = fleet_factory(1)
    with lbclient.insecure_channel(fleet.target) as channel:
        assert channel._call_listeners == ()
        assert channel._ctx.call_listener is None          # no per-call cost at all
        m = metrics.instrument(channel)
        assert len(channel._call_listeners) == 1
        m.attachment.detach()
        assert channel._call_listeners == () and channel._ctx.call_listener is None


def test_asyncio_channels_are_instrumented_too(fleet_factory: FleetFactory,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LBCLIENT_METRICS", raising=False)
    fleet = fleet_factory(1)

    async def run() -> None:
        async with lbclient.aio.insecure_channel(fleet.target) as channel:
            assert channel._ctx.call_listener is None           # no per-call cost unset
            m = metrics.instrument(channel)
            assert channel._ctx.call_listener is not None
            m.attachment.detach()
            assert channel._call_listeners == () and channel._ctx.call_listener is None
        with pytest.raises(TypeError, match="needs a channel with add_call_listener"):
            metrics.attach(object(), metrics.ChannelMetrics("t", list))

    asyncio.run(run())


def test_serve_starts_one_server_per_port() -> None:
    import socket

    from lbclient.metrics import prometheus as lbprom

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        first = lbprom.serve(port)
        assert lbprom.serve(port) is first
        assert first.server_port == port
    finally:
        server = lbprom._http_started.pop(port, None)
        if server is not None:
            server.shutdown()
