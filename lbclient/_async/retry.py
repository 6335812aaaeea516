"""gRFC A6 retries and hedging for asyncio calls: which driver a call gets, and the
shared shape of a call made of several attempts.

A method whose config has a ``retryPolicy`` gets a :class:`RetryPlan` per call (a
request stream also gets an :class:`AsyncReplay`); a unary-unary method with a
``hedgingPolicy`` is hedged (``hedge.HedgedCall``; other kinds run as a single attempt,
as in gRPC). A unary request larger than the replay buffer is sent once, unretried.

:class:`RetryingUnaryCall` (a ``future.RetriedCall``) loops over attempts (pick, start,
await the response) asking the plan after each failure, as the sync blocking loop does;
``stream`` has the response streams. Every attempt is a new pick with
``PickInfo.exclude`` = the endpoints already tried; backoffs sleep on the loop and end
early when the channel closes.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import grpc.aio

from .._core.kinds import CallKind, Invocation
from .._core.replay import DEFAULT_LIMIT, message_size
from .._core.retry_plan import RetryPlan
from ..method_config import MethodConfig
from .errors import aio_error
from .future import RetriedCall
from .hedge import HedgedCall
from .picking import AioPlacement
from .replay import AsyncReplay, WriteSource
from .stream import RetryingStreamStreamCall, RetryingUnaryStreamCall


class RetryingUnaryCall(RetriedCall):
    """A unary-response call (unary-unary or client-streaming) with a retryPolicy: one
    attempt after another (pick, start, await the response) while the plan says so."""

    def __init__(self, host: AioPlacement, inv: Invocation, plan: RetryPlan,
                 replay: AsyncReplay | None = None, writes: WriteSource | None = None) -> None:
        self._plan = plan
        super().__init__(host, inv)
        # the call is over (also cancelled): a retry it holds goes back (retry budgets)
        self._task.add_done_callback(lambda _: plan.ended())
        self._writes = writes
        self._replay = replay

    def _placed(self, address: str) -> None:
        self._plan.placed(address)

    def _retry_delay(self) -> float:
        return self._plan.retry_delay

    async def _drive(self) -> Any:
        plan, inv, replay = self._plan, self._inv, self._replay
        while True:
            request = inv.request
            if replay is not None:
                view = replay.view()
                if view is None:          # committed meanwhile: the last failure stands
                    raise self._last_error()
                request = view
            metadata = plan.start_attempt(inv.metadata)
            self._previous = plan.previous
            rpc = None
            try:
                rpc = await self._place(metadata, plan.exclude(), request,
                                        plan.attempt_timeout)
                response = await rpc
            except grpc.aio.AioRpcError as exc:
                if rpc is not None:
                    exc = await self._outcome(rpc, exc)
                delay = plan.failed(exc.code().name, exc.trailing_metadata(),
                                    closed=self._host.ctx.closed,
                                    replayable=replay is None or not replay.committed)
                if delay is None:
                    raise exc from None
                self._last = exc
                await self._host.sleep(delay)
                continue
            plan.succeeded()
            return response

    _last: grpc.aio.AioRpcError | None = None

    def _last_error(self) -> grpc.aio.AioRpcError:
        return self._last or aio_error("INTERNAL", "request stream could not be replayed")

    def __await__(self) -> Generator[Any, None, Any]:
        return self._task.__await__()


class RetryingUnaryUnaryCall(RetryingUnaryCall, grpc.aio.UnaryUnaryCall[Any, Any]):
    pass


class RetryingStreamUnaryCall(RetryingUnaryCall, grpc.aio.StreamUnaryCall[Any, Any]):
    pass


def retried_call(host: AioPlacement, inv: Invocation, config: MethodConfig) -> Any | None:
    """The call object for a method with a retry or hedging policy, or None when the
    call is sent once the plain way (no policy for this kind of call, or a unary request
    larger than the replay buffer, as in gRPC)."""
    kind = inv.site.kind
    if config.hedging_policy is not None:
        if kind is not CallKind.UNARY_UNARY or \
                message_size(inv.request, inv.site.ser) > DEFAULT_LIMIT:
            return None
        return HedgedCall(host, inv, config.hedging_policy)
    policy = config.retry_policy
    if policy is None:
        return None
    ctx = host.ctx
    writes = replay = None
    if kind.streams_requests:
        if inv.request is None:
            writes = WriteSource()
        replay = AsyncReplay(writes if writes is not None else inv.request, DEFAULT_LIMIT,
                             inv.site.ser, ctx.replay_budget)
    elif message_size(inv.request, inv.site.ser) > DEFAULT_LIMIT:
        return None
    plan = RetryPlan(policy, inv.deadline, throttle=ctx.throttle, rng=ctx.rng)
    if kind is CallKind.UNARY_UNARY:
        return RetryingUnaryUnaryCall(host, inv, plan)
    if kind is CallKind.STREAM_UNARY:
        return RetryingStreamUnaryCall(host, inv, plan, replay, writes)
    if kind is CallKind.UNARY_STREAM:
        return RetryingUnaryStreamCall(host, inv, plan)
    return RetryingStreamStreamCall(host, inv, plan, replay, writes)
