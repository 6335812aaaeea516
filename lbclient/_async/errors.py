"""lbclient's own asyncio call failures, shaped like grpc.aio's (``AioRpcError``)."""

from __future__ import annotations

import grpc
import grpc.aio

from .._core.metadata import add_attempts_trailer

CANCELLED_DETAILS = "Locally cancelled by application!"   # grpc's own words


def aio_error(code: grpc.StatusCode | str, details: str) -> grpc.aio.AioRpcError:
    """An error raised by lbclient itself (no endpoint, channel closed)."""
    if isinstance(code, str):
        code = grpc.StatusCode[code]
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details,
                                f"lbclient: {code.name}: {details}")


def with_attempts(error: grpc.aio.AioRpcError, previous: int,
                  delay: float = 0.0) -> grpc.aio.AioRpcError:
    """``error`` reporting ``previous`` earlier attempts: ``grpc-previous-rpc-attempts``
    added to its trailing metadata, a ``previous_rpc_attempts`` attribute and a
    ``retry_delay`` one (``delay``: seconds between the attempts with none in flight,
    gRFC A96) - ``error`` itself when there were none."""
    if previous <= 0:
        return error
    trailing = grpc.aio.Metadata(*add_attempts_trailer(error.trailing_metadata(), previous))
    wrapped = grpc.aio.AioRpcError(error.code(), error.initial_metadata(), trailing,
                                   error.details(), error.debug_error_string())
    wrapped.previous_rpc_attempts = previous  # type: ignore[attr-defined]
    wrapped.retry_delay = delay  # type: ignore[attr-defined]
    return wrapped


def code_name(error: BaseException | None) -> str | None:
    """The status code name of an RPC error (grpc.aio's, or grpc's), None otherwise."""
    if not isinstance(error, grpc.Call | grpc.RpcError | grpc.aio.AioRpcError):
        return None
    try:
        code = error.code()
    except Exception:
        return None
    return code.name if isinstance(code, grpc.StatusCode) else None
