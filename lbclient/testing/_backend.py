"""One fake Echo backend: a real ``grpc.server`` on 127.0.0.1 with run-time fault controls."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import HealthServicer

from lbclient._proto.orca_load_report_pb2 import OrcaLoadReport
from lbclient.testing._proto import echo_pb2, echo_pb2_grpc

HealthStatus = health_pb2.HealthCheckResponse.ServingStatus
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: int = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

_HOST = "127.0.0.1"
_POLL = 0.02  # seconds between is_active() checks while sleeping or hanging
_BIND_TIMEOUT = 10.0  # how long restart() keeps retrying to bind the old port
_DRAIN_TIMEOUT = 5.0  # how long stop() waits for handler threads to finish
_HEALTH_PREFIX = "/grpc.health.v1.Health/"
_CODES_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}

Metadata = Sequence[tuple[str, str | bytes]]
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
ORCA_TRAILER = "endpoint-load-metrics-bin"  # gRFC A51 per-call load report trailer
# grpcio clients never see ORCA_TRAILER (gRPC core keeps it for itself), so the report
# is also sent under this key, which lbclient reads as well.
ORCA_TRAILER_VISIBLE = "x-endpoint-load-metrics-bin"


def _orca_report(values: dict[str, float]) -> bytes:
    """The serialized ``OrcaLoadReport`` of ``set_orca``'s four values."""
    return OrcaLoadReport(
        cpu_utilization=values["cpu_utilization"], rps_fractional=values["rps_fractional"],
        eps=values["eps"], application_utilization=values["application_utilization"],
    ).SerializeToString()


class _CallEnded(Exception):
    """Raised inside a handler when the RPC was cancelled, timed out or the server stopped."""


