"""One attempt of an asyncio call: pick an endpoint, start grpc.aio's call on its
connection, and report how the attempt ended.

Contract (as the sync ``_invoke``): for every started attempt ``EndpointStats.begin()``
runs before the call starts, and ``end()`` plus the pick's ``on_done`` run exactly once
when it ends, from grpc.aio's done callback (:func:`finish_aio`), so cancellation,
deadlines and abandoned streams are included.

Everything here runs on the channel's event loop and never blocks it: a pick that must
wait (``wait_for_ready``, or endpoints still connecting) awaits the balancer's next
change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from grpc import _common as grpc_common

from .._invoke import CallArgs, Completion, remaining
from .._retry_call import add_attempts_trailer
from ..balancer.picker import PickError, PickInfo, PickResult

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


def error_of_done_call(call: Any) -> grpc.aio.AioRpcError | None:
    """A finished grpc.aio call's failure as an ``AioRpcError`` (None if it ended OK),
    read without suspending."""
    ok, code = _drive(call.code())
    if not ok or code is grpc.StatusCode.OK:
        return None
    details = _drive(call.details())[1] or ""
    trailing = _drive(call.trailing_metadata())[1] or grpc.aio.Metadata()
    initial = _drive(call.initial_metadata())[1] or grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, initial, trailing, details)


_SEND_FAILED = "Internal error from Core"   # grpc.aio's details for a failed local send
_PEER_STATUS_WAIT = 1.0                     # bound on waiting for the peer's real status


class FirstStatus:
    """Keeps the first status grpc.aio reports for a call: a later INTERNAL "Internal
    error from Core" (a write that failed because the call had already ended) replaces
    it in the call itself."""

    __slots__ = ("seen", "error")

    def __init__(self, rpc: Any) -> None:
        self.seen = False
        self.error: grpc.aio.AioRpcError | None = None
        rpc.add_done_callback(self._done)

    def _done(self, call: Any) -> None:
        if not self.seen:
            self.seen = True
            try:
                self.error = error_of_done_call(call)
            except Exception:   # never raise into grpc's callback
                self.seen = False


async def peer_status(rpc: Any, first: FirstStatus, error: grpc.aio.AioRpcError,
                      deadline: float | None) -> grpc.aio.AioRpcError:
    """The real outcome of a request-streaming attempt that failed writing.

    grpc.aio reports a write that failed because the server had already ended the call
    as INTERNAL "Internal error from Core", before or after the server's own status
    (UNAVAILABLE, say). A retry must judge the server's status: the one seen first, or
    the one that replaces the INTERNAL shortly (waited for, bounded). Anything else is
    returned unchanged."""
    if error.code() is not grpc.StatusCode.INTERNAL or error.details() != _SEND_FAILED:
        return error
    if first.error is not None and first.error.details() != _SEND_FAILED:
        return first.error
    loop = asyncio.get_running_loop()
    left = remaining(deadline)
    end = loop.time() + min(_PEER_STATUS_WAIT, _PEER_STATUS_WAIT if left is None else left)
    while loop.time() < end:
        await asyncio.sleep(0.005)
        real = error_of_done_call(rpc)
        if real is not None and real.details() != _SEND_FAILED:
            return real
    return error


def _drive(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run a coroutine that is expected not to suspend (a finished call's status getter).
    Returns (True, value), or (False, None) after closing it if it would suspend."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    coro.close()
    return False, None


# grpc core's status codes (as grpc.aio's C layer reports them) by name.
_CODE_NAMES: dict[Any, str] = {cy: code.name for cy, code in
                               grpc_common.CYGRPC_STATUS_CODE_TO_STATUS_CODE.items()}


def _status_now(call: Any) -> tuple[str, Any, Any] | None:
    """``(code name, trailing, initial)`` of a finished grpc.aio call, read straight from
    its C-layer call object (no coroutine, no Metadata copies: the per-call cost that
    matters at thousands of calls per second); None when the call is not grpc.aio's own
    (e.g. an intercepted call) or that layer differs."""
    try:
        cython_call = call._cython_call
        status = cython_call._status
        initial = cython_call._initial_metadata
    except AttributeError:
        return None
    if status is None:
        return None
    return (_CODE_NAMES.get(status.code(), "UNKNOWN"), status.trailing_metadata() or (),
            initial or ())


def finish_aio(call: Any, done: Completion) -> None:
    """grpc.aio done-callback: read the finished call's status without a task."""
    now = _status_now(call)
    if now is not None:
        done.finish_with(*now)
        return
    try:
        ok, code = _drive(call.code())
        if ok:
            _, trailing = _drive(call.trailing_metadata())
            _, initial = _drive(call.initial_metadata())
            done.finish_with(code.name, tuple(trailing or ()), tuple(initial or ()))
            return
    except asyncio.CancelledError:
        done.finish_with("CANCELLED")
        return
    except Exception:  # never raise into grpc's callback
        log.debug("reading a finished call's status failed", exc_info=True)
    if call.cancelled():
        done.finish_with("CANCELLED")
        return

    async def later() -> None:  # rare: the status was not ready yet
        try:
            code = await call.code()
            done.finish_with(code.name, tuple(await call.trailing_metadata() or ()),
                             tuple(await call.initial_metadata() or ()))
        except BaseException:
            done.finish_with("CANCELLED")

    asyncio.get_running_loop().create_task(later())


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
    call.add_done_callback(lambda c: finish_aio(c, done))
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
