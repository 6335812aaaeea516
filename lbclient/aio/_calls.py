"""The four grpc.aio multicallables of the asyncio channel.

When the published picker can place the call at once (the common case), the caller gets
grpc.aio's own call object, so awaiting, iterating, ``read()``/``write()``/
``done_writing()``, metadata and status behave exactly as with grpc.aio. Otherwise (no
ready endpoint) a :class:`DeferredCall` waits for one within the deadline (with
``wait_for_ready``, or while endpoints are still connecting) or fails with UNAVAILABLE,
and then delegates to the real call. Methods whose method config has a retry or hedging
policy get a retried call (``_retry.retried_call``).

Deadline: the caller's timeout, or the method config's ``timeout`` when that is shorter
or the caller gave none; fixed here, once, and shared by every attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from .._invoke import CallArgs, deadline_from, remaining
from .._retry_state import Invocation
from ..balancer.picker import PickError, PickInfo
from ._attempt import CLOSED, aio_error, pick_and_start, start
from ._retry import retried_call

if TYPE_CHECKING:
    from ._channel import LoadBalancedChannel


class _MultiCallable:
    __slots__ = ("_ch", "_args", "_info")

    def __init__(self, channel: LoadBalancedChannel, kind: str, method: str, ser: Any,
                 deser: Any, registered: bool) -> None:
        self._ch = channel
        self._args = CallArgs(kind, method, ser, deser, registered)
        self._info = PickInfo(method)      # the pick of a call without metadata

    def __call__(self, request: Any = None, *, timeout: float | None = None,
                 metadata: Any = None, credentials: Any = None,
                 wait_for_ready: bool | None = None, compression: Any = None) -> Any:
        ch, args = self._ch, self._args
        mc = ch._method_config(args.method)
        deadline = deadline_from(timeout, mc.timeout if mc is not None else None)
        if wait_for_ready is None and mc is not None:
            wait_for_ready = mc.wait_for_ready
        wfr = bool(wait_for_ready)
        if ch._closed:
            return DeferredCall(_fail(grpc.StatusCode.CANCELLED, CLOSED), request)
        if mc is not None and (mc.retry_policy is not None or mc.hedging_policy is not None):
            call = retried_call(ch, Invocation(args, request, deadline, metadata, wfr,
                                               credentials, compression), mc)
            if call is not None:
                return call
        info = PickInfo(args.method, tuple(metadata)) if metadata else self._info
        try:
            result = ch._balancer.picker.pick(info)
        except PickError as exc:
            if not wfr and not exc.queue:
                return DeferredCall(_fail(grpc.StatusCode.UNAVAILABLE, str(exc)), request)
            return DeferredCall(pick_and_start(ch, args, info, deadline, request, metadata,
                                               credentials, wfr, compression, str(exc)),
                                request)
        return start(ch, args, result, request, remaining(deadline), metadata, credentials,
                     wfr, compression)


async def _fail(code: grpc.StatusCode, details: str) -> Any:
    raise aio_error(code, details)


class DeferredCall:
    """A grpc.aio call whose start waits for an endpoint. Every method waits for the
    real call (or raises the error that prevented it) and then delegates to it."""

    def __init__(self, starter: Coroutine[Any, Any, Any], request: Any) -> None:
        self._task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(starter)
        self._callbacks: list[Callable[[Any], None]] = []
        self._task.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            for cb in self._callbacks:
                cb(self)
        else:
            for cb in self._callbacks:
                task.result().add_done_callback(lambda _c, cb=cb: cb(self))

    async def _inner(self) -> Any:
        return await asyncio.shield(self._task)

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    async def _response(self) -> Any:
        return await (await self._inner())

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        async for item in await self._inner():
            yield item

    async def read(self) -> Any:
        return await (await self._inner()).read()

    async def write(self, request: Any) -> None:
        await (await self._inner()).write(request)

    async def done_writing(self) -> None:
        await (await self._inner()).done_writing()

    async def wait_for_connection(self) -> None:
        await (await self._inner()).wait_for_connection()

    async def _status(self, name: str, default: Any) -> Any:
        try:
            call = await self._inner()
        except grpc.aio.AioRpcError as exc:
            return getattr(exc, name)()
        except asyncio.CancelledError:
            return default
        return await getattr(call, name)()

    async def code(self) -> grpc.StatusCode:
        return await self._status("code", grpc.StatusCode.CANCELLED)  # type: ignore[no-any-return]

    async def details(self) -> str:
        return await self._status("details", "cancelled")  # type: ignore[no-any-return]

    async def initial_metadata(self) -> Any:
        return await self._status("initial_metadata", grpc.aio.Metadata())

    async def trailing_metadata(self) -> Any:
        return await self._status("trailing_metadata", grpc.aio.Metadata())

    async def debug_error_string(self) -> str:
        return await self._status("debug_error_string", "")  # type: ignore[no-any-return]

    def cancel(self) -> bool:
        if self._task.done():
            if self._task.cancelled() or self._task.exception() is not None:
                return False
            return bool(self._task.result().cancel())
        return self._task.cancel()

    def cancelled(self) -> bool:
        if self._task.cancelled():
            return True
        if self._task.done() and self._task.exception() is None:
            return bool(self._task.result().cancelled())
        return False

    def done(self) -> bool:
        if not self._task.done():
            return False
        if self._task.cancelled() or self._task.exception() is not None:
            return True
        return bool(self._task.result().done())

    def time_remaining(self) -> float | None:
        if self._task.done() and not self._task.cancelled() and self._task.exception() is None:
            return self._task.result().time_remaining()  # type: ignore[no-any-return]
        return None

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if not self._task.done():
            self._callbacks.append(callback)
        elif self._task.cancelled() or self._task.exception() is not None:
            callback(self)
        else:
            self._task.result().add_done_callback(lambda _c: callback(self))


class UnaryUnary(_MultiCallable, grpc.aio.UnaryUnaryMultiCallable):
    __slots__ = ()


class UnaryStream(_MultiCallable, grpc.aio.UnaryStreamMultiCallable):
    __slots__ = ()


class StreamUnary(_MultiCallable, grpc.aio.StreamUnaryMultiCallable):
    __slots__ = ()

    def __call__(self, request_iterator: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        return super().__call__(request_iterator, **kwargs)


class StreamStream(_MultiCallable, grpc.aio.StreamStreamMultiCallable):
    __slots__ = ()

    def __call__(self, request_iterator: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        return super().__call__(request_iterator, **kwargs)
