"""Retried asyncio response streams (server-streaming and bidi with a ``retryPolicy``).

As in the sync channel (``lbclient._retry_stream``), a stream is retried only until it is
committed: its first response message arrived, or ``initial_metadata()`` returned while
the attempt was still live (gRFC A6 commits on response headers). From then on the
attempt is the call and later failures are the caller's. Bidi requests are replayed from
an :class:`~lbclient.aio._replay.AsyncRequestReplay` (256 KiB).

The driver task reads each attempt's first message itself (keeping it for the caller's
first ``read()``), so retries are decided as soon as an attempt fails, whether or not
anybody reads. Decisions are ``CallRetry.record``/``decide`` - the same tenacity
strategies, asked the way ``tenacity.Retrying`` would - because a committed stream's
outcome is booked with the retry throttle only when it ends, as gRPC core does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from .._retry_state import CallRetry, Invocation
from ._attempt import with_attempts
from ._replay import WriteSource
from ._retry import RetriedCall
from ._status import Status, weakly, when_done

if TYPE_CHECKING:
    from ._channel import LoadBalancedChannel


class RetryingStreamCall(RetriedCall):
    def __init__(self, ch: LoadBalancedChannel, inv: Invocation, ctl: CallRetry,
                 writes: WriteSource | None = None) -> None:
        self._ctl = ctl
        self._peeked: list[Any] = []
        self._accounted = False
        super().__init__(ch, inv)
        self._writes = writes
        self._replay = ctl.replay  # type: ignore[assignment]

    def _placed(self, address: str) -> None:
        self._ctl.tried.append(address)

    async def _drive(self) -> None:
        ctl, ch = self._ctl, self._ch
        while True:
            metadata = ctl.begin_attempt(self._inv.metadata)
            self._previous = ctl.previous
            rpc = None
            try:
                rpc = await self._place(metadata, ctl.exclude(), ctl.request(self._inv.request))
                first = await rpc.read()
            except grpc.aio.AioRpcError as exc:
                if rpc is not None:
                    exc = await self._outcome(rpc, exc)
                ctl.record(exc)
                delay = ctl.decide()     # books the failure with the throttle
                if delay is None:
                    self._accounted = True
                    raise exc from None
                await ch._backoff_sleep(delay)
                ctl.next_attempt()
                continue
            if first is grpc.aio.EOF:    # ended OK without a message
                self._account(None)
                return
            self._commit()
            self._peeked.append(first)
            when_done(rpc, weakly(self._account_end))
            return

    def _commit(self) -> None:
        ctl = self._ctl
        ctl.committed = True
        if ctl.replay is not None and ctl.view is not None:
            ctl.replay.commit(ctl.view)

    def _account(self, error: BaseException | None) -> None:
        """Give the final attempt's outcome to the throttle, once."""
        if self._accounted:
            return
        self._accounted = True
        self._ctl.record(error)
        self._ctl.decide()

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
            raise with_attempts(exc, self._previous) from None

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
                metadata = await rpc.initial_metadata()
                if not rpc.done() and self._rpc is rpc:
                    self._commit()
                    return metadata
        return await super().initial_metadata()


class RetryingUnaryStreamCall(RetryingStreamCall, grpc.aio.UnaryStreamCall):  # type: ignore[misc]
    pass


class RetryingStreamStreamCall(RetryingStreamCall, grpc.aio.StreamStreamCall):  # type: ignore[misc]
    pass
