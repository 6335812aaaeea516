"""Retried asyncio response streams (server-streaming and bidi with a ``retryPolicy``;
the asyncio twin of ``lbclient._sync.stream``).

A stream is retried only until it is committed: its first response message arrived, or
``initial_metadata()`` returned while the attempt was still live (gRFC A6 commits on
response headers). From then on the attempt is the call and later failures are the
caller's. Bidi requests are replayed from an :class:`~lbclient._async.replay.AsyncReplay`.

The driver task reads each attempt's first message itself (keeping it for the caller's
first ``read()``), so retries are decided as soon as an attempt fails, whether or not
anybody reads; a committed stream's outcome is booked with the retry throttle when it
ends, as gRPC core does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from .._core.kinds import Invocation
from .._core.retry_plan import RetryPlan
from .errors import with_attempts
from .future import RetriedCall
from .picking import AioPlacement
from .replay import AsyncReplay, AsyncReplayView, WriteSource
from .status import Status, weakly, when_done


class RetryingStreamCall(RetriedCall):
    def __init__(self, host: AioPlacement, inv: Invocation, plan: RetryPlan,
                 replay: AsyncReplay | None = None, writes: WriteSource | None = None) -> None:
        self._plan = plan
        self._peeked: list[Any] = []
        self._accounted = False
        self._view: AsyncReplayView | None = None
        super().__init__(host, inv)
        # driving is over (committed, failed, cancelled): give back a retry still held
        self._task.add_done_callback(lambda _: plan.ended())
        self._writes = writes
        self._replay = replay

    def _placed(self, address: str) -> None:
        self._plan.placed(address)

    def _retry_delay(self) -> float:
        return self._plan.retry_delay

    async def _drive(self) -> None:
        plan, host, replay = self._plan, self._host, self._replay
        last: grpc.aio.AioRpcError | None = None
        while True:
            request = self._inv.request
            if replay is not None:
                self._view = replay.view()
                if self._view is None and last is not None:   # committed meanwhile
                    self._accounted = True
                    raise last
                request = self._view
            metadata = plan.start_attempt(self._inv.metadata)
            self._previous = plan.previous
            rpc = None
            try:
                rpc = await self._place(metadata, plan.exclude(), request)
                first = await rpc.read()
            except grpc.aio.AioRpcError as exc:
                if rpc is not None:
                    exc = await self._outcome(rpc, exc)
                delay = plan.failed(exc.code().name, exc.trailing_metadata(),
                                    closed=host.ctx.closed,
                                    replayable=replay is None or not replay.committed)
                if delay is None:
                    self._accounted = True
                    raise exc from None
                last = exc
                await host.sleep(delay)
                continue
            if first is grpc.aio.EOF:    # ended OK without a message
                self._account(None)
                return
            self._commit()
            self._peeked.append(first)
            when_done(rpc, weakly(self._account_end))
            return

    def _commit(self) -> None:
        self._plan.committed = True
        if self._replay is not None and self._view is not None:
            self._replay.commit(self._view)

    def _account(self, error: BaseException | None) -> None:
        """Give the final attempt's outcome to the throttle, once."""
        if self._accounted:
            return
        self._accounted = True
        if error is None:
            self._plan.final_outcome("OK")
        elif isinstance(error, grpc.aio.AioRpcError):
            self._plan.final_outcome(error.code().name, error.trailing_metadata())

    def _account_end(self, status: Status) -> None:
        if status.code == "CANCELLED":    # cancelled here: not the server's doing
            self._accounted = True
            return
        self._account(status.error())

    # ------------------------------------------------------------------ reading
    async def read(self) -> Any:
        await self._settled()
        await self._raise()
        if self._peeked:
            return self._peeked.pop()
        try:
            return await self._rpc.read()
        except grpc.aio.AioRpcError as exc:
            raise with_attempts(exc, self._previous, self._retry_delay()) from None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            message = await self.read()
            if message is grpc.aio.EOF:
                return
            yield message

    async def initial_metadata(self) -> grpc.aio.Metadata:
        """Headers of a live attempt commit the call (gRFC A6); otherwise the final
        attempt's."""
        if not self._task.done():
            await self._started.wait()
            rpc = self._rpc
            if rpc is not None and not self._task.done():
                metadata: grpc.aio.Metadata = await rpc.initial_metadata()
                if not rpc.done() and self._rpc is rpc:
                    self._commit()
                    return metadata
        return await super().initial_metadata()


class RetryingUnaryStreamCall(RetryingStreamCall, grpc.aio.UnaryStreamCall[Any, Any]):
    pass


class RetryingStreamStreamCall(RetryingStreamCall, grpc.aio.StreamStreamCall[Any, Any]):
    pass
