"""A fake Echo backend served by a ``grpc.aio`` server (``Fleet(n, aio=True)``).

:class:`AioBackend` is a :class:`~lbclient.testing.Backend` whose server is a grpc.aio
server with ``async`` handlers, running on an event loop of its own in a background
thread (one per server generation: ``start()`` makes it, ``stop()`` ends it). So it can be
driven from plain test code and serves clients on any loop or thread. Everything else is
the sync backend's: the same controls (``set_latency``, ``set_error_rate``, ``set_health``,
``hang``, ``set_orca``, ``stop``/``restart`` on the same port), counters, replies,
metadata and health service (grpc_health's asyncio ``HealthServicer``).

Threading: controls may be called from any thread except the backend's own loop thread
(``start``/``stop``/``set_health`` wait, bounded, for that loop). Handlers only poll the
thread-safe state and never block their loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1._async import HealthServicer as AioHealthServicer

from lbclient.testing._backend import (
    _BIND_TIMEOUT,
    _CODES_BY_NUMBER,
    _DRAIN_TIMEOUT,
    _HEALTH_PREFIX,
    _HOST,
    _POLL,
    NOT_SERVING,
    SERVING,
    Backend,
    _CallEnded,
)
from lbclient.testing._proto import echo_pb2, echo_pb2_grpc

T = TypeVar("T")
_WAIT = 15.0   # bound on waiting for the server loop (start, stop, set_health)


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = _WAIT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(_WAIT)


class AioBackend(Backend):
    """See the module docstring; constructor arguments are :class:`Backend`'s
    (``max_workers`` is ignored: handlers are coroutines)."""

    def __init__(self, name: str | None = None, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        # The grpc.aio server and health servicer (Backend's _server/_health_servicer,
        # the sync ones, stay None), and the loop thread that runs them.
        self._aio_server: grpc.aio.Server | None = None
        self._aio_health: AioHealthServicer | None = None
        self._loop_thread: _LoopThread | None = None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> AioBackend:
        with self._lock:
            if self._aio_server is not None:
                return self
            statuses = dict(self._health_status)
            wanted = self._port or 0
        stopped = threading.Event()
        thread = _LoopThread(f"lbclient-aio-backend-{wanted}")
        try:
            server, port, hs = thread.run(self._serve(wanted, stopped, statuses),
                                          _BIND_TIMEOUT + _WAIT)
        except BaseException:
            thread.stop()
            raise
        with self._lock:
            self._port = port
            self._aio_server, self._aio_health = server, hs
            self._loop_thread, self._stopped = thread, stopped
        return self

    async def _serve(self, wanted: int, stopped: threading.Event, statuses: dict[str, int]
                     ) -> tuple[grpc.aio.Server, int, AioHealthServicer | None]:
        deadline = time.monotonic() + _BIND_TIMEOUT
        while True:
            server = grpc.aio.server(interceptors=[_AioHealthCounter(self)],
                                     options=[("grpc.so_reuseport", 0)])
            try:
                if self._server_credentials is not None:
                    port = server.add_secure_port(f"{_HOST}:{wanted}",
                                                  self._server_credentials)
                else:
                    port = server.add_insecure_port(f"{_HOST}:{wanted}")
            except RuntimeError:
                port = 0
            if port and (not wanted or port == wanted):
                break
            if time.monotonic() >= deadline:
                raise RuntimeError(f"cannot bind {_HOST}:{wanted} within {_BIND_TIMEOUT}s")
            await asyncio.sleep(0.05)
        echo_pb2_grpc.add_EchoServicer_to_server(_AioEchoServicer(self, stopped), server)
        hs = None
        if self._health_enabled:
            hs = AioHealthServicer()
            for service, status in statuses.items():
                await hs.set(service, status)
            health_pb2_grpc.add_HealthServicer_to_server(hs, server)
        await server.start()
        return server, port, hs

    def stop(self, grace: float | None = None) -> None:
        with self._lock:
            server, hs, thread = self._aio_server, self._aio_health, self._loop_thread
            if server is None or thread is None:
                return
            self._aio_server = self._aio_health = None
            self._loop_thread = None
            stopped = self._stopped

        async def shutdown() -> None:
            if hs is not None:
                await hs.enter_graceful_shutdown()
            await server.stop(grace)

        try:
            thread.run(shutdown(), (grace or 0) + _DRAIN_TIMEOUT)
        finally:
            stopped.set()
            with self._lock:
                self._lock.wait_for(lambda: self._in_flight == 0, timeout=_DRAIN_TIMEOUT)
            thread.stop()

    @property
    def running(self) -> bool:
        with self._lock:
            return self._aio_server is not None

    # ----------------------------------------------------------------- controls
    def set_health(self, status: int | bool, service: str = "") -> None:
        if isinstance(status, bool):
            status = SERVING if status else NOT_SERVING
        with self._lock:
            self._health_status[service] = int(status)
            hs, thread = self._aio_health, self._loop_thread
        if hs is not None and thread is not None:
            thread.run(hs.set(service, int(status)))


class _AioHealthCounter(grpc.aio.ServerInterceptor):
    """Counts grpc.health.v1 RPCs without touching them."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
            handler_call_details: grpc.HandlerCallDetails) -> Any:
        if handler_call_details.method.startswith(_HEALTH_PREFIX):
            self._backend._count_health()
        return await continuation(handler_call_details)


