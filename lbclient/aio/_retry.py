"""Retried asyncio calls (gRFC A6): the calls of methods whose method config has a
``retryPolicy`` (or, for unary-unary, a ``hedgingPolicy``).

:func:`retried_call` picks the implementation: :class:`RetryingUnaryCall` (unary and
client-streaming) runs a ``tenacity.AsyncRetrying`` composed of the very strategies the
sync channel uses (``CallRetry.strategies``: retryable codes, pushback, throttle,
commitment, full-jitter backoff, ``maxAttempts`` and the shared deadline);
``_retry_stream.RetryingStreamCall`` and ``_hedge.HedgedCall`` the rest.

Every attempt is a new pick with ``PickInfo.exclude`` = the addresses this call already
tried, and a normal attempt (``_attempt.start``) whose outcome feeds the endpoint's
stats, the picker's ``on_done`` and the call listeners. Backoffs sleep on the loop and
end early when the channel closes (the next pick then fails CANCELLED).

:class:`RetriedCall` is the grpc.aio call shape they share: a driver task runs the
attempts; the returned object is awaitable / async-iterable, has the status coroutines,
``cancel``/``done``/``add_done_callback``, and reports ``grpc-previous-rpc-attempts`` in
its trailing metadata (and errors) when it took more than one attempt. Everything runs
on the channel's loop.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import tenacity

from .._invoke import remaining
from .._replay import DEFAULT_LIMIT, message_size
from .._retry_call import add_attempts_trailer
from .._retry_state import CallRetry, Invocation
from ..balancer.picker import PickInfo
from ..method_config import MethodConfig
from ._attempt import pick, start, with_attempts
from ._replay import AsyncRequestReplay, WriteSource
from ._status import FirstStatus, Status, peer_status, weakly, when_done

if TYPE_CHECKING:
    from ._channel import LoadBalancedChannel

CANCELLED_DETAILS = "Locally cancelled by application!"


class RetriedCall:
    """The shared half: ``_drive()`` (subclasses) runs on a task; when it ends,
    ``_rpc`` is the final attempt's grpc.aio call (None if none started) and
    ``_error`` the call's error, if it failed."""

    def __init__(self, ch: LoadBalancedChannel, inv: Invocation) -> None:
        self._ch = ch
        self._inv = inv
        self._rpc: Any = None
        self._error: grpc.aio.AioRpcError | None = None
        self._previous = 0
        self._writes: WriteSource | None = None
        self._first: FirstStatus | None = None   # the current attempt's first status
        self._replay: AsyncRequestReplay | None = None
        self._callbacks: list[Callable[[Any], None]] = []
        self._started = asyncio.Event()     # an attempt's call exists (or the driver ended)
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
        inv = self._inv
        result = await pick(self._ch, PickInfo(inv.args.method, tuple(metadata or ()), exclude),
                            inv.deadline, inv.wait_for_ready)
        self._placed(result.candidate.address)
        rpc = start(self._ch, inv.args, result, request, timeout(remaining(inv.deadline)),
                    metadata, inv.credentials, inv.wait_for_ready, inv.compression)
        if request is not None and inv.args.kind[0] == "s":   # a request stream
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
            self._error = with_attempts(exc, self._previous)
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
        return await self._rpc.initial_metadata()

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

    @property
    def previous_rpc_attempts(self) -> int:
        """Attempts made before the final one."""
        return self._previous

    # ------------------------------------------------------------------ grpc.aio.RpcContext
    def cancel(self) -> bool:
        if self.done():
            return False
        rpc = self._rpc
        if rpc is not None:
            rpc.cancel()
        self._task.cancel()
        return True

    def cancelled(self) -> bool:
        if self._task.cancelled():
            return True
        return bool(self._task.done() and self._error is None and self._rpc is not None
                    and self._rpc.cancelled())

    def done(self) -> bool:
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
        return (f"<{type(self).__name__} {self._inv.args.method} {state}, "
                f"{self._previous} earlier attempt(s): {self._rpc!r}>")


class RetryingUnaryCall(RetriedCall):
    """A unary-response call (unary-unary or client-streaming) with a retryPolicy: a
    ``tenacity.AsyncRetrying`` around one attempt (pick, start, await the response)."""

    def __init__(self, ch: LoadBalancedChannel, inv: Invocation, ctl: CallRetry,
                 writes: WriteSource | None = None) -> None:
        self._ctl = ctl
        super().__init__(ch, inv)
        self._writes = writes
        self._replay = ctl.replay  # type: ignore[assignment]

    def _placed(self, address: str) -> None:
        self._ctl.tried.append(address)

    async def _attempt(self) -> Any:
        ctl = self._ctl
        metadata = ctl.begin_attempt(self._inv.metadata)
        self._previous = ctl.previous
        rpc = await self._place(metadata, ctl.exclude(), ctl.request(self._inv.request),
                                ctl.attempt_timeout)
        try:
            return await rpc
        except grpc.aio.AioRpcError as exc:
            raise await self._outcome(rpc, exc) from None

    async def _drive(self) -> Any:
        retrying = tenacity.AsyncRetrying(**self._ctl.strategies, reraise=True,
                                          sleep=self._ch._backoff_sleep)
        return await retrying(self._attempt)

    def __await__(self) -> Generator[Any, None, Any]:
        return self._task.__await__()


class RetryingUnaryUnaryCall(RetryingUnaryCall, grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    pass


class RetryingStreamUnaryCall(RetryingUnaryCall, grpc.aio.StreamUnaryCall):  # type: ignore[misc]
    pass


def _release(writes: WriteSource | None, replay: AsyncRequestReplay | None,
             status: Status | None = None) -> None:
    """Stop waiting for requests: the call is over."""
    if writes is not None:
        writes.abort()
    if replay is not None:
        replay.close()


def retried_call(ch: LoadBalancedChannel, inv: Invocation, mc: MethodConfig) -> Any | None:
    """The call object for a method with a retry or hedging policy, or None when the
    call is sent once the plain way (no policy for this kind of call, or a unary request
    larger than the replay buffer, as in gRPC)."""
    from ._hedge import HedgedCall
    from ._retry_stream import RetryingStreamStreamCall, RetryingUnaryStreamCall

    kind = inv.args.kind
    if mc.hedging_policy is not None:
        if kind != "unary_unary" or message_size(inv.request, inv.args.ser) > DEFAULT_LIMIT:
            return None
        return HedgedCall(ch, inv, mc.hedging_policy)
    policy = mc.retry_policy
    if policy is None:
        return None
    writes = replay = None
    if kind.startswith("stream_"):
        if inv.request is None:
            writes = WriteSource()
        replay = AsyncRequestReplay(writes if writes is not None else inv.request,
                                    DEFAULT_LIMIT, inv.args.ser)
    elif message_size(inv.request, inv.args.ser) > DEFAULT_LIMIT:
        return None
    ctl = CallRetry(policy, inv.deadline, throttle=ch._throttle, closed=lambda: ch._closed,
                    rng=ch._retry_rng, replay=replay)
    if kind == "unary_unary":
        return RetryingUnaryUnaryCall(ch, inv, ctl)
    if kind == "stream_unary":
        return RetryingStreamUnaryCall(ch, inv, ctl, writes)
    if kind == "unary_stream":
        return RetryingUnaryStreamCall(ch, inv, ctl)
    return RetryingStreamStreamCall(ch, inv, ctl, writes)