class Backend:
    """A fake backend serving ``lbclient.testing.echo.v1.Echo`` (and grpc.health.v1 Health).

    Contract:
      * ``start()`` binds an ephemeral 127.0.0.1 port the first time; ``restart()`` / later
        ``start()`` calls reuse that same port. ``stop()`` cancels in-flight calls.
      * Run-time controls are thread-safe and apply to calls that arrive afterwards
        (latency and hang are also re-checked before each streamed reply).
      * Faults (latency, error rate, hang) and the counters concern Echo RPCs only; Health
        RPCs are answered from ``set_health`` state and counted in ``health_calls``.
      * Every Echo reply carries ``backend``/``address``; initial metadata holds
        ``("x-backend", name)``; trailing metadata holds ``("x-backend", name)`` plus every
        request metadata pair whose key starts with ``x-echo-``, plus the ORCA load
        report trailers while ``set_orca(True)`` is on (see ``set_orca``).
      * ``server_credentials`` (a ``grpc.ServerCredentials``): serve TLS instead of
        plaintext (``Fleet(n, server_credentials=...)`` passes it to every backend).
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        latency: float = 0.0,
        health: bool = True,
        orca: bool = False,
        seed: int | None = None,
        max_workers: int = 32,
        server_credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self._name = name
        self._server_credentials = server_credentials  # TLS (add_secure_port) when given
        self._health_enabled = health
        self._max_workers = max_workers
        self._lock = threading.Condition()
        self._health_set_lock = threading.Lock()   # orders set_health calls (see there)
        self._rng = random.Random(seed)
        self._port: int | None = None
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        # ("health" is the bool parameter here, hence the class by its own name)
        self._health_servicer: HealthServicer | None = None
        self._stopped = threading.Event()  # the current server generation's stop signal
        self._unhung = threading.Event()
        self._unhung.set()
        self._latency = 0.0
        self._error_rate = 0.0
        self._error_code = grpc.StatusCode.UNAVAILABLE
        self._error_details = "injected failure"
        self._orca = orca
        self._orca_values = {"cpu_utilization": 0.5, "rps_fractional": 100.0, "eps": 0.0,
                             "application_utilization": 0.0}
        self._orca_report = _orca_report(self._orca_values)
        self._health_status: dict[str, int] = {"": SERVING}
        self._calls = 0
        self._calls_by_method: dict[str, int] = {}
        self._health_calls = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self.set_latency(latency)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Backend:
        """Start serving (no-op if running). Returns ``self``.

        Raises ``RuntimeError`` if the port kept from an earlier start cannot be bound again
        within a bounded time.
        """
        with self._lock:
            if self._server is not None:
                return self
            stopped = threading.Event()
            executor = futures.ThreadPoolExecutor(
                max_workers=self._max_workers, thread_name_prefix="lbclient-backend"
            )
            try:
                server, port = self._bind(executor)
            except BaseException:
                executor.shutdown(wait=False)
                raise
            echo_pb2_grpc.add_EchoServicer_to_server(_EchoServicer(self, stopped), server)
            health_servicer = None
            if self._health_enabled:
                health_servicer = health.HealthServicer()
                for service, status in self._health_status.items():
                    health_servicer.set(service, status)
                health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            server.start()
            self._port = port
            self._server, self._executor = server, executor
            self._health_servicer, self._stopped = health_servicer, stopped
            return self

    def _bind(self, executor: futures.ThreadPoolExecutor) -> tuple[grpc.Server, int]:
        """A new (unstarted) server bound to the kept port, or to an ephemeral one at first."""
        wanted = self._port or 0
        deadline = time.monotonic() + _BIND_TIMEOUT
        while True:
            server = grpc.server(
                executor,
                interceptors=[_HealthCounter(self)],
                options=[("grpc.so_reuseport", 0)],
            )
            try:
                if self._server_credentials is not None:
                    port = server.add_secure_port(f"{_HOST}:{wanted}", self._server_credentials)
                else:
                    port = server.add_insecure_port(f"{_HOST}:{wanted}")
            except RuntimeError:
                port = 0
            if port and (not wanted or port == wanted):
                return server, port
            if time.monotonic() >= deadline:
                raise RuntimeError(f"cannot bind {_HOST}:{wanted} within {_BIND_TIMEOUT}s")
            time.sleep(0.05)

    def stop(self, grace: float | None = None) -> None:
        """Stop serving (no-op if stopped). In-flight calls are cancelled after ``grace``
        seconds (immediately if ``None``); waits a bounded time for their handlers to exit."""
        with self._lock:
            server, executor, hs = self._server, self._executor, self._health_servicer
            if server is None:
                return
            self._server = self._executor = self._health_servicer = None
            stopped = self._stopped
        if hs is not None:
            hs.enter_graceful_shutdown()
        server.stop(grace).wait((grace or 0) + _DRAIN_TIMEOUT)
        stopped.set()  # after grpc cancelled what was left: wakes any straggling waits
        with self._lock:
            self._lock.wait_for(lambda: self._in_flight == 0, timeout=_DRAIN_TIMEOUT)
        if executor is not None:
            executor.shutdown(wait=False)

    def restart(self, grace: float | None = None) -> Backend:
        """``stop(grace)`` then ``start()`` on the same port."""
        self.stop(grace)
        return self.start()

    def __enter__(self) -> Backend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        with self._lock:
            return self._server is not None

    @property
    def port(self) -> int:
        """The port, fixed at the first ``start()``; ``RuntimeError`` before that."""
        if self._port is None:
            raise RuntimeError("backend was never started; it has no port yet")
        return self._port

    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"``."""
        return f"{_HOST}:{self.port}"

    @property
    def name(self) -> str:
        """The given name, else ``"backend-<port>"`` (needs a first ``start()``)."""
        return self._name if self._name is not None else f"backend-{self.port}"

    def __repr__(self) -> str:
        where = self.address if self._port is not None else "unstarted"
        return f"<Backend {self._name or ''} {where} running={self.running}>"

    # ----------------------------------------------------------------- controls

    def set_latency(self, seconds: float) -> None:
        """Sleep ``seconds`` before every reply (cut short if the call ends)."""
        if seconds < 0:
            raise ValueError(f"latency must be >= 0, got {seconds}")
        with self._lock:
            self._latency = float(seconds)

    @property
    def latency(self) -> float:
        with self._lock:
            return self._latency

    def set_error_rate(
        self,
        rate: float,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        details: str = "injected failure",
    ) -> None:
        """Fail a ``rate`` fraction of calls (0..1, drawn from the seeded RNG) with ``code``."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"error rate must be within [0, 1], got {rate}")
        if code is grpc.StatusCode.OK:
            raise ValueError("the injected error code cannot be OK")
        with self._lock:
            self._error_rate, self._error_code, self._error_details = float(rate), code, details

    @property
    def error_rate(self) -> float:
        with self._lock:
            return self._error_rate

    def set_health(self, status: int | bool, service: str = "") -> None:
        """Set the grpc.health.v1 status of ``service`` ("" = whole server); kept across
        restarts. ``True``/``False`` mean SERVING/NOT_SERVING."""
        if isinstance(status, bool):
            status = SERVING if status else NOT_SERVING
        # Never call into grpc's health servicer holding self._lock: a server thread
        # may hold grpc's own locks while the counting interceptor waits for self._lock.
        # _health_set_lock keeps concurrent set_health calls in order.
        with self._health_set_lock:
            with self._lock:
                self._health_status[service] = int(status)
                servicer = self._health_servicer
            if servicer is not None:
                servicer.set(service, int(status))

    def health_status(self, service: str = "") -> int:
        """The status last set for ``service`` (SERVICE_UNKNOWN if never set)."""
        with self._lock:
            return self._health_status.get(service, SERVICE_UNKNOWN)

    def hang(self, enabled: bool = True) -> None:
        """While enabled, Echo calls block without replying until un-hung or until the call
        ends (client cancel, deadline, server stop)."""
        if enabled:
            self._unhung.clear()
        else:
            self._unhung.set()

    @property
    def hanging(self) -> bool:
        return not self._unhung.is_set()

    def set_orca(self, enabled: bool, *, cpu_utilization: float | None = None,
                 rps_fractional: float | None = None, eps: float | None = None,
                 application_utilization: float | None = None) -> None:
        """While enabled, every Echo reply carries an ORCA load report (gRFC A51): the
        ``endpoint-load-metrics-bin`` trailer holding a serialized
        ``xds.data.orca.v3.OrcaLoadReport`` with these values, and the same bytes under
        ``x-endpoint-load-metrics-bin`` (grpcio hides the standard key from applications).
        A value left as None keeps its previous setting (initially cpu 0.5,
        rps_fractional 100, eps 0, app 0)."""
        with self._lock:
            self._orca = bool(enabled)
            for name, value in (("cpu_utilization", cpu_utilization),
                                ("rps_fractional", rps_fractional), ("eps", eps),
                                ("application_utilization", application_utilization)):
                if value is not None:
                    if value < 0:
                        raise ValueError(f"{name} must be >= 0, got {value}")
                    self._orca_values[name] = float(value)
            self._orca_report = _orca_report(self._orca_values)

    def _orca_trailer(self) -> list[tuple[str, bytes]]:
        with self._lock:
            if not self._orca:
                return []
            return [(ORCA_TRAILER, self._orca_report), (ORCA_TRAILER_VISIBLE, self._orca_report)]

    @property
    def orca(self) -> bool:
        with self._lock:
            return self._orca

    # ----------------------------------------------------------------- counters

    @property
    def calls(self) -> int:
        """Echo RPCs received since construction or ``reset_counters()``."""
        with self._lock:
            return self._calls

    @property
    def calls_by_method(self) -> dict[str, int]:
        """A copy: short method name (``"Unary"``, ``"Bidi"``, ...) -> count."""
        with self._lock:
            return dict(self._calls_by_method)

    @property
    def health_calls(self) -> int:
        """grpc.health.v1 RPCs (Check and Watch) received."""
        with self._lock:
            return self._health_calls

    @property
    def in_flight(self) -> int:
        """Echo handlers currently running."""
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._max_in_flight

    def reset_counters(self) -> None:
        """Zero ``calls``, ``calls_by_method``, ``health_calls``; ``max_in_flight`` restarts
        from the current ``in_flight``."""
        with self._lock:
            self._calls = self._health_calls = 0
            self._calls_by_method = {}
            self._max_in_flight = self._in_flight

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no Echo handler runs; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._in_flight == 0, timeout=timeout)

    # ----------------------------------------------------------------- handler support

    @contextmanager
    def _track(self, method: str) -> Iterator[None]:
        with self._lock:
            self._calls += 1
            self._calls_by_method[method] = self._calls_by_method.get(method, 0) + 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                self._lock.notify_all()

    def _count_health(self) -> None:
        with self._lock:
            self._health_calls += 1

    def _draw_error(self) -> tuple[grpc.StatusCode, str] | None:
        with self._lock:
            if self._error_rate > 0.0 and self._rng.random() < self._error_rate:
                return self._error_code, self._error_details
            return None


class _HealthCounter(grpc.ServerInterceptor):
    """Counts grpc.health.v1 RPCs without touching them."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails],
                               grpc.RpcMethodHandler[_Request, _Response] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Request, _Response] | None:
        if handler_call_details.method.startswith(_HEALTH_PREFIX):
            self._backend._count_health()
        return continuation(handler_call_details)


