"""asyncio calls that are more than one grpc.aio call, as grpc.aio calls: one that waits
for an endpoint before it starts (:class:`DeferredCall`), and the shape every retried or
hedged call shares (:class:`RetriedCall`).

When the published picker cannot place a call at once (no endpoint READY yet, or
``wait_for_ready``), the multicallable returns a :class:`DeferredCall` of the right kind
(``grpc.aio.UnaryUnaryCall``, ``UnaryStreamCall``, ``StreamUnaryCall``,
``StreamStreamCall``): a task waits for a pick within the deadline, starts grpc.aio's
call on the endpoint, and every method then delegates to it. Until then it behaves as
grpc.aio's own call does: ``cancel()`` is True (then ``cancelled()`` and ``done()`` are
True, ``code()`` is CANCELLED, awaiting or reading raises ``asyncio.CancelledError``,
done callbacks run), and a call that could not be placed has failed with its status
(UNAVAILABLE with the reason, DEADLINE_EXCEEDED, CANCELLED on close).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import grpc
import grpc.aio

from .._core.deadline import remaining
from .._core.kinds import Invocation
from .._core.metadata import add_attempts_trailer
from .._core.observe import AttemptTelemetry
from ..balancer.picker import PickError
from .attempt import pick_info, start
from .errors import CANCELLED_DETAILS, aio_error, with_attempts
from .picking import AioPlacement
from .replay import AsyncReplay, WriteSource
from .status import FirstStatus, Status, peer_status, weakly, when_done


class DeferredCall:
    """``repicked``: transparent retries made before it (the caller's pick went to an
    endpoint removed meanwhile); ``transparent_retries`` counts them and its own."""

    _transparent = 0    # picks again because the endpoint was removed (set when one is)

    def __init__(self, host: AioPlacement, inv: Invocation,
                 error: PickError | grpc.aio.AioRpcError | None = None,
                 repicked: int = 0) -> None:
        if repicked:
            self._transparent = repicked
        self._host = host
        self._inv = inv
        self._call: Any = None                       # grpc.aio's call, once started
        self._error: grpc.aio.AioRpcError | None = None
        self._cancelled = False
        self._callbacks: list[Callable[[Any], None]] = []
        if isinstance(error, grpc.aio.AioRpcError):   # failed before it could wait
            self._error = error
            self._task: asyncio.Task[None] | None = None
        else:
            self._task = host.loop.create_task(self._place(error))

    async def _place(self, error: PickError | None) -> None:
        inv, host = self._inv, self._host
        info = pick_info(inv.site, inv.metadata)
        try:
            for _ in range(3):
                if error is not None:
                    result = await host.wait(info, error, inv.deadline, inv.wait_for_ready)
                    error = None
                else:
                    result = await host.pick(info, inv.deadline, inv.wait_for_ready)
                call = start(host, inv.site, result, inv.request, remaining(inv.deadline),
                             inv.metadata, inv.credentials, inv.wait_for_ready,
                             inv.compression)
                if call is not None:
                    self._started(call)
                    return
                self._transparent += 1      # removed meanwhile: a transparent retry
            raise aio_error("UNAVAILABLE", "endpoints were removed while the call started")
        except grpc.aio.AioRpcError as exc:
            self._ended(exc)

    def _started(self, call: Any) -> None:
        self._call = call
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            call.add_done_callback(lambda _c, cb=callback: cb(self))

    def _ended(self, error: grpc.aio.AioRpcError) -> None:
        self._error = error
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    async def _real(self) -> Any:
        """The started call; raises what ended the call before it started (the
        ``AioRpcError``, or ``asyncio.CancelledError`` after ``cancel()``)."""
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait([task])
        if self._cancelled and self._call is None:
            raise asyncio.CancelledError()
        if self._error is not None:
            raise self._error
        return self._call

    async def _status(self, name: str) -> Any:
        try:
            call = await self._real()
        except grpc.aio.AioRpcError as exc:
            return getattr(exc, name)()
        except asyncio.CancelledError:
            if not self._cancelled:
                raise
            return getattr(self._error, name)()
        return await getattr(call, name)()

    # ------------------------------------------------------------------ grpc.aio.Call
    async def code(self) -> grpc.StatusCode:
        return await self._status("code")  # type: ignore[no-any-return]

    async def details(self) -> str:
        return await self._status("details")  # type: ignore[no-any-return]

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return await self._status("initial_metadata")  # type: ignore[no-any-return]

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return await self._status("trailing_metadata")  # type: ignore[no-any-return]

    async def debug_error_string(self) -> str:
        return await self._status("debug_error_string")  # type: ignore[no-any-return]

    async def wait_for_connection(self) -> None:
        await (await self._real()).wait_for_connection()

    @property
    def transparent_retries(self) -> int:
        """Times the call was picked again because its endpoint was removed before it
        could start (gRFC A96's transparent retries)."""
        return self._transparent

    # ------------------------------------------------------------------ RpcContext
    def cancel(self) -> bool:
        if self._call is not None:
            return bool(self._call.cancel())
        if self.done():
            return False
        self._cancelled = True
        if self._task is not None:
            self._task.cancel()
        self._ended(aio_error("CANCELLED", CANCELLED_DETAILS))
        return True

    def cancelled(self) -> bool:
        if self._call is not None:
            return bool(self._call.cancelled())
        return self._cancelled

    def done(self) -> bool:
        if self._call is not None:
            return bool(self._call.done())
        return self._error is not None

    def time_remaining(self) -> float | None:
        deadline = self._inv.deadline
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._call is not None:
            self._call.add_done_callback(lambda _c: callback(self))
        elif self._error is not None:
            callback(self)
        else:
            self._callbacks.append(callback)

    def __repr__(self) -> str:
        state = ("started" if self._call is not None else
                 "failed" if self._error is not None else "waiting for an endpoint")
        return f"<{type(self).__name__} {self._inv.site.method} {state}: {self._call!r}>"


class _UnaryResponse(DeferredCall):
    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    async def _response(self) -> Any:
        return await (await self._real())


class _StreamResponse(DeferredCall):
    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        async for item in await self._real():
            yield item

    async def read(self) -> Any:
        return await (await self._real()).read()


class _StreamRequest:
    async def write(self, request: Any) -> None:
        await (await self._real()).write(request)  # type: ignore[attr-defined]

    async def done_writing(self) -> None:
        await (await self._real()).done_writing()  # type: ignore[attr-defined]


class DeferredUnaryUnaryCall(_UnaryResponse, grpc.aio.UnaryUnaryCall[Any, Any]):
    pass


class DeferredUnaryStreamCall(_StreamResponse, grpc.aio.UnaryStreamCall[Any, Any]):
    pass


class DeferredStreamUnaryCall(_StreamRequest, _UnaryResponse,
                              grpc.aio.StreamUnaryCall[Any, Any]):
    pass


class DeferredStreamStreamCall(_StreamRequest, _StreamResponse,
                               grpc.aio.StreamStreamCall[Any, Any]):
    pass


class RetriedCall(AttemptTelemetry):
    """A call made of attempts run by a driver task (``_drive()``, in ``retry``, ``hedge``
    and ``stream``): awaitable / async-iterable through the subclasses, with the status
    coroutines, ``cancel``/``done``/``add_done_callback``, and
    ``grpc-previous-rpc-attempts`` in its trailing metadata (and errors) when it took more
    than one attempt. When the driver ends, ``_rpc`` is the final attempt's grpc.aio call
    (None if none started) and ``_error`` the call's error, if it failed. It also reports
    gRFC A96's ``retry_delay`` (from the driver's plan: ``_retry_delay``) and
    ``transparent_retries`` (picks again of endpoints removed before an attempt began)."""

    def __init__(self, host: AioPlacement, inv: Invocation) -> None:
        self._host = host
        self._inv = inv
        self._rpc: Any = None
        self._error: grpc.aio.AioRpcError | None = None
        self._previous = 0
        self._writes: WriteSource | None = None
        self._first: FirstStatus | None = None   # the current attempt's first status
        self._replay: AsyncReplay | None = None
        self._callbacks: list[Callable[[Any], None]] = []
        self._started = asyncio.Event()     # an attempt's call exists (or the driver ended)
        self._cancel_called = False
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._task.add_done_callback(self._driven)

    # ------------------------------------------------------------------ subclass API
    async def _drive(self) -> Any:
        raise NotImplementedError

    def _attempt_started(self, rpc: Any) -> None:
        self._rpc = rpc
        self._started.set()

    async def _place(self, metadata: Any, exclude: frozenset[str], request: Any,
                     timeout: Callable[[float | None], float | None] = lambda t: t) -> Any:
        """Pick (avoiding ``exclude``) and start one attempt; a failed pick raises its
        ``AioRpcError`` (an attempt outcome, as in the sync channel)."""
        inv, host = self._inv, self._host
        info = pick_info(inv.site, metadata, exclude)
        for _ in range(3):
            result = await host.pick(info, inv.deadline, inv.wait_for_ready)
            rpc = start(host, inv.site, result, request, timeout(remaining(inv.deadline)),
                        metadata, inv.credentials, inv.wait_for_ready, inv.compression)
            if rpc is not None:
                break
            self._transparent += 1          # removed meanwhile: a transparent retry
        else:
            raise aio_error("UNAVAILABLE", "endpoints were removed while the call started")
        self._placed(result.candidate.address)
        if request is not None and inv.site.kind.streams_requests:
            self._first = FirstStatus(rpc)
        self._attempt_started(rpc)
        return rpc

    async def _outcome(self, rpc: Any, error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
        """The attempt's failure as the server reported it (see ``peer_status``)."""
        first = self._first
        if first is None:
            return error
        return await peer_status(rpc, first, error, self._inv.deadline)

    def _placed(self, address: str) -> None:
        """An attempt goes to ``address``."""

    # ------------------------------------------------------------------ driver
    async def _run(self) -> Any:
        try:
            return await self._drive()
        except grpc.aio.AioRpcError as exc:
            self._error = with_attempts(exc, self._previous, self._retry_delay())
            raise self._error from None

    def _driven(self, task: asyncio.Task[Any]) -> None:
        self._started.set()
        # task.exception() also marks a failure as retrieved: a caller that only asks
        # code() gets no "exception was never retrieved" warning.
        if task.cancelled() or task.exception() is not None or self._rpc is None:
            self._ended()
        else:
            # The final attempt runs on (a committed stream): nothing of ours may keep it
            # alive, so a stream the caller abandons is still collected and cancelled.
            when_done(self._rpc, weakly(self._rpc_ended))
            when_done(self._rpc, functools.partial(_release, self._writes, self._replay))

    def _rpc_ended(self, status: Status) -> None:
        self._ended()

    def _ended(self) -> None:
        """The whole call is over."""
        _release(self._writes, self._replay)
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    async def _settled(self) -> None:
        """Wait for the driver without raising (and without cancelling it)."""
        if not self._task.done():
            await asyncio.wait([self._task])

    def _failed(self) -> bool:
        return self._task.cancelled() or self._error is not None

    # ------------------------------------------------------------------ grpc.aio.Call
    async def code(self) -> grpc.StatusCode:
        await self._settled()
        if self._task.cancelled():
            return grpc.StatusCode.CANCELLED
        if self._error is not None:
            return self._error.code()
        return await self._rpc.code()  # type: ignore[no-any-return]

    async def details(self) -> str:
        await self._settled()
        if self._task.cancelled():
            return CANCELLED_DETAILS
        if self._error is not None:
            return self._error.details() or ""
        return await self._rpc.details()  # type: ignore[no-any-return]

    async def initial_metadata(self) -> grpc.aio.Metadata:
        await self._settled()
        if self._task.cancelled():
            return grpc.aio.Metadata()
        if self._error is not None:
            return self._error.initial_metadata()
        metadata: grpc.aio.Metadata = await self._rpc.initial_metadata()
        return metadata

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        await self._settled()
        if self._task.cancelled():
            return grpc.aio.Metadata()
        if self._error is not None:
            return self._error.trailing_metadata()
        trailing = await self._rpc.trailing_metadata()
        return grpc.aio.Metadata(*add_attempts_trailer(trailing, self._previous))

    async def debug_error_string(self) -> str:
        await self._settled()
        if self._error is not None:
            return self._error.debug_error_string() or ""
        if self._task.cancelled():
            return ""
        return await self._rpc.debug_error_string()  # type: ignore[no-any-return]

    async def wait_for_connection(self) -> None:
        """Wait until an attempt is connected to its endpoint (an attempt that fails
        first hands over to the next one); raise the call's error if it failed."""
        while True:
            await self._started.wait()
            if self._task.done() and self._failed():
                await self._raise()
            rpc = self._rpc
            try:
                await rpc.wait_for_connection()
                return
            except grpc.aio.AioRpcError:
                if self._rpc is rpc and self._task.done():
                    await self._raise()
                    raise
                if self._rpc is rpc:          # the next attempt has not started yet
                    self._started.clear()

    # ------------------------------------------------------------------ grpc.aio.RpcContext
    def cancel(self) -> bool:
        if self.done():
            return False
        self._cancel_called = True     # cancelled() and done() are True from now on,
        rpc = self._rpc                # as with grpc.aio's own calls
        if rpc is not None:
            rpc.cancel()
        self._task.cancel()
        return True

    def cancelled(self) -> bool:
        if self._cancel_called or self._task.cancelled():
            return True
        return bool(self._task.done() and self._error is None and self._rpc is not None
                    and self._rpc.cancelled())

    def done(self) -> bool:
        if self._cancel_called:
            return True
        if not self._task.done():
            return False
        return self._failed() or self._rpc is None or bool(self._rpc.done())

    def time_remaining(self) -> float | None:
        deadline = self._inv.deadline
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self.done():
            callback(self)
        else:
            self._callbacks.append(callback)

    # ------------------------------------------------------------------ requests
    async def write(self, request: Any) -> None:
        """Send one more request (request-streaming calls made without an iterator)."""
        writes = self._writes
        if writes is None:
            raise grpc.aio.UsageError("Please don't mix two styles of API for streaming "
                                      "requests")
        if self.done():
            raise asyncio.InvalidStateError("RPC already finished.")
        if writes.closed:
            raise asyncio.InvalidStateError('RPC is half closed after calling "done_writing".')
        await writes.put(request)
        if self._task.done() and self._failed():
            await self._raise()

    async def done_writing(self) -> None:
        if self._writes is None:
            raise grpc.aio.UsageError("Please don't mix two styles of API for streaming "
                                      "requests")
        self._writes.close()

    async def _raise(self) -> None:
        if self._task.cancelled():
            raise asyncio.CancelledError()
        if self._error is not None:
            raise self._error

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return (f"<{type(self).__name__} {self._inv.site.method} {state}, "
                f"{self._previous} earlier attempt(s): {self._rpc!r}>")



def _release(writes: WriteSource | None, replay: AsyncReplay | None,
             status: Status | None = None) -> None:
    """Stop waiting for requests: the call is over."""
    if writes is not None:
        writes.abort()
    if replay is not None:
        replay.close()



DEFERRED: dict[str, type[DeferredCall]] = {
    "unary_unary": DeferredUnaryUnaryCall, "unary_stream": DeferredUnaryStreamCall,
    "stream_unary": DeferredStreamUnaryCall, "stream_stream": DeferredStreamStreamCall}
