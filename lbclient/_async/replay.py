"""Request streams of retried asyncio calls: :class:`ReplayCore` read from an async
source on the loop (the asyncio twin of ``lbclient._sync.replay``).

* :class:`AsyncReplay` - gRFC A6 replay (256 KiB per call, the channel-wide budget,
  commit past either), filled from an async iterator, a sync iterator, or a
  :class:`WriteSource`;
* :class:`AsyncReplayView` - one attempt's request iterator (async, for grpc.aio);
* :class:`WriteSource` - what the call's ``write()`` / ``done_writing()`` feed.

Only one read of the source is in progress at a time (a shared task): an older attempt
still waiting for the next request and the new attempt both wait for the same message,
so an async generator is never entered twice. No lock: everything runs on the loop.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

from .._core.replay import END, PULL, ReplayBudget, ReplayCore, ReplayView


class AsyncReplay:
    def __init__(self, source: Any, limit: int,
                 serializer: Callable[[Any], bytes] | None = None,
                 budget: ReplayBudget | None = None) -> None:
        self._core = ReplayCore(limit, serializer, budget)
        is_async = hasattr(source, "__aiter__")
        self._asource: Any = source.__aiter__() if is_async else None
        self._source: Any = None if is_async else iter(source)
        self._pulling: asyncio.Task[None] | None = None

    @property
    def committed(self) -> bool:
        return self._core.committed

    @property
    def buffered_bytes(self) -> int:
        return self._core.buffered_bytes

    def view(self) -> AsyncReplayView | None:
        view = self._core.new_view()
        return None if view is None else AsyncReplayView(self, view)

    def commit(self, view: AsyncReplayView | None) -> None:
        self._core.commit(None if view is None else view.core)

    async def next_for(self, view: ReplayView) -> Any:
        core = self._core
        while True:
            message = core.take(view)      # raises the source's error, if any
            if message is END:
                raise StopAsyncIteration
            if message is not PULL:
                return message
            if self._source is not None:   # a sync iterator: read it here, as grpc.aio
                try:
                    core.accept(next(self._source))
                except StopIteration:
                    core.source_ended()
                except Exception as exc:
                    core.source_ended(exc)
                continue
            task = self._pulling
            if task is None:
                task = self._pulling = asyncio.get_running_loop().create_task(self._pull())
            await asyncio.shield(task)

    async def _pull(self) -> None:
        core = self._core
        try:
            message = await self._asource.__anext__()
        except StopAsyncIteration:
            core.source_ended()
        except Exception as exc:
            core.source_ended(exc)
        else:
            core.accept(message)
        finally:
            self._pulling = None

    def close(self) -> None:
        """The call is over: stop waiting for the source."""
        task = self._pulling
        if task is not None:
            task.cancel()


class AsyncReplayView:
    """One attempt's request iterator."""

    __slots__ = ("_replay", "core")

    def __init__(self, replay: AsyncReplay, core: ReplayView) -> None:
        self._replay = replay
        self.core = core

    def __aiter__(self) -> AsyncReplayView:
        return self

    async def __anext__(self) -> Any:
        return await self._replay.next_for(self.core)


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
