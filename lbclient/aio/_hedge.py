"""gRFC A6 hedging for asyncio unary-unary calls (the rules of ``lbclient._hedge``).

The first attempt is sent at once; while no attempt has succeeded another is sent every
``hedgingDelay`` (to an endpoint this call has not tried yet, when one is eligible), up
to ``maxAttempts``. The first OK answer wins and the other attempts are cancelled. A
failure is judged by the shared ``judge_hedge_failure``: a code outside
``nonFatalStatusCodes`` fails the call at once; a non-fatal one sends the next hedge at
once, a pushback delays it by exactly that much or ("don't retry") stops hedging, and
the retry throttle may stop it too. Once every attempt has ended and no more may be
sent, the call fails with the last error. All attempts share the call's deadline.

The driver task waits for "an attempt ended or the next hedge is due" with
``asyncio.wait``; each attempt is a task of its own. Everything runs on the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from .._retry_call import attempt_metadata, code_name, judge_hedge_failure
from .._retry_state import Invocation
from ..method_config import HedgingPolicy
from ._attempt import aio_error
from ._retry import RetriedCall

if TYPE_CHECKING:
    from ._channel import LoadBalancedChannel


class HedgedCall(RetriedCall, grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    def __init__(self, ch: LoadBalancedChannel, inv: Invocation,
                 policy: HedgingPolicy) -> None:
        self._policy = policy
        self._tried: list[str] = []
        self._rpcs: dict[int, Any] = {}      # attempt number -> its grpc.aio call
        super().__init__(ch, inv)

    def _placed(self, address: str) -> None:
        self._tried.append(address)

    async def _attempt(self, n: int) -> tuple[Any, Any]:
        metadata = attempt_metadata(self._inv.metadata, n)
        rpc = await self._place(metadata, frozenset(self._tried), self._inv.request)
        self._rpcs[n] = rpc
        return rpc, await rpc

    async def _drive(self) -> Any:
        policy, inv = self._policy, self._inv
        loop = asyncio.get_running_loop()
        pending: dict[asyncio.Task[tuple[Any, Any]], int] = {}
        started, no_more, last_error = 0, False, None
        next_at = time.monotonic()
        try:
            while True:
                throttle = self._ch._throttle
                more = not no_more and started < policy.max_attempts
                now = time.monotonic()
                if more and now >= next_at:
                    if started and throttle is not None and not throttle.allows_retry():
                        no_more = True
                        continue
                    task = loop.create_task(self._attempt(started))
                    task.add_done_callback(_retrieve)
                    pending[task] = started
                    started += 1
                    self._previous = started - 1
                    next_at = now + policy.hedging_delay
                    continue
                if not pending and not more:
                    raise last_error if last_error is not None else aio_error(
                        grpc.StatusCode.UNAVAILABLE, "no hedged attempt could be sent")
                timeout = None
                if more:
                    timeout = max(next_at - now, 0.0)
                    if inv.deadline is not None:
                        timeout = min(timeout, max(inv.deadline - now, 0.0))
                done, _ = await asyncio.wait(pending, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    n = pending.pop(task)
                    error = task.exception()
                    if error is None:
                        rpc, response = task.result()
                        if throttle is not None:
                            throttle.record_success()
                        self._attempt_started(rpc)
                        return response
                    code = code_name(error)
                    if code is None:        # not an RPC outcome: a bug, not a failure
                        raise error
                    fatal, stop, delay = judge_hedge_failure(
                        code, error, policy.non_fatal_status_codes, throttle)
                    if fatal:
                        self._rpc = self._rpcs.get(n)
                        raise error
                    last_error, no_more = error, no_more or stop
                    next_at = time.monotonic() + (delay or 0.0)
        finally:
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
