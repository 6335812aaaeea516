"""The grpc.aio twin of :class:`lbclient.testing.interop.InteropServer`
(``InteropFleet(n, aio=True)``): the same ``grpc.testing.TestService`` behaviour, served by
a grpc.aio server with ``async`` handlers on an event loop of its own, in a daemon thread
(so it serves clients on any loop or thread). grpc.aio cancels a handler's task when its
call ends, which also ends its sleeps.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer as AioHealthServicer

from lbclient.testing._aio_backend import _LoopThread
from lbclient.testing._interop_common import (
    _HOST,
    _STOP_WAIT,
    SERVICE,
    _Stats,
    bad_type,
    echo_metadata,
    payload,
    requested_status,
)
from lbclient.testing._proto.interop import empty_pb2, messages_pb2, test_pb2_grpc

Context = grpc.aio.ServicerContext[object, object]


async def _begin(context: Context) -> None:
    """Echo Metadata: send back the echo keys (initial now, trailing at the end)."""
    initial, trailing = echo_metadata(context.invocation_metadata())
    if initial:
        await context.send_initial_metadata(initial)
    if trailing:
        context.set_trailing_metadata(trailing)


async def _end_with(context: Context, status: tuple[grpc.StatusCode, str] | None) -> None:
    if status is not None:
        await context.abort(*status)


async def _responses(request: messages_pb2.StreamingOutputCallRequest, context: Context
                     ) -> AsyncIterator[messages_pb2.StreamingOutputCallResponse]:
    await _end_with(context, requested_status(request.response_status)
                    or bad_type(request.response_type))
    params = request.response_parameters
    mixed = any(p.compressed.value for p in params)
    if mixed:
        context.set_compression(grpc.Compression.Gzip)
    for p in params:
        if p.interval_us > 0:
            await asyncio.sleep(p.interval_us / 1e6)
        if mixed and not p.compressed.value:
            context.disable_next_message_compression()
        yield messages_pb2.StreamingOutputCallResponse(payload=payload(p.size))


class AioInteropServicer(test_pb2_grpc.TestServiceServicer):
    """The asyncio ``grpc.testing.TestService`` (contract: ``lbclient.testing.interop``)."""

    def __init__(self, server_id: str, stats: _Stats) -> None:
        self._server_id = server_id
        self._stats = stats

    async def EmptyCall(self, request: empty_pb2.Empty, context: Context) -> empty_pb2.Empty:
        self._stats.count("EmptyCall")
        await _begin(context)
        return empty_pb2.Empty()

    async def UnaryCall(self, request: messages_pb2.SimpleRequest,
                        context: Context) -> messages_pb2.SimpleResponse:
        self._stats.count("UnaryCall")
        await _begin(context)
        await _end_with(context, requested_status(request.response_status)
                        or bad_type(request.response_type))
        if request.response_compressed.value:
            context.set_compression(grpc.Compression.Gzip)
        reply = messages_pb2.SimpleResponse(payload=payload(request.response_size))
        if request.fill_server_id:
            reply.server_id = self._server_id
            reply.hostname = socket.gethostname()
        return reply

    async def StreamingOutputCall(self, request: messages_pb2.StreamingOutputCallRequest,
                                  context: Context
                                  ) -> AsyncIterator[messages_pb2.StreamingOutputCallResponse]:
        self._stats.count("StreamingOutputCall")
        await _begin(context)
        async for response in _responses(request, context):
            yield response

    async def StreamingInputCall(
            self, request_iterator: AsyncIterator[messages_pb2.StreamingInputCallRequest],
            context: Context) -> messages_pb2.StreamingInputCallResponse:
        self._stats.count("StreamingInputCall")
        await _begin(context)
        total = 0
        async for request in request_iterator:
            total += len(request.payload.body)
        return messages_pb2.StreamingInputCallResponse(aggregated_payload_size=total)

    async def FullDuplexCall(
            self, request_iterator: AsyncIterator[messages_pb2.StreamingOutputCallRequest],
            context: Context) -> AsyncIterator[messages_pb2.StreamingOutputCallResponse]:
        self._stats.count("FullDuplexCall")
        await _begin(context)
        async for request in request_iterator:
            async for response in _responses(request, context):
                yield response

    async def HalfDuplexCall(
            self, request_iterator: AsyncIterator[messages_pb2.StreamingOutputCallRequest],
            context: Context) -> AsyncIterator[messages_pb2.StreamingOutputCallResponse]:
        self._stats.count("HalfDuplexCall")
        await _begin(context)
        requests = [request async for request in request_iterator]
        for request in requests:
            async for response in _responses(request, context):
                yield response

    async def UnimplementedCall(self, request: empty_pb2.Empty,
                                context: Context) -> empty_pb2.Empty:
        """Deliberately unimplemented (the spec's unimplemented_method case)."""
        self._stats.count("UnimplementedCall")
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")


class AioInteropServer:
    """One grpc.aio interop server on a 127.0.0.1 ephemeral port, started by the
    constructor; the same surface as :class:`~lbclient.testing.interop.InteropServer`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats = _Stats()
        self._thread: _LoopThread | None = _LoopThread("lbclient-interop-aio")
        try:
            self._server, self.port = self._thread.run(self._serve())
        except BaseException:
            self._thread.stop()
            raise
        self.address = f"{_HOST}:{self.port}"

    async def _serve(self) -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        port = server.add_insecure_port(f"{_HOST}:0")
        if not port:
            raise RuntimeError(f"cannot bind {_HOST}:0")
        test_pb2_grpc.add_TestServiceServicer_to_server(
            AioInteropServicer(f"{_HOST}:{port}", self._stats), server)
        health_servicer = AioHealthServicer()
        for name in ("", SERVICE):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        await server.start()
        return server, port

    @property
    def server_id(self) -> str:
        return self.address

    @property
    def running(self) -> bool:
        return self._thread is not None

    def calls(self) -> dict[str, int]:
        return self._stats.snapshot()

    def reset_counters(self) -> None:
        self._stats.reset()

    def stop(self, grace: float | None = None) -> None:
        """Idempotent; not from this server's own loop thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            thread.run(self._server.stop(grace), (grace or 0) + _STOP_WAIT)
        finally:
            thread.stop()

    def __repr__(self) -> str:
        return f"<AioInteropServer {self.address} running={self.running}>"
