"""Unary-response calls made of several attempts, as one ``grpc.Future`` + ``grpc.Call``.

:class:`CallFuture` holds the outcome and implements grpc's interfaces (``result()``
raises the future itself when the call failed, as grpc's own futures do; a cancelled
future raises ``grpc.FutureCancelledError``). :class:`RetryingFuture` runs gRFC A6
retries: each attempt is a grpc future on a picked endpoint; when one fails, the
call's :class:`~lbclient._retry_state.CallRetry` decides, and the next attempt starts
from the channel's timer after the backoff (hedging lives in ``_hedge``).

Threading: attempts end on grpc's callback threads, retries start on the timer thread
(or a short-lived thread when waitForReady may block the pick); ``_finish`` runs once,
under the lock, and callbacks run outside it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from ._invoke import status_of
from ._retry_call import add_attempts_trailer, with_attempts
from ._rpc_error import LocalRpcError

if TYPE_CHECKING:
    from ._retry import Retrier
    from ._retry_state import CallRetry, Invocation

log = logging.getLogger("lbclient.retry")

CANCELLED_DETAILS = "Locally cancelled by application!"


class CallFuture(grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[misc]
    """The shared outcome half: set once by ``_finish``; everything else waits for it."""

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
        final = with_attempts(self._final, self._previous)
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
        return status_of(self._final)

    def details(self) -> Any:
        self._wait(None)
        return self._final.details()

    def debug_error_string(self) -> str:
        self._wait(None)
        fn = getattr(self._final, "debug_error_string", None)
        return fn() if fn is not None else ""

    @property
    def previous_rpc_attempts(self) -> int:
        """Attempts made before the final one (0 before the call finished)."""
        return self._previous

    # ------------------------------------------------------------------ grpc.RpcContext
    def is_active(self) -> bool:
        return not self._finished.is_set()

    def time_remaining(self) -> float | None:
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
    """A unary-response call (unary-unary or client-streaming) with a retryPolicy."""

    def __init__(self, retrier: Retrier, inv: Invocation, ctl: CallRetry) -> None:
        super().__init__(inv.deadline)
        self._retrier = retrier
        self._inv = inv
        self._ctl = ctl
        self._rpc: Any = None
        self._cancel_timer: Callable[[], None] | None = None

    def start(self) -> RetryingFuture:
        """Start the first attempt on the caller's thread (a waitForReady pick blocks
        here, as without retries)."""
        self._launch(first=True)
        return self

    def _previous_attempts(self) -> int:
        return self._ctl.previous

    def _launch(self, first: bool = False) -> None:
        if self.done():
            return
        ctl, inv = self._ctl, self._inv
        md = ctl.begin_attempt(inv.metadata)
        call = inv.attempt("future", ctl.request(inv.request), md, ctl.attempt_timeout)
        try:
            rpc = self._retrier.invoker.start_async(
                inv.args, md, inv.deadline, inv.wait_for_ready, ctl.exclude(), call,
                ctl.tried.append)
        except grpc.RpcError as exc:   # no endpoint could take it: an attempt outcome
            self._ended(exc)
            return
        except Exception as exc:
            if first:
                raise
            self._finish(LocalRpcError(grpc.StatusCode.UNKNOWN,
                                       f"retry attempt could not start: {exc}"),
                         failed=True, previous=ctl.previous)
            return
        with self._lock:
            self._rpc = rpc
            cancelled = self._cancelled
        if cancelled:
            rpc.cancel()
            return
        rpc.add_done_callback(self._ended)

    def _ended(self, rpc: Any) -> None:
        if self.done():
            return
        ctl = self._ctl
        if status_of(rpc) is grpc.StatusCode.OK:
            try:
                response = rpc.result()
            except Exception as exc:  # a deserializer error surfaces here
                self._finish(LocalRpcError(grpc.StatusCode.INTERNAL, str(exc)), failed=True,
                             previous=ctl.previous)
                return
            ctl.record(None, response)
            ctl.decide()              # books the success with the throttle
            self._finish(rpc, response, previous=ctl.previous)
            return
        ctl.record(rpc)
        delay = ctl.decide()
        if delay is None:
            self._finish(rpc, failed=True, previous=ctl.previous)
            return
        ctl.next_attempt()
        cancel = self._retrier.schedule(delay, self._launch, self._abort_closed,
                                        may_block=self._inv.wait_for_ready)
        with self._lock:
            self._cancel_timer = cancel

    def _abort_closed(self) -> None:
        self._finish(LocalRpcError(grpc.StatusCode.CANCELLED, "lbclient channel is closed"),
                     failed=True, previous=self._ctl.previous)

    def _on_cancel(self) -> None:
        with self._lock:
            rpc, cancel = self._rpc, self._cancel_timer
        if cancel is not None:
            cancel()
        if rpc is not None:
            rpc.cancel()
