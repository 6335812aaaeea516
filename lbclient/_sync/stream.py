"""Sync response streams (server-streaming and bidi) that are more than one grpc call:
waiting for an endpoint, or retried under a ``retryPolicy``.

:class:`ResponseStream` is returned at once; its first attempt is placed through
:class:`~lbclient._sync.picking.Placement` (queued while no endpoint can take it), and
reading waits for it (bounded: the placement fails at the deadline).

Retries (gRFC A6): a call is committed once response headers arrive; gRPC servers send
them with the first message, so a stream is retried only until its first message has
been received (or ``initial_metadata()`` returned while the attempt was still running).
From then on the attempt is the call. Retries are decided by the reader: when reading
the current attempt raises before its first message, the plan decides and the reader's
thread sleeps the backoff (woken by ``cancel()``) and starts the next attempt - this is
what makes "first message received" exact, since grpc hands over every message an
attempt received before it raises that attempt's error. ``code()``, ``details()``,
``trailing_metadata()`` and the ``grpc.Future`` methods first settle the call the same
way (keeping a first message for the next read). ``add_callback`` callbacks run once the
final attempt has ended. A bidi call's requests are replayed from a
:class:`~lbclient._sync.replay.SyncReplay`, which never reads the caller's iterator
under a lock the response path takes (ping-pong stays in lockstep).

Threading: reading and settling are serialised by one lock; ``cancel()`` takes none.
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
from .replay import SyncReplay, SyncReplayView

log = logging.getLogger("lbclient.retry")


class ResponseStream(AttemptTelemetry, grpc.RpcError, grpc.Call, FutureBase):
    """A response iterator that is also a ``grpc.Call`` and ``grpc.Future`` (as grpc's own
    ``_MultiThreadedRendezvous``); a failed read raises the stream itself. ``repicked``:
    transparent retries made before it (the caller's pick went to a removed endpoint)."""

    def __init__(self, host: Placement, inv: Invocation, plan: RetryPlan | None = None,
                 replay: SyncReplay | None = None, repicked: int = 0) -> None:
        super().__init__()
        if repicked:
            self._transparent = repicked
        self._host = host
        self._inv = inv
        self._plan = plan
        self._replay = replay
        self._view: SyncReplayView | None = None
        self._lock = threading.RLock()
        self._rpc: Any = None          # the current attempt's call (or LocalRpcError)
        self._placed = threading.Event()
        self._cancel_pick: Callable[[], bool] | None = None
        self._peeked: list[Any] = []
        self._final = plan is None     # the current attempt is the call's last
        self._accounted = plan is None  # its outcome was given to the throttle
        self._cancelled = False
        self._wake = threading.Event()
        # add_callback callbacks wait here until the final attempt is known, then go to
        # it (grpc runs them). Their own lock: never wait for a reader blocked in grpc.
        self._callbacks: list[Callable[[], None]] = []
        self._cb_lock = threading.Lock()

    def start(self) -> ResponseStream:
        self._launch()
        return self

    # ------------------------------------------------------------------ attempts
    def _launch(self) -> None:
        inv, plan = self._inv, self._plan
        self._placed.clear()
        request, metadata = inv.request, inv.metadata
        if plan is not None:
            if self._replay is not None:
                self._view = self._replay.view()
                request = self._view
            metadata = plan.start_attempt(inv.metadata)
        exclude = plan.exclude() if plan is not None else frozenset()
        info = pick_info(inv.site, metadata, exclude)

        def placed(result: PickResult) -> None:
            self._start(result, request, metadata)

        try:
            result = self._host.ctx.balancer.picker.pick(info)
        except PickError as exc:
            self._cancel_pick = self._host.later(info, exc, inv.deadline,
                                                 inv.wait_for_ready, placed, self._set_rpc)
            return
        placed(result)

    def _start(self, result: PickResult, request: Any, metadata: Any) -> None:
        inv, plan = self._inv, self._plan
        if plan is not None:
            plan.placed(result.candidate.address)
        try:
            started = start(self._host, inv.site, result, "stream", request,
                            remaining(inv.deadline), metadata, inv.credentials,
                            inv.wait_for_ready, inv.compression)
        except Exception as exc:
            self._set_rpc(LocalRpcError(grpc.StatusCode.UNKNOWN,
                                        f"attempt could not start: {exc}"))
            return
        if started is None:        # the endpoint was removed meanwhile: pick again
            self._transparent += 1     # (a transparent retry)
            if plan is not None:
                plan.attempts -= 1
            self._launch()
            return
        self._set_rpc(started[0])

    def _set_rpc(self, rpc: Any) -> None:
        self._rpc = rpc
        self._placed.set()
        if self._cancelled:
            rpc.cancel()
        if self._final:
            self._hand_callbacks()

    def _current(self) -> Any:
        """The current attempt's call, once placed (the placement ends by the deadline;
        a cancel ends the wait at once)."""
        while not self._placed.wait(0.25):
            if self._cancelled:
                cancel = self._cancel_pick
                if cancel is not None and cancel():
                    self._set_rpc(LocalRpcError(grpc.StatusCode.CANCELLED,
                                                CANCELLED_DETAILS))
        return self._rpc

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> ResponseStream:
        return self

    def __next__(self) -> Any:
        with self._lock:
            if self._peeked:
                return self._peeked.pop()
            return self._read()

    next = __next__

    def _read(self) -> Any:
        while True:
            rpc = self._current()
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
        plan = self._plan
        if self._cancelled or plan is None:
            return False
        replay = self._replay
        delay = plan.failed(code_of(error), metadata_of(error)[0],
                            closed=self._host.ctx.closed,
                            replayable=replay is None or not replay.committed)
        self._accounted = True
        if delay is None:
            return False
        if delay > 0:
            self._wake.wait(delay)
        if self._cancelled:   # cancelled during the backoff
            self._rpc = LocalRpcError(grpc.StatusCode.CANCELLED, CANCELLED_DETAILS)
            return False
        if self._host.ctx.closed:
            self._rpc = self._host.closed_error()
            return False
        self._accounted = False
        self._launch()
        return True

    def _account(self, error: BaseException | None) -> None:
        """Give the final attempt's outcome to the throttle, once."""
        if self._accounted or self._cancelled or self._plan is None:
            return
        self._accounted = True
        if error is None:
            self._plan.final_outcome("OK")
        else:
            self._plan.final_outcome(code_of(error), metadata_of(error)[0])

    def _commit(self) -> None:
        plan = self._plan
        if plan is not None:
            plan.committed = True
        if self._replay is not None:
            self._replay.commit(self._view)
        self._mark_final()

    def _mark_final(self) -> None:
        if self._plan is not None:     # no more retries: give back one it holds (budgets)
            self._plan.ended()
        if self._final:
            return
        self._final = True
        self._hand_callbacks()

    def _hand_callbacks(self) -> None:
        """The current attempt is the call's last: give it the waiting callbacks. (No
        callback of ours stays on it, so an abandoned stream can still be collected,
        which is how grpc cancels it.)"""
        rpc = self._rpc
        if rpc is None:
            return
        with self._cb_lock:
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            if not rpc.add_callback(callback):
                _run(callback)
        if self._replay is not None:
            replay = self._replay
            if not rpc.add_callback(replay.release):
                replay.release()

    def _settle(self) -> None:
        """Read on until the call is committed or finished (keeping a first message).
        Once the final attempt is known (it never changes again) nothing is read and no
        lock is taken: ``add_callback`` callbacks run on grpc's channel thread, which a
        reader blocked under the lock waits for, and they may ask ``code()``."""
        if self._final and self._rpc is not None:
            return
        with self._lock:
            if (self._final and self._rpc is not None) or self._peeked:
                return
            try:
                self._peeked.append(self._read())
            except (StopIteration, grpc.RpcError):
                pass

    # ------------------------------------------------------------------ grpc.Call
    def initial_metadata(self) -> Any:
        with self._lock:
            rpc = self._current()
            if not self._final:
                metadata = rpc.initial_metadata()
                if rpc.is_active():    # headers arrived on a live attempt: committed
                    self._commit()
                    return metadata
                self._settle()
            return self._rpc.initial_metadata()

    def trailing_metadata(self) -> Any:
        self._settle()
        previous = self._plan.previous if self._plan is not None else 0
        return add_attempts_trailer(self._current().trailing_metadata(), previous)

    def code(self) -> Any:
        self._settle()
        return self._current().code()

    def details(self) -> Any:
        self._settle()
        return self._current().details()

    def debug_error_string(self) -> str:
        self._settle()
        fn = getattr(self._current(), "debug_error_string", None)
        return fn() if fn is not None else ""

    @property
    def previous_rpc_attempts(self) -> int:
        return self._plan.previous if self._plan is not None else 0

    def _retry_delay(self) -> float:
        return self._plan.retry_delay if self._plan is not None else 0.0

    # ------------------------------------------------------------------ grpc.RpcContext
    def is_active(self) -> bool:
        rpc = self._rpc
        if rpc is None:
            return not self._cancelled
        return not self._final or bool(rpc.is_active())

    def time_remaining(self) -> float | None:  # type: ignore[override]  # grpc: None too
        deadline = self._inv.deadline
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)

    def cancel(self) -> bool:
        if not self.is_active():
            return False
        self._cancelled = True
        self._wake.set()
        cancel = self._cancel_pick
        if self._rpc is None and cancel is not None and cancel():
            self._set_rpc(LocalRpcError(grpc.StatusCode.CANCELLED, CANCELLED_DETAILS))
            return True
        rpc = self._rpc
        if rpc is not None:
            rpc.cancel()
        return True

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._cb_lock:
            if not self._final or self._rpc is None:
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
            return self._current().result(timeout)
        except grpc.RpcError:
            raise self from None

    def exception(self, timeout: float | None = None) -> Any:
        self._settle()
        return self if self._current().exception(timeout) is not None else None

    def traceback(self, timeout: float | None = None) -> Any:
        self._settle()
        return self._current().traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        if not self.add_callback(lambda: fn(self)):
            fn(self)

    def __str__(self) -> str:
        attempts = self._plan.attempts if self._plan is not None else 1
        return f"<{type(self).__name__} attempt {attempts} final={self._final}: {self._rpc}>"

    __repr__ = __str__


def _run(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        log.exception("stream callback failed")
