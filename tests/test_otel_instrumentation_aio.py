"""OpenTelemetry's grpc.aio auto-instrumentation (``GrpcAioInstrumentorClient``) and user
``interceptors=`` on lbclient.aio channels: every call kind works, each attempt makes one
client span naming its endpoint, and lbclient's own calls (health probes, the
connection-error probe) meet no interceptor, so they make no span and no user
interceptor sees them - before or after the channel closes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_otel_instrumentation import _sdk_provider

import lbclient.aio
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

pytestmark = pytest.mark.timeout(90)

SERVICE = "lbclient.testing.echo.v1.Echo"
REQ = echo_pb2.EchoRequest(message="otel")
HEALTH = {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    _sdk_provider().add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = GrpcAioInstrumentorClient()
    instrumentor.instrument()
    try:
        yield exporter
    finally:
        instrumentor.uninstrument()
        exporter.shutdown()      # its processor stays on the provider, exporting nothing


def run(body: Callable[[], Coroutine[Any, Any, None]], timeout: float = 60) -> None:
    async def main() -> None:
        await asyncio.wait_for(body(), timeout)
    asyncio.run(main())


async def until(pred: Callable[[], bool], what: str, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def ready(ch: lbclient.aio.LoadBalancedChannel, n: int, healthy: bool = False) -> None:
    ch.get_state(try_to_connect=True)
    await until(lambda: sum(e.connectivity == "READY" and (not healthy or e.health == "healthy")
                            for e in ch.endpoints()) >= n, f"{n} ready endpoints")


async def _requests(n: int = 3) -> AsyncIterator[echo_pb2.EchoRequest]:
    for i in range(n):
        yield echo_pb2.EchoRequest(message=f"r{i}")


def _calls(stub: Any) -> dict[str, Callable[[], Awaitable[str]]]:
    """One call of every kind and style; each returns the backend address it reached."""
    async def unary() -> str:
        return str((await stub.Unary(REQ, timeout=5)).address)

    async def unary_call() -> str:
        call = stub.Unary(REQ, timeout=5)
        reply = await call
        assert await call.code() is grpc.StatusCode.OK
        return str(reply.address)

    async def server_stream() -> str:
        return [r.address async for r in stub.ServerStream(REQ, timeout=5)][0]

    async def server_stream_read() -> str:
        call = stub.ServerStream(REQ, timeout=5)
        first = await call.read()
        while await call.read() is not grpc.aio.EOF:
            pass
        return str(first.address)

    async def client_stream() -> str:
        return str((await stub.ClientStream(_requests(), timeout=5)).address)

    async def client_stream_write() -> str:
        call = stub.ClientStream(timeout=5)
        for i in range(3):
            await call.write(echo_pb2.EchoRequest(message=f"w{i}"))
        await call.done_writing()
        return str((await call).address)

    async def bidi() -> str:
        return [r.address async for r in stub.Bidi(_requests(), timeout=5)][0]

    async def bidi_write_read() -> str:
        call = stub.Bidi(timeout=5)
        await call.write(echo_pb2.EchoRequest(message="ping"))
        reply = await call.read()
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        return str(reply.address)

    return {"unary": unary, "unary_call": unary_call, "server_stream": server_stream,
            "server_stream_read": server_stream_read, "client_stream": client_stream,
            "client_stream_write": client_stream_write, "bidi": bidi,
            "bidi_write_read": bidi_write_read}


METHODS = {"unary": "Unary", "unary_call": "Unary", "server_stream": "ServerStream",
           "server_stream_read": "ServerStream", "client_stream": "ClientStream",
           "client_stream_write": "ClientStream", "bidi": "Bidi", "bidi_write_read": "Bidi"}


def _endpoint(span: Any) -> str:
    attrs = span.attributes or {}
    return f"{attrs.get('server.address')}:{attrs.get('server.port')}"


def _health(spans: InMemorySpanExporter) -> list[str]:
    return [s.name for s in spans.get_finished_spans() if "Health" in s.name]


def test_every_call_kind_makes_one_span_per_attempt_naming_its_endpoint(
        spans: InMemorySpanExporter) -> None:
    async def body(fleet: Fleet) -> None:
        ch = lbclient.aio.insecure_channel(fleet.target, service_config=HEALTH)
        try:
            await ready(ch, 3, healthy=True)
            stub = echo_pb2_grpc.EchoStub(ch)
            spans.clear()
            for name, call in _calls(stub).items():
                if name == "client_stream_write":
                    continue     # OTel's own limit (see the parity test below)
                before = len(spans.get_finished_spans())
                address = await call()
                await until(lambda b=before: len(spans.get_finished_spans()) > b,  # type: ignore[misc]
                            f"{name}: its span", 5)
                await asyncio.sleep(0.05)                 # (a second span would show now)
                new = spans.get_finished_spans()[before:]
                assert len(new) == 1, (name, [s.name for s in new])
                span = new[0]
                assert span.name == f"/{SERVICE}/{METHODS[name]}", (name, span.name)
                assert _endpoint(span) == address, (name, dict(span.attributes or {}))
                assert (span.attributes or {}).get("network.peer.address") == "127.0.0.1"
                assert (span.attributes or {}).get("rpc.grpc.status_code") == 0, name
            assert {_endpoint(s) for s in spans.get_finished_spans()} == set(fleet.addresses)
            assert all(b.health_calls > 0 for b in fleet)   # the probes did run
            assert _health(spans) == []
        finally:
            await ch.close()
        await asyncio.sleep(0.2)       # spans of streams the close ended would show now
        assert _health(spans) == []

    with Fleet(3) as fleet:
        run(lambda: body(fleet))


def test_a_written_client_stream_fails_under_instrumentation_as_on_grpc_aio(
        spans: InMemorySpanExporter) -> None:
    """OTel's stream-unary interceptor awaits the call's status before handing the call
    back, so a client stream fed by ``write()`` cannot start until its deadline ends it,
    on grpc.aio's own channel too: lbclient.aio fails it the same way, no worse."""
    async def attempt(channel: grpc.aio.Channel) -> str:
        call = echo_pb2_grpc.EchoStub(channel).ClientStream(timeout=0.5)
        try:
            await call.write(echo_pb2.EchoRequest(message="w"))
            await call.done_writing()
            await call
        except Exception as exc:
            return type(exc).__name__
        return "ok"

    async def body(fleet: Fleet) -> None:
        async with grpc.aio.insecure_channel(fleet[0].address) as plain, \
                lbclient.aio.insecure_channel(fleet.target) as balanced:
            await ready(balanced, 1)
            assert await attempt(plain) == await attempt(balanced) == "InvalidStateError"

    with Fleet(1) as fleet:
        run(lambda: body(fleet))


