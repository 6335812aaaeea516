"""Small pieces shared by retries, hedging and retried streams.

* the attempt-count metadata: retried and hedged attempts carry
  ``lbclient-previous-rpc-attempts: N`` in their request metadata (gRPC's own
  ``grpc-previous-rpc-attempts`` request header is reserved: grpc core drops it from
  application metadata before it reaches the wire), and the call's result reports
  ``grpc-previous-rpc-attempts: N`` in its trailing metadata, as gRFC A6 describes;
* the ``grpc-retry-pushback-ms`` trailer (gRFC A6 "Pushback");
* :class:`RetriedCall` / :class:`RetriedRpcError`: a finished attempt's ``grpc.Call``
  (and ``grpc.Future``) or ``RpcError`` returned as the call's own, adding that trailer.

A call that succeeded on its first attempt gets grpc's own objects back, unwrapped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import grpc

PREVIOUS_ATTEMPTS = "grpc-previous-rpc-attempts"
REQUEST_PREVIOUS_ATTEMPTS = "lbclient-previous-rpc-attempts"
PUSHBACK = "grpc-retry-pushback-ms"

_PUSHBACK_RE = re.compile(r"0|[1-9][0-9]{0,9}")
_INT32_MAX = 2**31 - 1


def attempt_metadata(metadata: Any, previous: int) -> Any:
    """The request metadata of the attempt that follows ``previous`` attempts."""
    if previous <= 0:
        return metadata
    return (*tuple(metadata or ()), (REQUEST_PREVIOUS_ATTEMPTS, str(previous)))


def code_name(error: BaseException | None) -> str | None:
    """The status code name of an RPC error (grpc's, lbclient's or grpc.aio's
    ``AioRpcError``), None for anything else."""
    if not isinstance(error, grpc.Call | grpc.RpcError):
        return None
    try:
        code = error.code()
    except Exception:
        return None
    return code.name if isinstance(code, grpc.StatusCode) else None


def parse_pushback(call: Any) -> tuple[bool, float | None]:
    """``(stop, delay)`` from a finished attempt's ``grpc-retry-pushback-ms`` trailer:
    gRFC A6 - a non-negative 32-bit integer of milliseconds means "retry after exactly
    that delay"; a negative or unparseable value means "do not retry". ``(False, None)``
    when there is no such trailer."""
    try:
        trailing = call.trailing_metadata() or ()
    except Exception:
        return False, None
    for key, value in trailing:
        if key != PUSHBACK:
            continue
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        text = str(value).strip()
        if not _PUSHBACK_RE.fullmatch(text) or int(text) > _INT32_MAX:
            return True, None
        return False, int(text) / 1000.0
    return False, None


def judge_hedge_failure(code: str, call: Any, non_fatal: frozenset[str],
                        throttle: Any) -> tuple[bool, bool, float | None]:
    """A hedged attempt that failed with ``code``: ``(fatal, no_more, delay)``. A code
    outside ``nonFatalStatusCodes`` is fatal (the call fails at once); otherwise the
    failure costs a throttle token, and hedging stops (``no_more``) when the throttle
    says so or a pushback says "don't retry"; ``delay`` is the pushback delay, if any."""
    if code not in non_fatal:
        return True, True, None
    stop, delay = parse_pushback(call)
    allowed = throttle.record_failure() if throttle is not None else True
    return False, stop or not allowed, delay


def with_attempts(call: Any, previous: int) -> Any:
    """``call`` reporting ``previous`` earlier attempts (unchanged when there were none)."""
    if previous <= 0 or call is None:
        return call
    if isinstance(call, grpc.RpcError):
        return RetriedRpcError(call, previous)
    return RetriedCall(call, previous)


def add_attempts_trailer(trailing: Sequence[Any] | None, previous: int) -> tuple[Any, ...]:
    items = tuple(trailing or ())
    if previous <= 0:
        return items
    return (*items, (PREVIOUS_ATTEMPTS, str(previous)))


class RetriedCall(grpc.Call, grpc.Future):  # type: ignore[misc]
    """The last attempt's ``grpc.Call``/``grpc.Future``, seen as the whole call's.

    Everything is delegated to that attempt except ``trailing_metadata()``, which also
    holds ``("grpc-previous-rpc-attempts", "N")``; ``previous_rpc_attempts`` is N.
    """

    def __init__(self, call: Any, previous: int) -> None:
        self._call = call
        self.previous_rpc_attempts = previous

    # grpc.Call
    def initial_metadata(self) -> Any:
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        return add_attempts_trailer(self._call.trailing_metadata(), self.previous_rpc_attempts)

    def code(self) -> Any:
        return self._call.code()

    def details(self) -> Any:
        return self._call.details()

    def debug_error_string(self) -> str:
        fn: Callable[[], str] | None = getattr(self._call, "debug_error_string", None)
        return fn() if fn is not None else ""

    # grpc.RpcContext
    def is_active(self) -> bool:
        return bool(self._call.is_active())

    def time_remaining(self) -> Any:
        return self._call.time_remaining()

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return bool(self._call.add_callback(callback))

    # grpc.Future
    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def running(self) -> bool:
        return bool(self._call.running())

    def done(self) -> bool:
        return bool(self._call.done())

    def result(self, timeout: float | None = None) -> Any:
        return self._call.result(timeout)

    def exception(self, timeout: float | None = None) -> Any:
        return self._call.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        return self._call.traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._call.add_done_callback(lambda _: fn(self))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} after {self.previous_rpc_attempts} earlier " \
               f"attempt(s): {self._call!r}>"


class RetriedRpcError(grpc.RpcError, RetriedCall):  # type: ignore[misc]
    """The last attempt's error raised for the whole call (an ``RpcError`` that is also a
    ``grpc.Call`` and a completed ``grpc.Future``, as grpc's own errors are)."""

    def __init__(self, call: Any, previous: int) -> None:
        grpc.RpcError.__init__(self, str(call))
        RetriedCall.__init__(self, call, previous)

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> Any:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return self.__traceback__

    def done(self) -> bool:
        return True

    def running(self) -> bool:
        return False

    def is_active(self) -> bool:
        return False

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def __str__(self) -> str:
        return f"{self._call}\n(after {self.previous_rpc_attempts} earlier attempt(s))"

    __repr__ = __str__