class _Call:
    """Per-RPC helper: waits bounded by the call's liveness, metadata, replies."""

    def __init__(self, backend: Backend, stopped: threading.Event, context: Any) -> None:
        self.backend = backend
        self.stopped = stopped
        self.context: grpc.ServicerContext = context
        self._headers_sent = False
        trailers: list[tuple[str, str | bytes]] = [("x-backend", backend.name)]
        trailers += [
            (k, v) for k, v in context.invocation_metadata() or () if k.startswith("x-echo-")
        ]
        trailers += backend._orca_trailer()
        context.set_trailing_metadata(tuple(trailers))

    def alive(self) -> bool:
        return self.context.is_active() and not self.stopped.is_set()

    def sleep(self, seconds: float) -> None:
        """Sleep, raising ``_CallEnded`` as soon as the call is no longer active."""
        end = time.monotonic() + seconds
        while True:
            if not self.alive():
                raise _CallEnded
            left = end - time.monotonic()
            if left <= 0:
                return
            self.stopped.wait(min(left, _POLL))

    def wait_unhung(self) -> None:
        while not self.backend._unhung.wait(_POLL):
            if not self.alive():
                raise _CallEnded

    def ended(self) -> None:
        """After ``_CallEnded``: if the client could still see it, fail the call."""
        if self.context.is_active():
            self.fail(grpc.StatusCode.UNAVAILABLE, "backend stopped")

    def headers(self) -> None:
        if not self._headers_sent:
            self._headers_sent = True
            self.context.send_initial_metadata((("x-backend", self.backend.name),))

    def fail(self, code: grpc.StatusCode, details: str) -> None:
        self.headers()
        self.context.abort(code, details)

    def admit(self) -> None:
        """Call-start faults: hang, then the injected error rate."""
        self.wait_unhung()
        error = self.backend._draw_error()
        if error is not None:
            self.fail(*error)

    def before_reply(self, request: echo_pb2.EchoRequest) -> None:
        """Per-reply behaviour: the request's fail_code, hang, latency + sleep_ms."""
        if request.fail_code:
            code = _CODES_BY_NUMBER.get(request.fail_code, grpc.StatusCode.UNKNOWN)
            self.fail(code, request.fail_details)
        self.wait_unhung()
        self.sleep(self.backend.latency + max(request.sleep_ms, 0) / 1000.0)
        self.headers()

    def reply(self, message: str, index: int, payload: bytes) -> echo_pb2.EchoReply:
        b = self.backend
        return echo_pb2.EchoReply(
            message=message, backend=b.name, address=b.address, index=index, payload=payload
        )


