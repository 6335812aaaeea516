"""gRFC A6 hedging of asyncio unary-unary calls: :class:`HedgedCall` carries out a
:class:`~lbclient._core.hedging.HedgePlan`'s actions on the loop (the asyncio twin of
``lbclient._sync.hedge``).

The driver task keeps one task per attempt and waits for "an attempt ended, or the armed
hedging delay passed" with ``asyncio.wait``; each event goes to the plan, whose actions
say what to send next and when the call is won or lost. The other attempts are cancelled
when it is. Everything runs on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

import grpc
import grpc.aio

from .._core.hedging import Action, Arm, HedgePlan, Send, Win
from .._core.kinds import Invocation
from .._core.metadata import attempt_metadata
from ..method_config import HedgingPolicy
from .errors import aio_error, code_name
from .future import RetriedCall
from .picking import AioPlacement


class HedgedCall(RetriedCall, grpc.aio.UnaryUnaryCall[Any, Any]):
    def __init__(self, host: AioPlacement, inv: Invocation, policy: HedgingPolicy) -> None:
        self._plan = HedgePlan(policy, throttle=host.ctx.throttle, deadline=inv.deadline)
        self._rpcs: dict[int, Any] = {}      # attempt number -> its grpc.aio call
        super().__init__(host, inv)

    def _placed(self, address: str) -> None:
        self._plan.tried.append(address)

    def _retry_delay(self) -> float:
        return self._plan.retry_delay

    async def _attempt(self, n: int) -> tuple[Any, Any]:
        metadata = attempt_metadata(self._inv.metadata, n)
        rpc = await self._place(metadata, frozenset(self._plan.tried), self._inv.request)
        self._rpcs[n] = rpc
        return rpc, await rpc

    async def _drive(self) -> Any:
        plan, loop = self._plan, asyncio.get_running_loop()
        pending: dict[asyncio.Task[tuple[Any, Any]], int] = {}
        results: dict[int, tuple[Any, Any]] = {}
        errors: dict[int, BaseException] = {}
        timer_at: float | None = None
        armed = 0
        actions: list[Action] = plan.start()
        try:
            while True:
                for action in actions:
                    if isinstance(action, Send):
                        task = loop.create_task(self._attempt(action.n))
                        task.add_done_callback(_retrieve)
                        pending[task] = action.n
                        self._previous = plan.previous
                    elif isinstance(action, Arm):
                        timer_at, armed = loop.time() + action.delay, action.seq
                    elif isinstance(action, Win):
                        rpc, response = results[action.n]
                        self._attempt_started(rpc)
                        return response
                    else:
                        if action.n is None:
                            raise aio_error("UNAVAILABLE", "no hedged attempt could be sent")
                        self._rpc = self._rpcs.get(action.n)
                        raise errors[action.n]
                actions = []
                timeout = None if timer_at is None else max(timer_at - loop.time(), 0.0)
                if pending:
                    done, _ = await asyncio.wait(pending, timeout=timeout,
                                                 return_when=asyncio.FIRST_COMPLETED)
                else:
                    await asyncio.sleep(timeout or 0.0)
                    done = set()
                if not done:
                    timer_at = None
                    actions = plan.timer_fired(armed)
                    continue
                for task in done:
                    n = pending.pop(task)
                    error = task.exception()
                    if error is None:
                        results[n] = task.result()
                        actions += plan.ended(n, "OK")
                        continue
                    code = code_name(error)
                    if code is None:        # not an RPC outcome: a bug, not a failure
                        raise error
                    errors[n] = error
                    trailing = error.trailing_metadata() if isinstance(
                        error, grpc.aio.AioRpcError) else ()
                    actions += plan.ended(n, code, trailing)
        finally:
            plan.cancel()
            for task in pending:
                task.cancel()
            for rpc in self._rpcs.values():
                if not rpc.done():
                    rpc.cancel()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._task.__await__()


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark an attempt's failure as retrieved (attempts that lost are never awaited)."""
    if not task.cancelled():
        task.exception()
