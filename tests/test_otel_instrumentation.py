"""OpenTelemetry's grpc auto-instrumentation (opentelemetry-instrumentation-grpc) on an
lbclient channel: every call kind works, each attempt makes one client span that names
its endpoint, and health probes make none."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from helpers import wait_ready, wait_until
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import lbclient
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

SERVICE = "lbclient.testing.echo.v1.Echo"
REQ = echo_pb2.EchoRequest(message="otel")


def _sdk_provider() -> TracerProvider:
    """The process's tracer provider, made an SDK one (the instrumentor's channels use
    the global provider; it can be set only once per process)."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider()
    trace.set_tracer_provider(provider)
    return provider


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    _sdk_provider().add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = GrpcInstrumentorClient()
    instrumentor.instrument()
    try:
        yield exporter
    finally:
        instrumentor.uninstrument()
        exporter.shutdown()      # its processor stays on the provider, exporting nothing


def _requests(n: int = 3) -> Iterator[echo_pb2.EchoRequest]:
    for i in range(n):
        yield echo_pb2.EchoRequest(message=f"r{i}")


def _calls(stub: Any) -> dict[str, Any]:
    """One call of every kind and style; each returns the backend address it reached."""
    return {
        "unary": lambda: stub.Unary(REQ, timeout=5).address,
        "unary_with_call": lambda: stub.Unary.with_call(REQ, timeout=5)[0].address,
        "unary_future": lambda: stub.Unary.future(REQ, timeout=5).result().address,
        "server_stream": lambda: [r.address for r in stub.ServerStream(REQ, timeout=5)][0],
        "client_stream": lambda: stub.ClientStream(_requests(), timeout=5).address,
        "client_stream_future":
            lambda: stub.ClientStream.future(_requests(), timeout=5).result().address,
        "bidi": lambda: [r.address for r in stub.Bidi(_requests(), timeout=5)][0],
    }


def _endpoint(span: Any) -> str:
    attrs = span.attributes or {}
    return f"{attrs.get('server.address')}:{attrs.get('server.port')}"


def test_every_call_kind_makes_one_span_per_attempt_naming_its_endpoint(
        spans: InMemorySpanExporter) -> None:
    with Fleet(3) as fleet:
        config = {"loadBalancingConfig": [{"round_robin": {}}],
                  "healthCheckConfig": {"serviceName": ""}}
        with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
            wait_ready(ch, 3)
            wait_until(lambda: all(e.health == "healthy" for e in ch.endpoints()), 10,
                       message="health answers")
            stub = echo_pb2_grpc.EchoStub(ch)
            spans.clear()
            for name, call in _calls(stub).items():
                before = len(spans.get_finished_spans())
                address = call()
                wait_until(lambda b=before: len(spans.get_finished_spans()) > b, 5,
                           message=f"{name}: its span")
                new = spans.get_finished_spans()[before:]
                assert len(new) == 1, (name, [s.name for s in new])
                span = new[0]
                method = {"unary_with_call": "Unary", "unary_future": "Unary",
                          "client_stream_future": "ClientStream"}.get(name)
                assert span.name.startswith(f"/{SERVICE}/"), span.name
                if method is not None:
                    assert span.name == f"/{SERVICE}/{method}"
                assert _endpoint(span) == address, (name, dict(span.attributes or {}))
                assert (span.attributes or {}).get("rpc.grpc.status_code") == 0, name
            # health probes (Watch streams on the same connections) made no span at all
            assert not [s for s in spans.get_finished_spans() if "Health" in s.name]


def test_retried_attempts_each_make_a_span_on_their_own_endpoint(
        spans: InMemorySpanExporter) -> None:
    with Fleet(3) as fleet:
        fleet[0].set_error_rate(1.0)                         # UNAVAILABLE, retried
        config = {"loadBalancingConfig": [{"round_robin": {}}],
                  "methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": {
                      "maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
                      "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}
        with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
            wait_ready(ch, 3)
            stub = echo_pb2_grpc.EchoStub(ch)
            spans.clear()
            for _ in range(6):
                assert stub.Unary(REQ, timeout=5).address != fleet[0].address
            finished = spans.get_finished_spans()
            failed = [s for s in finished
                      if (s.attributes or {}).get("rpc.grpc.status_code") ==
                      grpc.StatusCode.UNAVAILABLE.value[0]]
            assert failed and all(_endpoint(s) == fleet[0].address for s in failed)
            assert len(finished) == 6 + len(failed)        # one span per attempt


def test_close_with_health_checks_and_instrumentation(spans: InMemorySpanExporter) -> None:
    with Fleet(2) as fleet:
        for mode in ("watch", "poll"):
            ch = lbclient.insecure_channel(fleet.target, service_config={
                "healthCheckConfig": {"serviceName": "", "mode": mode}})
            wait_ready(ch, 2)
            echo_pb2_grpc.EchoStub(ch).Unary(REQ, timeout=5)
            ch.close()                                      # must not raise
            ch.close()
