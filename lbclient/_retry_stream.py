"""Response streams (server-streaming and bidi) with a retryPolicy.

gRFC A6 commits a call once response headers arrive; gRPC servers send them with the
first message, so here a stream is retried only until its first response message has
been received (or ``initial_metadata()`` returned while the attempt was still running).
From then on the attempt is the call: later failures are the caller's. A bidi call's
requests are replayed from a :class:`~lbclient._replay.RequestReplay` (256 KiB).

Retries are decided lazily, by the reader: when reading the current attempt raises
before its first message, the :class:`~lbclient._retry_state.CallRetry` decides and the
reader's thread sleeps the backoff (woken by ``cancel()``) and starts the next attempt.
This is what makes "first message received" exact: grpc hands over every message an
attempt received before it raises that attempt's error. ``code()``, ``details()``,
``trailing_metadata()`` and the ``grpc.Future`` methods first settle the call the same
way (keeping a first message for the next read). ``add_callback`` callbacks run once the
final attempt has ended; an attempt that failed before its first message is only
judged final when the stream is read or settled.

Threading: reading and settling are serialised by one lock; ``cancel()`` takes no lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from ._retry_call import add_attempts_trailer
from ._retry_future import CANCELLED_DETAILS
from ._rpc_error import LocalRpcError

if TYPE_CHECKING:
    from ._retry import Retrier
    from ._retry_state import CallRetry, Invocation

log = logging.getLogger("lbclient.retry")


class RetryingStream(grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[misc]
    """A response iterator that is also a ``grpc.Call`` and ``grpc.Future`` (as grpc's
    own ``_MultiThreadedRendezvous``); a failed read raises the stream itself."""

    def __init__(self, retrier: Retrier, inv: Invocation, ctl: CallRetry) -> None:
        super().__init__()
        self._retrier = retrier
        self._inv = inv
        self._ctl = ctl
        self._lock = threading.RLock()
        self._rpc: Any = None
        self._peeked: list[Any] = []
        self._final = False        # the current attempt is the call's last
        self._accounted = False    # its outcome was given to the throttle
        self._cancelled = False
        self._wake = threading.Event()
        # add_callback callbacks wait here until the final attempt is known, then go to
        # it (grpc runs them). Their own lock: never wait for a reader blocked in grpc.
        self._callbacks: list[Callable[[], None]] = []
        self._cb_lock = threading.Lock()

    def start(self) -> RetryingStream:
        self._launch(first=True)
        return self

    def _launch(self, first: bool = False) -> None:
        ctl, inv = self._ctl, self._inv
        md = ctl.begin_attempt(inv.metadata)
        call = inv.attempt("__call__", ctl.request(inv.request), md)
        try:
            rpc = self._retrier.invoker.start_async(
                inv.args, md, inv.deadline, inv.wait_for_ready, ctl.exclude(), call,
                ctl.tried.append)
        except grpc.RpcError as exc:   # a LocalRpcError: iterating it raises it
            rpc = exc
        except Exception as exc:
            if first:
                raise
            rpc = LocalRpcError(grpc.StatusCode.UNKNOWN, f"retry attempt could not start: {exc}")
        self._rpc = rpc
        if self._cancelled:
            rpc.cancel()

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> RetryingStream:
        return self

    def __next__(self) -> Any:
        with self._lock:
            if self._peeked:
                return self._peeked.pop()
            return self._read()

    next = __next__

    def _read(self) -> Any:
        while True:
            rpc = self._rpc
            try:
                message = next(rpc)
            except StopIteration:
                self._account(None)
                self._mark_final()
                raise
            except grpc.RpcError as exc:
                if not self._final and self._retry(exc):
                    continue
                self._account(exc)
                self._mark_final()
                raise self from None
            if not self._final:
                self._commit()
            return message

    def _retry(self, error: grpc.RpcError) -> bool:
        ctl = self._ctl
        if self._cancelled:
            return False
        ctl.record(error)
        delay = ctl.decide()
        self._accounted = True
        if delay is None:
            return False
        if delay > 0:
            self._wake.wait(delay)
        if self._cancelled:   # cancelled during the backoff
            self._rpc = LocalRpcError(grpc.StatusCode.CANCELLED, CANCELLED_DETAILS)
            return False
        self._accounted = False
        ctl.next_attempt()
        self._launch()
        return True

    def _account(self, error: BaseException | None) -> None:
        """Give the final attempt's outcome to the throttle, once."""
        if self._accounted or self._cancelled:
            return
        self._accounted = True
        self._ctl.record(error)
        self._ctl.decide()

    def _commit(self) -> None:
        ctl = self._ctl
        ctl.committed = True
        if ctl.replay is not None and ctl.view is not None:
            ctl.replay.commit(ctl.view)
        self._mark_final()

    def _mark_final(self) -> None:
        """The current attempt is the call's last: hand it the waiting callbacks. (No
        callback of ours is left on it, so an abandoned stream can still be collected,
        which is how grpc cancels it.)"""
        with self._cb_lock:
            if self._final:
                return
            self._final = True
            callbacks, self._callbacks = self._callbacks, []
        rpc = self._rpc
        for callback in callbacks:
            if not rpc.add_callback(callback):
                _run(callback)

    def _settle(self) -> None:
        """Read on until the call is committed or finished (keeping a first message)."""
        with self._lock:
            if self._final or self._peeked:
                return
            try:
                self._peeked.append(self._read())
            except (StopIteration, grpc.RpcError):
                pass

    # ------------------------------------------------------------------ grpc.Call
    def initial_metadata(self) -> Any:
        with self._lock:
            if not self._final:
                rpc = self._rpc
                metadata = rpc.initial_metadata()
                if rpc.is_active():    # headers arrived on a live attempt: committed
                    self._commit()
                    return metadata
                self._settle()
            return self._rpc.initial_metadata()

    def trailing_metadata(self) -> Any:
        self._settle()
        return add_attempts_trailer(self._rpc.trailing_metadata(), self._ctl.previous)

    def code(self) -> Any:
        self._settle()
        return self._rpc.code()

    def details(self) -> Any:
        self._settle()
        return self._rpc.details()

    def debug_error_string(self) -> str:
        self._settle()
        fn = getattr(self._rpc, "debug_error_string", None)
        return fn() if fn is not None else ""

    @property
    def previous_rpc_attempts(self) -> int:
        return self._ctl.previous

    # ------------------------------------------------------------------ grpc.RpcContext
    def is_active(self) -> bool:
        return not self._final or bool(self._rpc.is_active())

    def time_remaining(self) -> float | None:
        deadline = self._inv.deadline
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)

    def cancel(self) -> bool:
        self._cancelled = True
        self._wake.set()
        rpc = self._rpc
        if rpc is not None:
            rpc.cancel()
        return True

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._cb_lock:
            if not self._final:
                self._callbacks.append(callback)
                return True
        return bool(self._rpc.add_callback(callback))

    # ------------------------------------------------------------------ grpc.Future
    def cancelled(self) -> bool:
        return self._cancelled and not self.is_active()

    def running(self) -> bool:
        return self.is_active()

    def done(self) -> bool:
        return not self.is_active()

    def result(self, timeout: float | None = None) -> Any:
        self._settle()
        try:
            return self._rpc.result(timeout)
        except grpc.RpcError:
            raise self from None

    def exception(self, timeout: float | None = None) -> Any:
        self._settle()
        return self if self._rpc.exception(timeout) is not None else None

    def traceback(self, timeout: float | None = None) -> Any:
        self._settle()
        return self._rpc.traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        if not self.add_callback(lambda: fn(self)):
            fn(self)

    def __str__(self) -> str:
        return (f"<{type(self).__name__} attempt {self._ctl.attempts} "
                f"final={self._final}: {self._rpc}>")

    __repr__ = __str__


def _run(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        log.exception("stream callback failed")
