"""One attempt of an asyncio call: pick an endpoint, start grpc.aio's call on its
connection, and report how the attempt ended.

Contract (as the sync ``_invoke``): for every started attempt ``EndpointStats.begin()``
runs before the call starts, and ``end()`` plus the pick's ``on_done`` run exactly once
when it ends, from its done callback (``_status.finish_when_done``, which does not keep the
call alive), so cancellation, deadlines and abandoned streams are included.

Everything here runs on the channel's event loop and never blocks it: a pick that must
wait (``wait_for_ready``, or endpoints still connecting) awaits the balancer's next
change.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from .._invoke import CallArgs, Completion, remaining
from .._retry_call import add_attempts_trailer
from ..balancer.picker import PickError, PickInfo, PickResult
from ._status import finish_when_done

if TYPE_CHECKING:
    from ._channel import LoadBalancedChannel

log = logging.getLogger("lbclient.aio")

CLOSED = "lbclient channel is closed"


def aio_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """An error raised by lbclient itself (no endpoint, channel closed), shaped like
    grpc.aio's own."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details,
                                f"lbclient: {code.name}: {details}")


def with_attempts(error: grpc.aio.AioRpcError, previous: int) -> grpc.aio.AioRpcError:
    """``error`` reporting ``previous`` earlier attempts: ``grpc-previous-rpc-attempts``
    added to its trailing metadata and a ``previous_rpc_attempts`` attribute (``error``
    itself when there were none)."""
    if previous <= 0:
        return error
    trailing = grpc.aio.Metadata(*add_attempts_trailer(error.trailing_metadata(), previous))
    wrapped = grpc.aio.AioRpcError(error.code(), error.initial_metadata(), trailing,
                                   error.details(), error.debug_error_string())
    wrapped.previous_rpc_attempts = previous  # type: ignore[attr-defined]
    return wrapped


async def pick(ch: LoadBalancedChannel, info: PickInfo, deadline: float | None,
               wait_for_ready: bool) -> PickResult:
    """Ask the current picker; wait (within the deadline) while the picker says "not
    yet" or ``wait_for_ready`` is set; else raise UNAVAILABLE at once (an
    ``AioRpcError``, so a retry policy can treat it as an attempt's outcome)."""
    if ch._closed:
        raise aio_error(grpc.StatusCode.CANCELLED, CLOSED)
    try:
        return ch._balancer.picker.pick(info)
    except PickError as exc:
        if not wait_for_ready and not exc.queue:
            raise aio_error(grpc.StatusCode.UNAVAILABLE, str(exc)) from None
        reason = str(exc)
    return await ch._wait_for_pick(info, deadline, reason, wait_for_ready)


def start(ch: LoadBalancedChannel, args: CallArgs, result: PickResult, request: Any,
          timeout: float | None, metadata: Any, credentials: Any, wait_for_ready: bool,
          compression: Any) -> Any:
    """Start grpc.aio's call on the picked endpoint and return it; the attempt is
    finished from the call's done callback. ``request`` None on a request-streaming
    method means the caller will ``write()``."""
    done = Completion(result, ch._failure_codes, ch._call_listener)
    multicallable = result.candidate.handle.callable(args.kind, args.method, args.ser,
                                                     args.deser, args.registered)
    try:
        if request is None and args.kind[0] == "s":   # stream_unary / stream_stream
            call = multicallable(timeout=timeout, metadata=metadata, credentials=credentials,
                                 wait_for_ready=wait_for_ready, compression=compression)
        else:
            call = multicallable(request, timeout=timeout, metadata=metadata,
                                 credentials=credentials, wait_for_ready=wait_for_ready,
                                 compression=compression)
    except BaseException:
        done.finish_with("CANCELLED")
        raise
    finish_when_done(call, done)
    return call


async def pick_and_start(ch: LoadBalancedChannel, args: CallArgs, info: PickInfo,
                         deadline: float | None, request: Any, metadata: Any,
                         credentials: Any, wait_for_ready: bool, compression: Any,
                         reason: str) -> Any:
    """Wait for an endpoint (the first pick already failed with ``reason``), then start
    the call on it (a :class:`~lbclient.aio._calls.DeferredCall`'s start)."""
    result = await ch._wait_for_pick(info, deadline, reason, wait_for_ready)
    return start(ch, args, result, request, remaining(deadline), metadata, credentials,
                 wait_for_ready, compression)
