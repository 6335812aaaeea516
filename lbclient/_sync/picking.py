"""Placing sync calls: pick now, or wait for a picker that can place the call.

gRPC queues a call while its channel is connecting (and a ``wait_for_ready`` call while
no endpoint can take it) until its deadline. :class:`Placement` does both kinds of
waiting for the sync drivers:

* :meth:`Placement.wait` - a blocking call waits on its own thread for the next picker
  (an Event that each change replaces, so thousands of waiting threads wake without
  contending for a lock, and each ends by its own deadline);
* :meth:`Placement.later` - a future or stream (which must return at once) is queued;
  the queue is served on the thread that publishes each new picker, and a timer on the
  channel's scheduler fails a waiter whose deadline passes.

Every failure is a :class:`~lbclient._sync.errors.LocalRpcError`: UNAVAILABLE with the
reason (``fail_now``), DEADLINE_EXCEEDED while waiting, CANCELLED once the channel closed.
"""

from __future__ import annotations

import _thread
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from .._core.context import CallContext
from .._core.deadline import remaining
from .._core.picking import CLOSED, fail_now, wait_expired
from ..balancer.picker import FailingPicker, PickError, PickInfo, PickResult
from .errors import LocalRpcError
from .scheduler import ThreadScheduler

log = logging.getLogger("lbclient.channel")

Placed = Callable[[PickResult], None]
Failed = Callable[[LocalRpcError], None]


class _Waiter:
    __slots__ = ("info", "wait_for_ready", "placed", "failed", "reason", "timer", "_once")

    def __init__(self, info: PickInfo, wait_for_ready: bool, placed: Placed,
                 failed: Failed, reason: str) -> None:
        self.info = info
        self.wait_for_ready = wait_for_ready
        self.placed = placed
        self.failed = failed
        self.reason = reason
        self.timer: Any = None
        self._once = [True]

    def claim(self) -> bool:
        """True for the one caller that gets to end this waiter."""
        try:
            self._once.pop()
        except IndexError:
            return False
        if self.timer is not None:
            self.timer.cancel()
        return True