class _AioCall:
    """Per-RPC helper (the async twin of ``_backend._Call``)."""

    def __init__(self, backend: Backend, stopped: threading.Event, context: Any) -> None:
        self.backend = backend
        self.stopped = stopped
        self.context: grpc.aio.ServicerContext[Any, Any] = context
        self._headers_sent = False
        trailers: list[tuple[str, str | bytes]] = [("x-backend", backend.name)]
        trailers += [(k, v) for k, v in context.invocation_metadata() or ()
                     if k.startswith("x-echo-")]
        trailers += backend._orca_trailer()
        context.set_trailing_metadata(tuple(trailers))

    def alive(self) -> bool:
        return not self.context.done() and not self.stopped.is_set()

    async def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            if not self.alive():
                raise _CallEnded
            left = end - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, _POLL))

    async def wait_unhung(self) -> None:
        while not self.backend._unhung.is_set():
            if not self.alive():
                raise _CallEnded
            await asyncio.sleep(_POLL)

    async def ended(self) -> None:
        if not self.context.done():
            await self.fail(grpc.StatusCode.UNAVAILABLE, "backend stopped")

    async def headers(self) -> None:
        if not self._headers_sent:
            self._headers_sent = True
            await self.context.send_initial_metadata((("x-backend", self.backend.name),))

    async def fail(self, code: grpc.StatusCode, details: str) -> None:
        await self.headers()
        await self.context.abort(code, details)

    async def admit(self) -> None:
        await self.wait_unhung()
        error = self.backend._draw_error()
        if error is not None:
            await self.fail(*error)

    async def before_reply(self, request: echo_pb2.EchoRequest) -> None:
        if request.fail_code:
            code = _CODES_BY_NUMBER.get(request.fail_code, grpc.StatusCode.UNKNOWN)
            await self.fail(code, request.fail_details)
        await self.wait_unhung()
        await self.sleep(self.backend.latency + max(request.sleep_ms, 0) / 1000.0)
        await self.headers()

    def reply(self, message: str, index: int, payload: bytes) -> echo_pb2.EchoReply:
        b = self.backend
        return echo_pb2.EchoReply(message=message, backend=b.name, address=b.address,
                                  index=index, payload=payload)


class _AioEchoServicer(echo_pb2_grpc.EchoServicer):
    """Echo handlers as coroutines; one instance per server generation."""

    def __init__(self, backend: Backend, stopped: threading.Event) -> None:
        self._backend = backend
        self._stopped = stopped

    async def Unary(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoReply:
        with self._backend._track("Unary"):
            call = _AioCall(self._backend, self._stopped, context)
            try:
                await call.admit()
                await call.before_reply(request)
            except _CallEnded:
                await call.ended()
                return echo_pb2.EchoReply()
            return call.reply(request.message, 0, request.payload)

    async def ServerStream(self, request: echo_pb2.EchoRequest,
                           context: Any) -> AsyncIterator[echo_pb2.EchoReply]:
        with self._backend._track("ServerStream"):
            call = _AioCall(self._backend, self._stopped, context)
            try:
                await call.admit()
                for i in range(request.count if request.count > 0 else 1):
                    await call.before_reply(request)
                    yield call.reply(request.message, i, request.payload)
            except _CallEnded:
                await call.ended()

    async def ClientStream(self, request_iterator: AsyncIterator[echo_pb2.EchoRequest],
                           context: Any) -> echo_pb2.EchoReply:
        with self._backend._track("ClientStream"):
            call = _AioCall(self._backend, self._stopped, context)
            messages: list[str] = []
            payload = b""
            try:
                await call.admit()
                last = echo_pb2.EchoRequest()
                async for request in request_iterator:
                    if request.fail_code:
                        await call.before_reply(request)  # aborts
                    messages.append(request.message)
                    payload += request.payload
                    last = request
                await call.before_reply(last)
            except _CallEnded:
                await call.ended()
                return echo_pb2.EchoReply()
            return call.reply(",".join(messages), len(messages), payload)

    async def Bidi(self, request_iterator: AsyncIterator[echo_pb2.EchoRequest],
                   context: Any) -> AsyncIterator[echo_pb2.EchoReply]:
        with self._backend._track("Bidi"):
            call = _AioCall(self._backend, self._stopped, context)
            try:
                await call.admit()
                i = 0
                async for request in request_iterator:
                    await call.before_reply(request)
                    yield call.reply(request.message, i, request.payload)
                    i += 1
            except _CallEnded:
                await call.ended()
