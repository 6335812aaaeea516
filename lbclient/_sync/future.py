"""Unary-response sync calls made of more than one step, as one ``grpc.Future`` +
``grpc.Call``: a call that must wait for an endpoint, a retried call, a hedged call.

:class:`CallFuture` holds the outcome and implements grpc's interfaces, as grpc's own
futures behave: ``result()`` raises the future itself when the call failed (it is an
RpcError), a cancelled future raises ``grpc.FutureCancelledError``, ``cancel()`` is True
unless the call already ended. :class:`RetryingFuture` runs one attempt after another
(at least one; more under a :class:`~lbclient._core.retry_plan.RetryPlan`): each
attempt is placed through :class:`~lbclient._sync.picking.Placement` (so ``future()``
returns at once even with ``wait_for_ready``), runs as a grpc future, and when it fails
the plan's backoff runs on the channel's timer before the next one. Hedging lives in
``hedge``.

Threading: attempts end on grpc's callback threads and placements happen on whichever
thread publishes a picker; ``_finish`` runs once, and callbacks run outside the lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from .._core.deadline import remaining
from .._core.kinds import Invocation
from .._core.metadata import add_attempts_trailer
from .._core.observe import AttemptTelemetry
from .._core.retry_plan import RetryPlan
from ..balancer.picker import PickError, PickResult
from .attempt import pick_info, start
from .errors import CANCELLED_DETAILS, FutureBase, LocalRpcError, code_of, metadata_of
from .picking import Placement
from .replay import SyncReplay

log = logging.getLogger("lbclient.retry")


class CallFuture(AttemptTelemetry, grpc.RpcError, grpc.Call, FutureBase):
    """The outcome half: set once by ``_finish``; everything else waits for it."""

    def __init__(self, deadline: float | None) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._deadline = deadline
        self._final: Any = None         # the last attempt's grpc.Call / RpcError
        self._response: Any = None
        self._failed = False
        self._cancelled = False
        self._previous = 0              # attempts before the final one
        self._callbacks: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ subclass API
    def _finish(self, final: Any, response: Any = None, *, failed: bool = False,
                cancelled: bool = False, previous: int = 0) -> bool:
        with self._lock:
            if self._finished.is_set():
                return False
            self._final, self._response, self._failed = final, response, failed
            self._cancelled, self._previous = cancelled, previous
            self._finished.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("future callback failed")
        return True

    def _on_cancel(self) -> None:
        """Cancel whatever is in flight or scheduled (called after the future finished)."""

    def _previous_attempts(self) -> int:
        return 0

    def blocking_result(self) -> tuple[Any, Any]:
        """Wait for the outcome as a blocking call does: ``(response, grpc.Call)`` or raise
        the final attempt's error (both reporting earlier attempts). An interrupt while
        waiting (e.g. KeyboardInterrupt) cancels the call."""
        try:
            self._finished.wait()
        except BaseException:
            self.cancel()
            raise
        previous = self._previous
        final = with_attempts(self._final, previous,
                              self._retry_delay() if previous else 0.0)
        if self._failed:
            if final is self._final:
                raise final
            raise final from None
        return self._response, final

    def _wait(self, timeout: float | None) -> None:
        if not self._finished.wait(timeout):
            raise grpc.FutureTimeoutError()

    # ------------------------------------------------------------------ grpc.Future
    def cancel(self) -> bool:
        cancelled = self._finish(LocalRpcError(grpc.StatusCode.CANCELLED, CANCELLED_DETAILS),
                                 failed=True, cancelled=True,
                                 previous=self._previous_attempts())
        if cancelled:
            self._on_cancel()
        return cancelled

    def cancelled(self) -> bool:
        return self._finished.is_set() and self._cancelled

    def running(self) -> bool:
        return not self._finished.is_set()

    def done(self) -> bool:
        return self._finished.is_set()

    def result(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        if self._cancelled:
            raise grpc.FutureCancelledError()
        if self._failed:
            raise self
        return self._response

    def exception(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        if self._cancelled:
            raise grpc.FutureCancelledError()
        return self if self._failed else None

    def traceback(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        if self._cancelled:
            raise grpc.FutureCancelledError()
        return self.__traceback__ if self._failed else None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        with self._lock:
            if not self._finished.is_set():
                self._callbacks.append(lambda: fn(self))
                return
        fn(self)

    # ------------------------------------------------------------------ grpc.Call
    def initial_metadata(self) -> Any:
        self._wait(None)
        return self._final.initial_metadata()

    def trailing_metadata(self) -> Any:
        self._wait(None)
        return add_attempts_trailer(self._final.trailing_metadata(), self._previous)

    def code(self) -> grpc.StatusCode:
        self._wait(None)
        return grpc.StatusCode[code_of(self._final)]

    def details(self) -> Any:
        self._wait(None)
        return self._final.details()

    def debug_error_string(self) -> str:
        self._wait(None)
        fn = getattr(self._final, "debug_error_string", None)
        return fn() if fn is not None else ""

    # ------------------------------------------------------------------ grpc.RpcContext
    def is_active(self) -> bool:
        return not self._finished.is_set()

    def time_remaining(self) -> float | None:  # type: ignore[override]  # grpc: None too
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if self._finished.is_set():
                return False
            self._callbacks.append(callback)
            return True

    def __str__(self) -> str:
        if not self._finished.is_set():
            return f"<{type(self).__name__} in progress>"
        state = "failed" if self._failed else "succeeded"
        return (f"<{type(self).__name__} {state} after {self._previous + 1} attempt(s): "
                f"{self._final}>")

    __repr__ = __str__


class RetryingFuture(CallFuture):
    """A unary-response call (unary-unary or client-streaming) as a future: one attempt,
    or several under ``plan``; ``replay`` holds a retried request stream; ``repicked``:
    transparent retries made before it (the caller's pick went to a removed endpoint)."""

    def __init__(self, host: Placement, inv: Invocation, plan: RetryPlan | None = None,
                 replay: SyncReplay | None = None, repicked: int = 0) -> None:
        super().__init__(inv.deadline)
        if repicked:
            self._transparent = repicked
        self._host = host
        self._inv = inv
        self._plan = plan
        self._replay = replay
        self._request: Any = inv.request
        self._metadata: Any = inv.metadata
        self._rpc: Any = None
        self._last: Any = None          # the last failed attempt's call or error
        self._cancel_pending: Callable[[], Any] | None = None
        if replay is not None:
            self.add_callback(replay.release)
        if plan is not None:              # the call is over: a retry it holds goes back
            self.add_callback(plan.ended)   # (retry budgets), also when cancelled

    def start(self) -> RetryingFuture:
        """Start the first attempt (or queue it for an endpoint) and return at once."""
        self._launch()
        return self

    def _previous_attempts(self) -> int:
        return self._plan.previous if self._plan is not None else 0

    def _retry_delay(self) -> float:
        return self._plan.retry_delay if self._plan is not None else 0.0

    def _launch(self) -> None:
        if self.done():
            return
        plan, inv = self._plan, self._inv
        if plan is not None:
            if self._replay is not None:
                view = self._replay.view()
                if view is None:      # committed meanwhile: the last failure is final
                    self._finish(self._last, failed=True, previous=plan.previous)
                    return
                self._request = view
            self._metadata = plan.start_attempt(inv.metadata)
        exclude = plan.exclude() if plan is not None else frozenset()
        info = pick_info(inv.site, self._metadata, exclude)
        try:
            result = self._host.ctx.balancer.picker.pick(info)
        except PickError as exc:
            cancel = self._host.later(info, exc, inv.deadline, inv.wait_for_ready,
                                      self._placed, self._attempt_failed)
            with self._lock:
                self._cancel_pending = cancel
            return
        self._placed(result)

    def _placed(self, result: PickResult) -> None:
        inv, plan = self._inv, self._plan
        if self.done():
            if result.counted:
                result.candidate.stats.discard()
            return
        timeout = remaining(inv.deadline)
        if plan is not None:
            plan.placed(result.candidate.address)
            timeout = plan.attempt_timeout(timeout)
        try:
            started = start(self._host, inv.site, result, "future", self._request, timeout,
                            self._metadata, inv.credentials, inv.wait_for_ready,
                            inv.compression)
        except Exception as exc:
            self._finish(LocalRpcError(grpc.StatusCode.UNKNOWN, f"attempt could not start: "
                                                                f"{exc}"),
                         failed=True, previous=self._previous_attempts())
            return
        if started is None:           # the endpoint was removed meanwhile: pick again
            self._relaunch_same()
            return
        rpc, _ = started
        with self._lock:
            self._rpc = rpc
            cancelled = self._cancelled
        if cancelled:
            rpc.cancel()
            return
        rpc.add_done_callback(self._ended)

    def _relaunch_same(self) -> None:
        self._transparent += 1        # a transparent retry
        plan = self._plan
        if plan is not None:
            plan.attempts -= 1        # the attempt never started: not an attempt
        self._host.after(0.0, self._launch, self._abort_closed)

    def _abort_closed(self) -> None:
        self._finish(self._host.closed_error(), failed=True,
                     previous=self._previous_attempts())

    def _attempt_failed(self, error: LocalRpcError) -> None:
        """No endpoint could take the attempt: an attempt outcome like any other."""
        self._ended(error)

    def _ended(self, rpc: Any) -> None:
        if self.done():
            return
        plan = self._plan
        code = code_of(rpc)
        if code == "OK":
            try:
                response = rpc.result()
            except Exception as exc:  # a deserializer error surfaces here
                self._finish(LocalRpcError(grpc.StatusCode.INTERNAL, str(exc)), failed=True,
                             previous=self._previous_attempts())
                return
            if plan is not None:
                plan.succeeded()
            self._finish(rpc, response, previous=self._previous_attempts())
            return
        delay = None
        if plan is not None:
            trailing, _ = metadata_of(rpc)
            delay = plan.failed(code, trailing, closed=self._host.ctx.closed,
                                replayable=self._replay is None or not self._replay.committed)
        if delay is None:
            self._finish(rpc, failed=True, previous=self._previous_attempts())
            return
        self._last = rpc
        cancel = self._host.after(delay, self._launch, self._abort_closed)
        with self._lock:
            self._cancel_pending = cancel

    def _on_cancel(self) -> None:
        with self._lock:
            rpc, cancel = self._rpc, self._cancel_pending
        if cancel is not None:
            cancel()
        if rpc is not None:
            rpc.cancel()


def with_attempts(call: Any, previous: int, delay: float = 0.0) -> Any:
    """``call`` reporting ``previous`` earlier attempts and ``delay`` seconds spent
    between them (unchanged when there were none)."""
    if previous <= 0 or call is None:
        return call
    if isinstance(call, grpc.RpcError):
        return RetriedRpcError(call, previous, delay)
    return RetriedCall(call, previous, delay)


class RetriedCall(grpc.Call, FutureBase):
    """The last attempt's ``grpc.Call``/``grpc.Future``, seen as the whole call's:
    everything is delegated except ``trailing_metadata()``, which also holds
    ``("grpc-previous-rpc-attempts", "N")``; ``previous_rpc_attempts`` is N and
    ``retry_delay`` the seconds spent between the attempts with none in flight."""

    def __init__(self, call: Any, previous: int, delay: float = 0.0) -> None:
        self._call = call
        self.previous_rpc_attempts = previous
        self.retry_delay = delay

    def initial_metadata(self) -> Any:
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        return add_attempts_trailer(self._call.trailing_metadata(), self.previous_rpc_attempts)

    def code(self) -> Any:
        return self._call.code()

    def details(self) -> Any:
        return self._call.details()

    def debug_error_string(self) -> str:
        fn: Callable[[], str] | None = getattr(self._call, "debug_error_string", None)
        return fn() if fn is not None else ""

    def is_active(self) -> bool:
        return bool(self._call.is_active())

    def time_remaining(self) -> Any:
        return self._call.time_remaining()

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return bool(self._call.add_callback(callback))

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def running(self) -> bool:
        return bool(self._call.running())

    def done(self) -> bool:
        return bool(self._call.done())

    def result(self, timeout: float | None = None) -> Any:
        return self._call.result(timeout)

    def exception(self, timeout: float | None = None) -> Any:
        return self._call.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        return self._call.traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._call.add_done_callback(lambda _: fn(self))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} after {self.previous_rpc_attempts} earlier " \
               f"attempt(s): {self._call!r}>"


class RetriedRpcError(grpc.RpcError, RetriedCall):  # type: ignore[misc]
    """The last attempt's error raised for the whole call (an ``RpcError`` that is also a
    ``grpc.Call`` and a completed ``grpc.Future``, as grpc's own errors are)."""

    def __init__(self, call: Any, previous: int, delay: float = 0.0) -> None:
        grpc.RpcError.__init__(self, str(call))
        RetriedCall.__init__(self, call, previous, delay)

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> Any:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return self.__traceback__

    def done(self) -> bool:
        return True

    def running(self) -> bool:
        return False

    def is_active(self) -> bool:
        return False

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def __str__(self) -> str:
        return f"{self._call}\n(after {self.previous_rpc_attempts} earlier attempt(s))"

    __repr__ = __str__
