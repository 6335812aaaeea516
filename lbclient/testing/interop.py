"""gRPC interop test servers (``grpc.testing.TestService``) on 127.0.0.1 ephemeral ports.

Written for lbclient from gRPC's interop test descriptions
(``doc/interop-test-descriptions.md``, section "Server"). Every server implements:

* **EmptyCall**: returns ``Empty`` at once.
* **UnaryCall**: a payload of ``response_size`` zero bytes (``INVALID_ARGUMENT`` for an
  unknown ``response_type``); ``server_id`` (this server's ``"127.0.0.1:PORT"``) and
  ``hostname`` when ``fill_server_id`` is set; ``response_compressed`` compresses the reply.
* **StreamingOutputCall**: one response per ``ResponseParameters`` (``size`` bytes, after
  sleeping ``interval_us``; ``compressed`` per message), then OK.
* **StreamingInputCall**: after half-close, ``aggregated_payload_size`` = the sum of every
  request's payload body size.
* **FullDuplexCall**: replies to each request as it arrives, as StreamingOutputCall does;
  OK after the client half-closes. **HalfDuplexCall**: the same, but only after half-close.
* **Echo Status**: a request whose ``response_status.code`` is not 0 ends the call with that
  code and message; later requests of the stream are not processed.
* **Echo Metadata**: ``x-grpc-test-echo-initial`` is sent back in the initial metadata and
  ``x-grpc-test-echo-trailing-bin`` in the trailing metadata, unchanged.
* **UnimplementedCall** is not implemented (``UNIMPLEMENTED``), nor is
  ``grpc.testing.UnimplementedService``. ``expect_compressed`` (CompressedRequest) is not
  checked: grpcio does not tell a handler whether a request arrived compressed.
* ``grpc.health.v1.Health`` reports SERVING for ``""`` and ``"grpc.testing.TestService"``.

:class:`InteropFleet` ``(n)`` starts ``n`` such servers (``aio=True``: grpc.aio servers, see
``lbclient.testing._interop_aio``) and gives the target ``"ipv4:127.0.0.1:p1,..."``.

Threading: servers are thread-safe; ``stop()`` may be called from any thread and is
idempotent. Handlers' sleeps end as soon as their call ends (cancel, deadline, stop).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lbclient.testing._interop_aio import AioInteropServer
from lbclient.testing._interop_common import (
    _HOST,
    _STOP_WAIT,
    ECHO_INITIAL_KEY,
    ECHO_TRAILING_KEY,
    SERVICE,
    _Stats,
    bad_type,
    echo_metadata,
    payload,
    requested_status,
)
from lbclient.testing._proto.interop import empty_pb2, messages_pb2, test_pb2_grpc

__all__ = ["ECHO_INITIAL_KEY", "ECHO_TRAILING_KEY", "SERVICE", "InteropFleet", "InteropServer",
           "InteropServicer", "empty_pb2", "messages_pb2", "test_pb2_grpc"]


# ------------------------------------------------------------------ the sync server

class _Call:
    """Per-RPC helper of the sync servicer: echo metadata, interruptible sleep, status."""

    def __init__(self, context: grpc.ServicerContext, stopped: threading.Event) -> None:
        self.context = context
        self._ended = threading.Event()
        self._stopped = stopped
        context.add_callback(self._ended.set)
        initial, trailing = echo_metadata(context.invocation_metadata())
        if initial:
            context.send_initial_metadata(initial)
        if trailing:
            context.set_trailing_metadata(trailing)

    def sleep_us(self, micros: int) -> bool:
        """Sleep ``micros``; False (at once) if the call ended or the server stopped."""
        if micros > 0:
            self._ended.wait(micros / 1e6)
        return not self._ended.is_set() and not self._stopped.is_set()

    def end_with(self, status: tuple[grpc.StatusCode, str] | None) -> None:
        """Abort the call with ``status`` if it is not None."""
        if status is not None:
            self.context.abort(*status)

    def responses(self, request: messages_pb2.StreamingOutputCallRequest
                  ) -> Iterator[messages_pb2.StreamingOutputCallResponse]:
        """The responses ``request`` asks for, each after its interval."""
        self.end_with(requested_status(request.response_status) or bad_type(request.response_type))
        params = request.response_parameters
        if any(p.compressed.value for p in params):
            self.context.set_compression(grpc.Compression.Gzip)
        for p in params:
            if not self.sleep_us(p.interval_us):
                return
            if any(q.compressed.value for q in params) and not p.compressed.value:
                self.context.disable_next_message_compression()
            yield messages_pb2.StreamingOutputCallResponse(payload=payload(p.size))


class InteropServicer(test_pb2_grpc.TestServiceServicer):
    """The sync ``grpc.testing.TestService`` (see the module docstring for the contract)."""

    def __init__(self, server_id: str, stats: _Stats, stopped: threading.Event) -> None:
        self._server_id = server_id
        self._stats = stats
        self._stopped = stopped

    def _call(self, method: str, context: grpc.ServicerContext) -> _Call:
        self._stats.count(method)
        return _Call(context, self._stopped)

    def EmptyCall(self, request: empty_pb2.Empty,
                  context: grpc.ServicerContext) -> empty_pb2.Empty:
        self._call("EmptyCall", context)
        return empty_pb2.Empty()

    def UnaryCall(self, request: messages_pb2.SimpleRequest,
                  context: grpc.ServicerContext) -> messages_pb2.SimpleResponse:
        call = self._call("UnaryCall", context)
        call.end_with(requested_status(request.response_status) or bad_type(request.response_type))
        if request.response_compressed.value:
            context.set_compression(grpc.Compression.Gzip)
        reply = messages_pb2.SimpleResponse(payload=payload(request.response_size))
        if request.fill_server_id:
            reply.server_id = self._server_id
            reply.hostname = socket.gethostname()
        return reply

    def StreamingOutputCall(self, request: messages_pb2.StreamingOutputCallRequest,
                            context: grpc.ServicerContext
                            ) -> Iterator[messages_pb2.StreamingOutputCallResponse]:
        call = self._call("StreamingOutputCall", context)
        yield from call.responses(request)

    def StreamingInputCall(self, request_iterator: Iterator[messages_pb2.StreamingInputCallRequest],
                           context: grpc.ServicerContext
                           ) -> messages_pb2.StreamingInputCallResponse:
        self._call("StreamingInputCall", context)
        total = 0
        try:
            for request in request_iterator:
                total += len(request.payload.body)
        except grpc.RpcError:  # the client went away: nobody reads the reply
            return messages_pb2.StreamingInputCallResponse()
        return messages_pb2.StreamingInputCallResponse(aggregated_payload_size=total)

    def FullDuplexCall(self, request_iterator: Iterator[messages_pb2.StreamingOutputCallRequest],
                       context: grpc.ServicerContext
                       ) -> Iterator[messages_pb2.StreamingOutputCallResponse]:
        call = self._call("FullDuplexCall", context)
        try:
            for request in request_iterator:
                yield from call.responses(request)
        except grpc.RpcError:
            return

    def HalfDuplexCall(self, request_iterator: Iterator[messages_pb2.StreamingOutputCallRequest],
                       context: grpc.ServicerContext
                       ) -> Iterator[messages_pb2.StreamingOutputCallResponse]:
        call = self._call("HalfDuplexCall", context)
        try:
            requests = list(request_iterator)
        except grpc.RpcError:
            return
        for request in requests:
            yield from call.responses(request)

    def UnimplementedCall(self, request: empty_pb2.Empty,
                          context: grpc.ServicerContext) -> empty_pb2.Empty:
        """Deliberately unimplemented (the spec's unimplemented_method case)."""
        self._stats.count("UnimplementedCall")
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")


def add_health(server: grpc.Server) -> health.HealthServicer:
    """A sync health servicer on ``server``: SERVING for "" and the TestService."""
    servicer = health.HealthServicer()
    for name in ("", SERVICE):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


class InteropServer:
    """One sync interop server on a 127.0.0.1 ephemeral port, started by the constructor.

    ``address``/``server_id`` is ``"127.0.0.1:PORT"``; ``calls()`` counts calls per method;
    ``stop(grace)`` ends in-flight calls after ``grace`` seconds (at once if None) and is
    idempotent.
    """

    def __init__(self, *, max_workers: int = 16) -> None:
        self._lock = threading.Lock()
        self._stats = _Stats()
        self._stopped = threading.Event()
        self._executor = futures.ThreadPoolExecutor(max_workers=max_workers,
                                                    thread_name_prefix="lbclient-interop")
        server = grpc.server(self._executor, options=[("grpc.so_reuseport", 0)])
        try:
            self.port = server.add_insecure_port(f"{_HOST}:0")
            if not self.port:
                raise RuntimeError(f"cannot bind {_HOST}:0")
            self.address = f"{_HOST}:{self.port}"
            test_pb2_grpc.add_TestServiceServicer_to_server(
                InteropServicer(self.address, self._stats, self._stopped), server)
            self._health = add_health(server)
            server.start()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        self._server: grpc.Server | None = server

    @property
    def server_id(self) -> str:
        return self.address

    @property
    def running(self) -> bool:
        with self._lock:
            return self._server is not None

    def calls(self) -> dict[str, int]:
        """Short method name -> calls received (health checks not counted)."""
        return self._stats.snapshot()

    def reset_counters(self) -> None:
        self._stats.reset()

    def stop(self, grace: float | None = None) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        self._health.enter_graceful_shutdown()
        server.stop(grace).wait((grace or 0) + _STOP_WAIT)
        self._stopped.set()
        self._executor.shutdown(wait=False)

    def __repr__(self) -> str:
        return f"<InteropServer {self.address} running={self.running}>"


# ------------------------------------------------------------------ the fleet

class _Server(Protocol):
    """What InteropFleet needs of a server (sync or asyncio)."""

    address: str

    def calls(self) -> dict[str, int]: ...
    def reset_counters(self) -> None: ...
    def stop(self, grace: float | None = None) -> None: ...


class InteropFleet:
    """``n`` running interop servers on 127.0.0.1 (``aio=True``: grpc.aio servers).

    Contract: the constructor starts every server (if one fails, those started are stopped
    and the error propagates); ``stop()`` is idempotent; a context manager.
    """

    def __init__(self, n: int = 3, *, aio: bool = False) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.aio = aio
        self._servers: list[_Server] = []
        try:
            for _ in range(n):
                self._servers.append(self._start_one())
        except BaseException:
            self.stop()
            raise

    def _start_one(self) -> _Server:
        if self.aio:
            return AioInteropServer()
        return InteropServer()

    @property
    def servers(self) -> Sequence[_Server]:
        return list(self._servers)

    @property
    def addresses(self) -> list[str]:
        """``"127.0.0.1:PORT"`` of every server, in start order."""
        return [s.address for s in self._servers]

    @property
    def target(self) -> str:
        """``"ipv4:127.0.0.1:p1,127.0.0.1:p2,..."`` (grpc's and lbclient's syntax)."""
        return "ipv4:" + ",".join(self.addresses)

    def calls(self) -> dict[str, dict[str, int]]:
        """address -> (method -> calls received)."""
        return {s.address: s.calls() for s in self._servers}

    def reset_counters(self) -> None:
        for server in self._servers:
            server.reset_counters()

    def stop(self, grace: float | None = None) -> None:
        for server in self._servers:
            server.stop(grace)

    def __len__(self) -> int:
        return len(self._servers)

    def __enter__(self) -> InteropFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<InteropFleet aio={self.aio} {self.addresses}>"
