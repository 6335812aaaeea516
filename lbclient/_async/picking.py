"""Placing asyncio calls: pick now, or wait on the loop for a picker that can place the
call (the asyncio twin of ``lbclient._sync.picking``, with the same rules from
``lbclient._core.picking``).

Every change the balancer publishes sets the current :class:`asyncio.Event` and installs
a new one; a waiting call awaits it within its deadline. Failures are ``AioRpcError``s:
UNAVAILABLE with the reason, DEADLINE_EXCEEDED while waiting, CANCELLED once the channel
closed. Everything runs on the channel's loop.
"""

from __future__ import annotations

import asyncio

import grpc.aio

from .._core.context import CallContext
from .._core.deadline import remaining
from .._core.picking import CLOSED, fail_now, wait_expired
from ..balancer.picker import FailingPicker, PickError, PickInfo, PickResult
from .errors import aio_error


class AioPlacement:
    def __init__(self, ctx: CallContext, loop: asyncio.AbstractEventLoop) -> None:
        self.ctx = ctx
        self.loop = loop
        self._changed = asyncio.Event()     # set at every change (state watchers)
        self._decisive = asyncio.Event()    # ... that may place or fail a waiting call
        self._placeable = asyncio.Event()   # ... that may place a waiting call
        self._closing: asyncio.Future[None] = loop.create_future()

    def changed(self) -> None:
        """A new picker (or channel state) was published: wake the state watchers and
        the calls it may place or fail. A picker that says "not yet" wakes no call; a
        failing one only the calls that are not wait_for_ready (it can only fail them)."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        picker = self.ctx.balancer.picker
        failing = isinstance(picker, FailingPicker) and not self.ctx.closed
        if failing and isinstance(picker, FailingPicker) and picker.queue:
            return
        event, self._decisive = self._decisive, asyncio.Event()
        event.set()
        if not failing:
            event, self._placeable = self._placeable, asyncio.Event()
            event.set()

    async def wait_state_change(self) -> None:
        """Until the next change of any kind (picker or channel state)."""
        await self._changed.wait()

    def close(self) -> None:
        """The channel closed (``ctx.closed`` is set): waiters and backoffs end now."""
        if not self._closing.done():
            self._closing.set_result(None)
        self.changed()

    def closed_error(self) -> grpc.aio.AioRpcError:
        return aio_error("CANCELLED", CLOSED)

    async def wait_change(self, timeout: float | None, wait_for_ready: bool) -> None:
        """Until the next change that may place (``wait_for_ready``) or also fail a
        waiting call, or ``timeout`` seconds."""
        event = self._placeable if wait_for_ready else self._decisive
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass

    async def pick(self, info: PickInfo, deadline: float | None,
                   wait_for_ready: bool) -> PickResult:
        """The call's pick, now or after waiting; raises its ``AioRpcError`` otherwise."""
        if self.ctx.closed:
            raise self.closed_error()
        try:
            return self.ctx.balancer.picker.pick(info)
        except PickError as exc:
            return await self.wait(info, exc, deadline, wait_for_ready)

    async def wait(self, info: PickInfo, error: PickError, deadline: float | None,
                   wait_for_ready: bool) -> PickResult:
        """After ``error`` from the picker: wait (within ``deadline``) for a picker that
        places the call."""
        ctx = self.ctx
        failed = fail_now(ctx, error, wait_for_ready)
        if failed is not None:
            raise aio_error(*failed)
        reason = str(error)
        ctx.balancer.request_connections()
        while True:
            if ctx.closed:
                raise self.closed_error()
            left = remaining(deadline)
            if left is not None and left <= 0:
                raise aio_error(*wait_expired(reason))
            await self.wait_change(left, wait_for_ready)
            if ctx.closed:
                raise self.closed_error()
            try:
                return ctx.balancer.picker.pick(info)
            except PickError as exc:
                failed = fail_now(ctx, exc, wait_for_ready)
                if failed is not None:
                    raise aio_error(*failed) from None
                reason = str(exc)

    async def sleep(self, delay: float) -> None:
        """A retry backoff: ``delay`` seconds, cut short when the channel closes."""
        if delay > 0 and not self._closing.done():
            await asyncio.wait([self._closing], timeout=delay)