class _EchoServicer(echo_pb2_grpc.EchoServicer):
    """Echo handlers; one instance per server generation (``stopped`` ends its waits)."""

    def __init__(self, backend: Backend, stopped: threading.Event) -> None:
        self._backend = backend
        self._stopped = stopped

    def Unary(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoReply:
        with self._backend._track("Unary"):
            call = _Call(self._backend, self._stopped, context)
            try:
                call.admit()
                call.before_reply(request)
            except _CallEnded:
                call.ended()
                return echo_pb2.EchoReply()
            return call.reply(request.message, 0, request.payload)

    def ServerStream(
        self, request: echo_pb2.EchoRequest, context: Any
    ) -> Iterator[echo_pb2.EchoReply]:
        with self._backend._track("ServerStream"):
            call = _Call(self._backend, self._stopped, context)
            try:
                call.admit()
                for i in range(request.count if request.count > 0 else 1):
                    call.before_reply(request)
                    yield call.reply(request.message, i, request.payload)
            except _CallEnded:
                call.ended()

    def ClientStream(
        self, request_iterator: Iterator[echo_pb2.EchoRequest], context: Any
    ) -> echo_pb2.EchoReply:
        with self._backend._track("ClientStream"):
            call = _Call(self._backend, self._stopped, context)
            messages: list[str] = []
            payload = b""
            try:
                call.admit()
                last = echo_pb2.EchoRequest()
                for request in request_iterator:
                    if request.fail_code:
                        call.before_reply(request)  # aborts
                    messages.append(request.message)
                    payload += request.payload
                    last = request
                call.before_reply(last)
            except (_CallEnded, grpc.RpcError):
                call.ended()
                return echo_pb2.EchoReply()
            return call.reply(",".join(messages), len(messages), payload)

    def Bidi(
        self, request_iterator: Iterator[echo_pb2.EchoRequest], context: Any
    ) -> Iterator[echo_pb2.EchoReply]:
        with self._backend._track("Bidi"):
            call = _Call(self._backend, self._stopped, context)
            try:
                call.admit()
                for i, request in enumerate(request_iterator):
                    call.before_reply(request)
                    yield call.reply(request.message, i, request.payload)
            except (_CallEnded, grpc.RpcError):
                call.ended()
