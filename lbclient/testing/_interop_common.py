"""What both interop servers share (``interop`` and ``_interop_aio``): names, the
Echo Metadata / Echo Status / payload rules, and the per-server call counters."""

from __future__ import annotations

import threading
from collections.abc import Iterable

import grpc

from lbclient.testing._proto.interop import messages_pb2

SERVICE = "grpc.testing.TestService"
ECHO_INITIAL_KEY = "x-grpc-test-echo-initial"
ECHO_TRAILING_KEY = "x-grpc-test-echo-trailing-bin"
_HOST = "127.0.0.1"
_STOP_WAIT = 5.0  # bound on waiting for a stopped server's handlers
_CODES_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}

Metadata = tuple[tuple[str, str | bytes], ...]


def payload(size: int) -> messages_pb2.Payload:
    """A COMPRESSABLE payload of ``size`` zero bytes."""
    return messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=bytes(max(size, 0)))


def echo_metadata(invocation: Iterable[tuple[str, str | bytes]] | None
                  ) -> tuple[Metadata, Metadata]:
    """(initial, trailing) metadata to send back for the request metadata ``invocation``."""
    pairs = list(invocation or ())
    initial = tuple((k, v) for k, v in pairs if k == ECHO_INITIAL_KEY)
    trailing = tuple((k, v) for k, v in pairs if k == ECHO_TRAILING_KEY)
    return initial, trailing


def requested_status(status: messages_pb2.EchoStatus) -> tuple[grpc.StatusCode, str] | None:
    """The status a request asks the call to end with; None for code 0 (not set)."""
    if status.code == 0:
        return None
    return _CODES_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN), status.message


def bad_type(response_type: int) -> tuple[grpc.StatusCode, str] | None:
    """INVALID_ARGUMENT for a payload type the server cannot produce."""
    if response_type == messages_pb2.COMPRESSABLE:
        return None
    return grpc.StatusCode.INVALID_ARGUMENT, f"unsupported response_type {response_type}"


class _Stats:
    """Thread-safe call counters of one server: short method name -> calls received."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}

    def count(self, method: str) -> None:
        with self._lock:
            self._calls[method] = self._calls.get(method, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def reset(self) -> None:
        with self._lock:
            self._calls = {}
