"""A scripted Echo server for retry tests: a real grpc server on 127.0.0.1 that answers
every Echo method by a script the test sets (status code, pushback trailer, how many
stream messages before failing) and records each call's request metadata.

The fake ``lbclient.testing.Backend`` can't send ``grpc-retry-pushback-ms`` or fail a
stream after its first message, which these tests need.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

from lbclient.testing import echo_pb2, echo_pb2_grpc


class ScriptedServer(echo_pb2_grpc.EchoServicer):
    """Fails (or succeeds) every Echo call as configured. Thread-safe counters.

    * ``code``: the status to end calls with (None: succeed, as the fake backends do);
    * ``pushback``: a ``grpc-retry-pushback-ms`` trailer value sent with failures;
    * ``messages_before_failure``: response messages a stream sends before ``code``.
    """

    def __init__(self, name: str = "scripted", *, code: grpc.StatusCode | None = None,
                 pushback: str | None = None, messages_before_failure: int = 0) -> None:
        self.name = name
        self.code = code
        self.pushback = pushback
        self.messages_before_failure = messages_before_failure
        self._lock = threading.Lock()
        self.metadata: list[dict[str, str]] = []
        self.time_remaining: list[float | None] = []   # each call's deadline, as seen here
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        echo_pb2_grpc.add_EchoServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.metadata)

    def stop(self) -> None:
        self._server.stop(None).wait(5)

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ behaviour
    def _record(self, context: Any) -> None:
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self._lock:
            self.metadata.append(md)
            self.time_remaining.append(context.time_remaining())

    def _end(self, context: Any) -> None:
        if self.code is None:
            return
        trailers = [("x-backend", self.name)]
        if self.pushback is not None:
            trailers.append(("grpc-retry-pushback-ms", self.pushback))
        context.set_trailing_metadata(tuple(trailers))
        context.abort(self.code, f"scripted {self.code.name}")

    def _reply(self, message: str, index: int = 0) -> echo_pb2.EchoReply:
        return echo_pb2.EchoReply(message=message, backend=self.name, address=self.address,
                                  index=index)

    def Unary(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoReply:
        self._record(context)
        self._end(context)
        return self._reply(request.message)

    def ClientStream(self, request_iterator: Iterator[echo_pb2.EchoRequest],
                     context: Any) -> echo_pb2.EchoReply:
        self._record(context)
        messages = [r.message for r in request_iterator]
        self._end(context)
        return self._reply(",".join(messages), len(messages))

    def ServerStream(self, request: echo_pb2.EchoRequest,
                     context: Any) -> Iterator[echo_pb2.EchoReply]:
        self._record(context)
        count = request.count if request.count > 0 else 1
        if self.code is not None:
            count = self.messages_before_failure
        for i in range(count):
            yield self._reply(request.message, i)
        self._end(context)

    def Bidi(self, request_iterator: Iterator[echo_pb2.EchoRequest],
             context: Any) -> Iterator[echo_pb2.EchoReply]:
        self._record(context)
        for i, request in enumerate(request_iterator):
            if self.code is not None and i >= self.messages_before_failure:
                break
            yield self._reply(request.message, i)
        self._end(context)


# ---------------------------------------------------------------------------- configs
SERVICE = "lbclient.testing.echo.v1.Echo"


def retry_config(*, attempts: int = 3, initial: str = "0.01s", maximum: str = "0.05s",
                 multiplier: float = 2, codes: tuple[str | int, ...] = ("UNAVAILABLE",),
                 method: str | None = None, throttling: dict[str, Any] | None = None,
                 **method_fields: Any) -> dict[str, Any]:
    """A service config with one retryPolicy for the Echo service (or one method)."""
    name: dict[str, str] = {"service": SERVICE}
    if method is not None:
        name["method"] = method
    config: dict[str, Any] = {"methodConfig": [{
        "name": [name],
        "retryPolicy": {"maxAttempts": attempts, "initialBackoff": initial,
                        "maxBackoff": maximum, "backoffMultiplier": multiplier,
                        "retryableStatusCodes": list(codes)},
        **method_fields}]}
    if throttling is not None:
        config["retryThrottling"] = throttling
    return config


def hedging_config(*, attempts: int = 3, delay: str = "0.05s",
                   non_fatal: tuple[str, ...] = ("UNAVAILABLE",),
                   throttling: dict[str, Any] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"methodConfig": [{
        "name": [{"service": SERVICE, "method": "Unary"}],
        "hedgingPolicy": {"maxAttempts": attempts, "hedgingDelay": delay,
                          "nonFatalStatusCodes": list(non_fatal)}}]}
    if throttling is not None:
        config["retryThrottling"] = throttling
    return config


def trailer(call: Any, key: str = "grpc-previous-rpc-attempts") -> str | None:
    """The first value of ``key`` in a call's trailing metadata."""
    for k, v in call.trailing_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None
