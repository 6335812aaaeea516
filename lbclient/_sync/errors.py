"""An RpcError raised by lbclient itself (no endpoint could take the call, channel
closed), and reading a status code from whatever grpc (or an interceptor) gave us.

:class:`LocalRpcError` is also a ``grpc.Call`` and a completed ``grpc.Future``, and
iterating it raises it, so it stands in for a failed unary call, future or response
stream exactly like grpc's own ``_InactiveRpcError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

CANCELLED_DETAILS = "Locally cancelled by application!"   # grpc's own words

# grpc's ABCs are generic in their type stubs only (not subscriptable at run time).
if TYPE_CHECKING:
    FutureBase = grpc.Future[Any]
else:
    FutureBase = grpc.Future


class LocalRpcError(grpc.RpcError, grpc.Call, FutureBase):
    def __init__(self, code: grpc.StatusCode, details: str,
                 trailing: tuple[Any, ...] = ()) -> None:
        super().__init__(details)
        self._code = code
        self._details = details
        self._trailing = trailing

    @classmethod
    def named(cls, code: str, details: str) -> LocalRpcError:
        return cls(grpc.StatusCode[code], details)

    def __str__(self) -> str:
        return (f"<LocalRpcError of RPC that terminated with:\n\tstatus = {self._code}\n"
                f'\tdetails = "{self._details}"\n>')

    __repr__ = __str__

    # grpc.Call
    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[Any, ...]:
        return ()

    def trailing_metadata(self) -> tuple[Any, ...]:
        return self._trailing

    def debug_error_string(self) -> str:
        return f"lbclient: {self._code.name}: {self._details}"

    # grpc.RpcContext
    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:  # type: ignore[override]  # grpc: None too
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    # grpc.Future
    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> Exception | None:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return self.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    # a failed response stream
    def __iter__(self) -> LocalRpcError:
        return self

    def __next__(self) -> Any:
        raise self


def code_of(call: Any) -> str:
    """The status code name of a finished grpc call, future or RpcError ("UNKNOWN" when
    it has none, e.g. an exception that is not an RPC outcome)."""
    try:
        code = call.code()
    except Exception:
        return "UNKNOWN"
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def details_of(call: Any) -> str | None:
    """A finished grpc call's or RpcError's status details (None when it has none)."""
    try:
        details = call.details()
    except Exception:
        return None
    return details if isinstance(details, str) else None


def metadata_of(call: Any) -> tuple[Any, Any]:
    """``(trailing, initial)`` metadata of a finished grpc call or RpcError, () where
    there is none. Never waits: a call that failed before its initial metadata arrived
    has none (reading it on grpc's callback thread could wait for that very thread)."""
    try:
        trailing = call.trailing_metadata() or ()
    except Exception:
        trailing = ()
    state = getattr(call, "_state", None)     # grpc's _RPCState (private; else ask)
    if state is not None:
        return trailing, getattr(state, "initial_metadata", None) or ()
    try:
        return trailing, call.initial_metadata() or ()
    except Exception:
        return trailing, ()