class Placement:
    def __init__(self, ctx: CallContext, scheduler: ThreadScheduler,
                 kick: Callable[[], None]) -> None:
        self.ctx = ctx
        self.scheduler = scheduler
        self._kick = kick
        self._event = threading.Event()
        # One lock per waiting blocking call, released (= signalled) at every change
        # that may place or fail it: thousands of waiters then wake without contending
        # for a shared lock. Value: the call is wait_for_ready (a failing picker, which
        # only fails the others, leaves it asleep).
        self._sleepers: dict[Any, bool] = {}
        self._lock = threading.Lock()
        self._queue: dict[int, _Waiter] = {}
        self._timers: dict[int, tuple[Any, Callable[[], None]]] = {}
        self._ids = itertools.count()

    # ------------------------------------------------------------ balancer listener
    def changed(self) -> None:
        """A new picker (or channel state) was published: wake and serve the waiters."""
        event, self._event = self._event, threading.Event()
        event.set()
        picker = self.ctx.balancer.picker
        failing = isinstance(picker, FailingPicker) and not self.ctx.closed
        if failing and isinstance(picker, FailingPicker) and picker.queue:
            return     # still "not yet" for everyone: no waiter could be placed or failed
        # A failing picker places nobody and fails only calls that are not
        # wait_for_ready: those keep waiting undisturbed (no herd of wake-ups per
        # reconnect attempt while every endpoint is down).
        for sleeper, wait_for_ready in list(self._sleepers.items()):
            if failing and wait_for_ready:
                continue
            try:
                sleeper.release()
            except RuntimeError:      # already signalled, not yet re-armed
                pass
        if self._queue:
            with self._lock:
                waiters = list(self._queue.values())
            for waiter in waiters:
                if not (failing and waiter.wait_for_ready):
                    self._try(waiter)

    # ------------------------------------------------------------ picking
    def closed_error(self) -> LocalRpcError:
        return LocalRpcError(grpc.StatusCode.CANCELLED, CLOSED)

    def wait(self, info: PickInfo, error: PickError, deadline: float | None,
             wait_for_ready: bool) -> PickResult:
        """After ``error`` from the picker: the pick of a blocking call, waiting (on this
        thread, within ``deadline``) for a picker that places it; raises the call's
        LocalRpcError otherwise."""
        ctx = self.ctx
        failed = fail_now(ctx, error, wait_for_ready)
        if failed is not None:
            raise LocalRpcError.named(*failed)
        reason = str(error)
        sleeper = _thread.allocate_lock()
        sleeper.acquire()
        self._sleepers[sleeper] = wait_for_ready    # dict set/pop: atomic, no lock
        # The deadline is kept by the channel's timer thread, which releases the sleeper
        # then (see _wake): the thread itself waits without a timeout.
        timer = None
        if deadline is not None:
            timer = self.scheduler.call_later(max(deadline - time.monotonic(), 0.0),
                                              functools.partial(_wake, sleeper))
        try:
            self._connect()
            while True:
                if ctx.closed:
                    raise self.closed_error()
                try:
                    return ctx.balancer.picker.pick(info)
                except PickError as exc:
                    failed = fail_now(ctx, exc, wait_for_ready)
                    if failed is not None:
                        raise LocalRpcError.named(*failed) from None
                    reason = str(exc)
                left = remaining(deadline)
                if left is not None and left <= 0:
                    raise LocalRpcError.named(*wait_expired(reason))
                # a change (or the deadline) signalled since the pick keeps it released
                sleeper.acquire()
                if ctx.closed:
                    raise self.closed_error()
                left = remaining(deadline)
                if left is not None and left <= 0:
                    # the deadline, at once (no pick again: with thousands of waiting
                    # calls every step after waking counts)
                    raise LocalRpcError.named(*wait_expired(reason))
        finally:
            self._sleepers.pop(sleeper, None)
            if timer is not None:
                timer.cancel()

    def later(self, info: PickInfo, error: PickError, deadline: float | None,
              wait_for_ready: bool, placed: Placed, failed: Failed) -> Callable[[], bool]:
        """After ``error`` from the picker: ``placed(result)`` once a picker places the
        call, or ``failed(error)`` (from any thread; at once if it must fail now).
        Returns ``cancel()``: True if the waiter was still waiting (neither runs then)."""
        now = fail_now(self.ctx, error, wait_for_ready)
        if now is not None:
            failed(LocalRpcError.named(*now))
            return _cancelled
        waiter = _Waiter(info, wait_for_ready, placed, failed, str(error))
        key = id(waiter)
        with self._lock:
            self._queue[key] = waiter
        left = remaining(deadline)
        if left is not None:
            waiter.timer = self.scheduler.call_later(max(left, 0.0),
                                                     lambda: self._expire(waiter))
        self._connect()
        self._try(waiter)      # a change may have come before it was queued

        def cancel() -> bool:
            if not waiter.claim():
                return False
            self._drop(waiter)
            return True
        return cancel

    def _try(self, waiter: _Waiter) -> None:
        ctx = self.ctx
        if ctx.closed:
            if waiter.claim():
                self._drop(waiter)
                waiter.failed(self.closed_error())
            return
        try:
            result = ctx.balancer.picker.pick(waiter.info)
        except PickError as exc:
            failed = fail_now(ctx, exc, waiter.wait_for_ready)
            if failed is None:
                waiter.reason = str(exc)
                return
            if waiter.claim():
                self._drop(waiter)
                waiter.failed(LocalRpcError.named(*failed))
            return
        if not waiter.claim():
            # Ended meanwhile (expired, cancelled): give back a count taken at pick time.
            if result.counted:
                result.candidate.stats.discard()
            return
        self._drop(waiter)
        try:
            waiter.placed(result)
        except Exception:
            log.exception("starting a queued call failed")

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.claim():
            self._drop(waiter)
            waiter.failed(LocalRpcError.named(*wait_expired(waiter.reason)))

    def _drop(self, waiter: _Waiter) -> None:
        with self._lock:
            self._queue.pop(id(waiter), None)

    def sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds on this thread (a blocking retry's backoff), cut short
        when the channel closes."""
        end = time.monotonic() + delay
        while not self.ctx.closed:
            event = self._event
            left = end - time.monotonic()
            if left <= 0:
                return
            event.wait(left)

    # ------------------------------------------------------------ timers
    def after(self, delay: float, run: Callable[[], None],
              abort: Callable[[], None]) -> Callable[[], None]:
        """``run()`` after ``delay`` seconds on the scheduler (a retry's backoff, the next
        hedge), or ``abort()`` if the channel closes first. Returns ``cancel()``."""
        key = next(self._ids)

        def fire() -> None:
            with self._lock:
                if self._timers.pop(key, None) is None:
                    return
            run()

        with self._lock:
            closed = self.ctx.closed
            if not closed:
                self._timers[key] = (self.scheduler.call_later(delay, fire), abort)
        if closed:
            abort()

        def cancel() -> None:
            with self._lock:
                entry = self._timers.pop(key, None)
            if entry is not None:
                entry[0].cancel()
        return cancel

    def close(self) -> None:
        """The channel closed (``ctx.closed`` is set): every queued call fails CANCELLED
        and every pending timer is aborted."""
        with self._lock:
            waiters = list(self._queue.values())
            self._queue.clear()
            timers = list(self._timers.values())
            self._timers.clear()
        for waiter in waiters:
            if waiter.claim():
                waiter.failed(self.closed_error())
        for handle, abort in timers:
            handle.cancel()
            abort()
        self.changed()

    def _connect(self) -> None:
        self.ctx.balancer.request_connections()
        self._kick()


def _cancelled() -> bool:
    return False


def _wake(sleeper: Any) -> None:
    """A waiting blocking call's deadline (on the timer thread): wake its thread, then
    yield the GIL so that it runs before the next deadline's thread is woken. Thousands
    of threads woken at once, each with a timeout of its own, would fight for the GIL
    (every waiter retries it every 5 ms): woken in deadline order, one at a time, they
    end about as fast as their code runs."""
    try:
        sleeper.release()
    except RuntimeError:     # already released by a change
        pass
    time.sleep(0)
