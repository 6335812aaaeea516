"""Request streams of retried asyncio calls: the sync :class:`RequestReplay` buffer
(gRFC A6 replay, 256 KiB per call, commit past it) read from an async source.

* :class:`AsyncRequestReplay` - the same buffer bookkeeping as the sync class (views,
  commit, limit), filled from an async iterator, a sync iterator, or :class:`WriteSource`;
* :class:`AsyncReplayView` - one attempt's request iterator (async, for grpc.aio);
* :class:`WriteSource` - what the call's ``write()`` / ``done_writing()`` feed.

Threading: all on the event loop. Only one read of the source is in progress at a time
(a shared task): an older attempt still waiting for the next request and the new attempt
both wait for the same message, so an async generator is never entered twice.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

from .._replay import DEFAULT_LIMIT, PULL, ReplayView, RequestReplay


class AsyncReplayView(ReplayView):
    __slots__ = ()

    def __aiter__(self) -> AsyncReplayView:
        return self

    async def __anext__(self) -> Any:
        replay = self._replay
        assert isinstance(replay, AsyncRequestReplay)
        return await replay.anext_for(self)


class AsyncRequestReplay(RequestReplay):
    """Buffers ``source`` (an async or sync iterable) for replay up to ``limit``
    serialized bytes."""

    def __init__(self, source: Any, limit: int = DEFAULT_LIMIT,
                 serializer: Callable[[Any], bytes] | None = None) -> None:
        is_async = hasattr(source, "__aiter__")
        super().__init__(iter(()) if is_async else source, limit, serializer)
        self._asource: Any = source.__aiter__() if is_async else None
        self._pulling: asyncio.Task[None] | None = None

    def _new_view(self) -> ReplayView:
        return AsyncReplayView(self)

    async def anext_for(self, view: ReplayView) -> Any:
        while True:
            with self._lock:
                try:
                    message = self._take(view)
                except StopIteration:
                    raise StopAsyncIteration from None
                if message is not PULL:
                    return message
                if self._asource is None:   # a sync iterator: read it here, as grpc.aio
                    self._pull()
                    continue
            task = self._pulling
            if task is None:
                task = self._pulling = asyncio.get_running_loop().create_task(self._pull_one())
            await asyncio.shield(task)

    async def _pull_one(self) -> None:
        try:
            message = await self._asource.__anext__()
        except StopAsyncIteration:
            with self._lock:
                self._source_ended(None)
        except Exception as exc:
            with self._lock:
                self._source_ended(exc)
        else:
            with self._lock:
                self._accept(message)
        finally:
            self._pulling = None

    def close(self) -> None:
        """The call is over: stop waiting for the source."""
        task = self._pulling
        if task is not None:
            task.cancel()


class WriteSource:
    """An async iterator of the messages given to ``write()`` until ``done_writing()``.
    ``put`` returns once the message was taken by an attempt (grpc.aio's ``write()``
    also waits until its message is sent) or :meth:`abort` ends the wait."""

    def __init__(self) -> None:
        self._items: collections.deque[tuple[Any, asyncio.Future[None]]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False       # done_writing() was called
        self._aborted = False

    def __aiter__(self) -> WriteSource:
        return self

    async def __anext__(self) -> Any:
        while not self._items:
            if self.closed or self._aborted:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message, taken = self._items.popleft()
        if not taken.done():
            taken.set_result(None)
        return message

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def put(self, message: Any) -> None:
        taken = asyncio.get_running_loop().create_future()
        self._items.append((message, taken))
        self._wake()
        await taken

    def close(self) -> None:
        self.closed = True
        self._wake()

    def abort(self) -> None:
        """The call ended: release every pending ``put`` and end the iteration."""
        self._aborted = True
        for _, taken in self._items:
            if not taken.done():
                taken.set_result(None)
        self._items.clear()
        self._wake()
