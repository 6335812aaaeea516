"""gRFC A6 hedging of sync unary-unary calls: :class:`HedgingFuture` carries out a
:class:`~lbclient._core.hedging.HedgePlan`'s actions.

``Send(n)`` places attempt ``n`` (to an endpoint this call has not tried yet, when one
is eligible; queued when none can take it yet) as a grpc future, picked again (at most
``REPICKS`` times: transparent retries) when the endpoint was removed before it started;
``Arm(d)`` (re)starts the channel timer that tells the plan the hedging delay passed;
``Win``/``Fail`` finish the call with that attempt's outcome and cancel every other
attempt. The plan is not thread-safe: its events are fed under ``_plan_lock``; actions
run outside it (attempts end on grpc's threads, timers fire on the scheduler), and an
attempt that starts after the call finished is cancelled at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc

from .._core.attempt import REPICKS
from .._core.deadline import remaining
from .._core.hedging import Action, Arm, HedgePlan, Send, Win
from .._core.kinds import Invocation
from .._core.metadata import attempt_metadata
from ..balancer.picker import PickError, PickResult
from ..method_config import HedgingPolicy
from .attempt import pick_info, start
from .errors import LocalRpcError, code_of, metadata_of
from .future import CallFuture
from .picking import Placement


class HedgingFuture(CallFuture):
    def __init__(self, host: Placement, inv: Invocation, policy: HedgingPolicy,
                 repicks: list[str] | None = None) -> None:
        super().__init__(inv.deadline)
        self._repicks = repicks      # also told of each transparent retry (its address)
        self._host = host
        self._inv = inv
        self._plan = HedgePlan(policy, throttle=host.ctx.throttle, deadline=inv.deadline)
        self._plan_lock = threading.Lock()
        self._rpcs: dict[int, Any] = {}          # attempt -> its grpc future, while live
        self._outcomes: dict[int, Any] = {}      # attempt -> its finished call or error
        self._pending: dict[int, Callable[[], bool]] = {}   # attempts waiting for a pick
        self._timer: Callable[[], None] | None = None
        self._timer_seq = 0

    def start(self) -> HedgingFuture:
        self._step(self._plan.start)
        return self

    def _previous_attempts(self) -> int:
        return self._plan.previous

    def _retry_delay(self) -> float:
        return self._plan.retry_delay

    # ------------------------------------------------------------------ plan events
    def _step(self, event: Callable[..., list[Action]], *args: Any) -> None:
        with self._plan_lock:
            actions = event(*args)
        for action in actions:
            if isinstance(action, Send):
                self._send(action.n)
            elif isinstance(action, Arm):
                self._arm(action)
            elif isinstance(action, Win):
                self._win(action.n)
            else:
                self._fail(action.n)

    def _ended(self, n: int, outcome: Any) -> None:
        with self._lock:
            self._rpcs.pop(n, None)
            self._outcomes[n] = outcome
        self._step(self._plan.ended, n, code_of(outcome), metadata_of(outcome)[0])

    # ------------------------------------------------------------------ actions
    def _send(self, n: int, repick: int = 0) -> None:
        if self.done():
            return
        inv = self._inv
        metadata = attempt_metadata(inv.metadata, n)
        info = pick_info(inv.site, metadata, frozenset(self._plan.tried))

        def placed(result: PickResult) -> None:
            with self._lock:
                self._pending.pop(n, None)
            self._start(n, result, metadata, repick)

        def failed(error: LocalRpcError) -> None:
            with self._lock:
                self._pending.pop(n, None)
            self._ended(n, error)

        try:
            result = self._host.ctx.balancer.picker.pick(info)
        except PickError as exc:
            cancel = self._host.later(info, exc, inv.deadline, inv.wait_for_ready,
                                      placed, failed)
            with self._lock:
                if n not in self._outcomes:
                    self._pending[n] = cancel
            return
        self._start(n, result, metadata, repick)

    def _start(self, n: int, result: PickResult, metadata: Any, repick: int = 0) -> None:
        inv = self._inv
        with self._plan_lock:
            self._plan.tried.append(result.candidate.address)
        try:
            started = start(self._host, inv.site, result, "future", inv.request,
                            remaining(inv.deadline), metadata, inv.credentials,
                            inv.wait_for_ready, inv.compression)
        except Exception as exc:
            self._ended(n, LocalRpcError(grpc.StatusCode.UNKNOWN,
                                         f"hedged attempt could not start: {exc}"))
            return
        if started is None:       # the endpoint was removed meanwhile: pick again
            if repick < REPICKS - 1:
                with self._lock:
                    self._transparent += 1
                    if self._repicks is not None:
                        self._repicks.append(result.candidate.address)
                self._send(n, repick + 1)
                return
            self._ended(n, LocalRpcError(grpc.StatusCode.UNAVAILABLE,
                                         "endpoint removed before the attempt started"))
            return
        rpc, _ = started
        with self._lock:
            live = not self._finished.is_set()
            if live:
                self._rpcs[n] = rpc
        if not live:
            rpc.cancel()
            return
        rpc.add_done_callback(lambda done: self._ended(n, done))

    def _arm(self, arm: Arm) -> None:
        if self.done():
            return
        cancel = self._host.after(arm.delay,
                                  lambda: self._step(self._plan.timer_fired, arm.seq),
                                  self._abort_closed)
        with self._lock:
            if arm.seq < self._timer_seq:      # a newer Arm came first (another thread)
                previous: Callable[[], None] | None = cancel
            else:
                previous, self._timer, self._timer_seq = self._timer, cancel, arm.seq
        if previous is not None:
            previous()

    def _win(self, n: int) -> None:
        rpc = self._outcomes[n]
        try:
            response = rpc.result()
        except Exception as exc:      # a deserializer error surfaces here
            self._fail_with(LocalRpcError(grpc.StatusCode.INTERNAL, str(exc)))
            return
        if self._finish(rpc, response, previous=self._plan.previous):
            self._on_cancel()

    def _fail(self, n: int | None) -> None:
        if n is None:
            self._fail_with(LocalRpcError(grpc.StatusCode.UNAVAILABLE,
                                          "no hedged attempt could be sent"))
        else:
            self._fail_with(self._outcomes[n])

    def _fail_with(self, error: Any) -> None:
        if self._finish(error, failed=True, previous=self._plan.previous):
            self._on_cancel()

    def _abort_closed(self) -> None:
        self._fail_with(self._host.closed_error())

    def _on_cancel(self) -> None:
        with self._plan_lock:
            self._plan.cancel()
        with self._lock:
            timer, self._timer = self._timer, None
            rpcs = list(self._rpcs.values())
            pending = list(self._pending.values())
            self._pending.clear()
        if timer is not None:
            timer()
        for cancel in pending:
            cancel()
        for rpc in rpcs:
            rpc.cancel()
