"""gRFC A6 hedging for unary-unary calls.

The first attempt is sent at once; while no attempt has succeeded, another is sent
every ``hedgingDelay`` (to an endpoint this call has not tried yet, when one is
eligible), up to ``maxAttempts``. The first OK answer wins and every other attempt is
cancelled. A status in ``nonFatalStatusCodes`` sends the next hedge at once (the delay
resumes after it); a ``grpc-retry-pushback-ms`` trailer delays the next hedge by exactly
that much, or stops hedging when it says "don't retry"; any other status fails the call
at once and cancels the rest. The call fails with the last non-fatal error once every
attempt has ended and no more may be sent. Hedges past the first are only sent while
the retry throttle allows retries; all attempts share the call's deadline.

Threading: attempts end on grpc's callback threads and hedges start from the channel's
timer thread (or a short-lived thread when a waitForReady pick may block); all state is
guarded by the future's lock and nothing blocks while holding it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from ._invoke import status_of
from ._retry_call import attempt_metadata, judge_hedge_failure
from ._retry_future import CallFuture
from ._rpc_error import LocalRpcError
from .method_config import HedgingPolicy

if TYPE_CHECKING:
    from ._retry import Retrier
    from ._retry_state import Invocation


class HedgingFuture(CallFuture):
    def __init__(self, retrier: Retrier, inv: Invocation, policy: HedgingPolicy) -> None:
        super().__init__(inv.deadline)
        self._retrier = retrier
        self._inv = inv
        self._policy = policy
        self._inflight: dict[int, Any] = {}   # attempt number -> grpc future (None: starting)
        self._started = 0
        self._tried: list[str] = []
        self._no_more = False                 # pushback "don't retry" or throttled
        self._last_error: Any = None
        self._cancel_timer: Callable[[], None] | None = None

    def start(self) -> HedgingFuture:
        self._send(first=True)
        return self

    def _previous_attempts(self) -> int:
        return max(self._started - 1, 0)

    # ------------------------------------------------------------------ sending
    def _send(self, first: bool = False) -> None:
        throttle = self._retrier.throttle
        with self._lock:
            if self._finished.is_set():
                return
            if (not first and throttle is not None and not throttle.allows_retry()):
                self._no_more = True
            if self._no_more or self._started >= self._policy.max_attempts:
                give_up = not self._inflight
                n = -1
            else:
                n, give_up = self._started, False
                self._started += 1
                self._inflight[n] = None
        if n < 0:
            if give_up:
                self._fail_last()
            return
        inv = self._inv
        md = attempt_metadata(inv.metadata, n)
        call = inv.attempt("future", inv.request, md)
        try:
            rpc = self._retrier.invoker.start_async(
                inv.args, md, inv.deadline, inv.wait_for_ready, frozenset(self._tried), call,
                self._tried.append)
        except grpc.RpcError as exc:  # no endpoint: this attempt's outcome
            self._ended(n, exc)
            return
        except Exception as exc:
            if first:
                raise
            self._ended(n, LocalRpcError(grpc.StatusCode.UNKNOWN,
                                         f"hedged attempt could not start: {exc}"))
            return
        with self._lock:
            live = not self._finished.is_set()
            if live:
                self._inflight[n] = rpc
        if not live:
            rpc.cancel()
            return
        self._arm(self._policy.hedging_delay)
        rpc.add_done_callback(lambda f: self._ended(n, f))

    def _arm(self, delay: float) -> None:
        """(Re)schedule the next hedge ``delay`` seconds from now (never past the
        deadline, where the attempt it sends fails at once and ends the call)."""
        deadline = self._inv.deadline
        if deadline is not None:
            delay = min(delay, max(deadline - time.monotonic(), 0.0))
        with self._lock:
            if (self._finished.is_set() or self._no_more
                    or self._started >= self._policy.max_attempts):
                return
            previous, self._cancel_timer = self._cancel_timer, None
        if previous is not None:
            previous()
        cancel = self._retrier.schedule(delay, self._send, self._abort_closed,
                                        may_block=self._inv.wait_for_ready)
        with self._lock:
            self._cancel_timer = cancel

    # ------------------------------------------------------------------ outcomes
    def _ended(self, n: int, rpc: Any) -> None:
        with self._lock:
            self._inflight.pop(n, None)
            if self._finished.is_set():
                return
        code = status_of(rpc).name
        throttle = self._retrier.throttle
        if code == "OK":
            try:
                response = rpc.result()
            except Exception as exc:
                self._fail(LocalRpcError(grpc.StatusCode.INTERNAL, str(exc)))
                return
            if throttle is not None:
                throttle.record_success()
            if self._finish(rpc, response, previous=self._previous_attempts()):
                self._on_cancel()
            return
        fatal, no_more, delay = judge_hedge_failure(
            code, rpc, self._policy.non_fatal_status_codes, throttle)
        if fatal:
            self._fail(rpc)
            return
        with self._lock:
            self._last_error = rpc
            if no_more:
                self._no_more = True
            more = not self._no_more and self._started < self._policy.max_attempts
            give_up = not more and not self._inflight
        if give_up:
            self._fail_last()
        elif more:
            self._arm(delay if delay is not None else 0.0)

    def _fail(self, error: Any) -> None:
        if self._finish(error, failed=True, previous=self._previous_attempts()):
            self._on_cancel()

    def _fail_last(self) -> None:
        with self._lock:
            error = self._last_error
        self._fail(error if error is not None else LocalRpcError(
            grpc.StatusCode.UNAVAILABLE, "no hedged attempt could be sent"))

    def _abort_closed(self) -> None:
        self._fail(LocalRpcError(grpc.StatusCode.CANCELLED, "lbclient channel is closed"))

    def _on_cancel(self) -> None:
        with self._lock:
            cancel, self._cancel_timer = self._cancel_timer, None
            rpcs = [r for r in self._inflight.values() if r is not None]
        if cancel is not None:
            cancel()
        for rpc in rpcs:
            rpc.cancel()