def test_retried_attempts_each_make_a_span_on_their_own_endpoint(
        spans: InMemorySpanExporter) -> None:
    config = {"loadBalancingConfig": [{"round_robin": {}}],
              "methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": {
                  "maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
                  "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}

    async def body(fleet: Fleet) -> None:
        async with lbclient.aio.insecure_channel(fleet.target, service_config=config) as ch:
            await ready(ch, 3)
            stub = echo_pb2_grpc.EchoStub(ch)
            spans.clear()
            for _ in range(6):
                assert (await stub.Unary(REQ, timeout=5)).address != fleet[0].address
            assert [r async for r in stub.ServerStream(REQ, timeout=5)]
            await asyncio.sleep(0.1)
            finished = spans.get_finished_spans()
            unavailable = grpc.StatusCode.UNAVAILABLE.value[0]
            failed = [s for s in finished
                      if (s.attributes or {}).get("rpc.grpc.status_code") == unavailable]
            assert failed, [dict(s.attributes or {}) for s in finished]
            assert all(_endpoint(s) == fleet[0].address for s in failed)
            ok = [s for s in finished if s not in failed]
            assert all(_endpoint(s) in fleet.addresses[1:] for s in ok)
            assert len(finished) == 7 + len(failed)        # one span per attempt
            assert fleet[0].calls == len(failed)

    with Fleet(3) as fleet:
        fleet[0].set_error_rate(1.0)                       # UNAVAILABLE, retried
        run(lambda: body(fleet))


# ------------------------------------------------------------------ user interceptors
class Seen:
    """grpc.aio interceptors of the four kinds (one object each: grpc.aio files an
    interceptor under its first kind only) recording the method of every call."""

    def __init__(self) -> None:
        self.methods: list[str] = []
        self.interceptors = [_UU(self), _US(self), _SU(self), _SS(self)]

    def saw(self, details: Any) -> None:
        method = details.method
        self.methods.append(method.decode() if isinstance(method, bytes) else method)


class _Kind:
    def __init__(self, seen: Seen) -> None:
        self.seen = seen


class _UU(_Kind, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        self.seen.saw(details)
        return await continuation(details, request)


class _US(_Kind, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        self.seen.saw(details)
        return await continuation(details, request)


class _SU(_Kind, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, it):  # type: ignore[no-untyped-def]
        self.seen.saw(details)
        return await continuation(details, it)


class _SS(_Kind, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, it):  # type: ignore[no-untyped-def]
        self.seen.saw(details)
        return await continuation(details, it)


@pytest.mark.parametrize("mode", ["watch", "poll"])
def test_user_interceptors_see_every_call_and_no_health_probe(mode: str) -> None:
    config = {"healthCheckConfig": {"serviceName": "", "mode": mode, "interval": "0.05s"}}

    async def body(fleet: Fleet) -> None:
        seen = Seen()
        ch = lbclient.aio.insecure_channel(fleet.target, service_config=config,
                                           interceptors=seen.interceptors)
        try:
            await ready(ch, 2, healthy=True)
            stub = echo_pb2_grpc.EchoStub(ch)
            for name, call in _calls(stub).items():
                assert await call() in fleet.addresses, name
            probes = 1 if mode == "watch" else 3        # one Watch stream; Check probes
            await until(lambda: all(b.health_calls >= probes for b in fleet), "health probes")
        finally:
            await ch.close()
        assert seen.methods == [f"/{SERVICE}/{m}" for m in METHODS.values()]

    with Fleet(2) as fleet:
        run(lambda: body(fleet))


def test_health_probes_make_no_spans_with_user_interceptors_and_instrumentation(
        spans: InMemorySpanExporter) -> None:
    async def body(fleet: Fleet) -> None:
        seen = Seen()
        ch = lbclient.aio.insecure_channel(fleet.target, service_config=HEALTH,
                                           interceptors=seen.interceptors)
        try:
            await ready(ch, 2, healthy=True)
            spans.clear()
            reply = await echo_pb2_grpc.EchoStub(ch).Unary(REQ, timeout=5)
            await until(lambda: len(spans.get_finished_spans()) >= 1, "the call's span")
            (span,) = spans.get_finished_spans()
            assert _endpoint(span) == reply.address
        finally:
            await ch.close()
        await asyncio.sleep(0.2)
        assert _health(spans) == [] and seen.methods == [f"/{SERVICE}/Unary"]

    with Fleet(2) as fleet:
        run(lambda: body(fleet))


def test_the_connection_error_probe_meets_no_interceptor() -> None:
    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()                                      # nothing listens: refused

    async def body() -> None:
        seen = Seen()
        async with lbclient.aio.insecure_channel(f"ipv4:127.0.0.1:{port}",
                                                 interceptors=seen.interceptors) as ch:
            ch.get_state(try_to_connect=True)
            stub = echo_pb2_grpc.EchoStub(ch)
            details = ""
            for _ in range(300):       # until grpc's own account of the failure is in
                try:
                    await stub.Unary(REQ, timeout=2)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() is grpc.StatusCode.UNAVAILABLE
                    details = exc.details() or ""
                if "refused" in details.lower():
                    break
                await asyncio.sleep(0.02)
            assert "refused" in details.lower(), details
            assert seen.methods == []    # the failing calls never reached a connection

    run(body)


def test_a_channel_without_interceptors_probes_on_its_own_channel() -> None:
    async def body(fleet: Fleet) -> None:
        seen = Seen()
        async with lbclient.aio.insecure_channel(fleet.target) as plain, \
                lbclient.aio.insecure_channel(fleet.target,
                                              interceptors=seen.interceptors) as wrapped:
            await ready(plain, 1)
            await ready(wrapped, 1)
            (p,) = [r.handle for r in plain._balancer.records()]
            (w,) = [r.handle for r in wrapped._balancer.records()]
            assert p.raw is p.channel                      # nothing to bypass: no cost
            assert w.raw is not w.channel
            assert isinstance(w.raw, grpc.aio.Channel)
            # the view is the same connection (READY without connecting) and its calls
            # meet no interceptor
            assert w.raw.get_state() is grpc.ChannelConnectivity.READY
            reply = await health_pb2_grpc.HealthStub(w.raw).Check(
                health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert seen.methods == []
            await echo_pb2_grpc.EchoStub(wrapped).Unary(REQ, timeout=5)
            assert seen.methods == [f"/{SERVICE}/Unary"]

    with Fleet(1) as fleet:
        run(lambda: body(fleet))
