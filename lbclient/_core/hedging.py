"""gRFC A6 hedging for one unary call, as a state machine (pure: no threads, no timers).

The driver feeds it events and carries out the actions it returns, in order:

* :meth:`HedgePlan.start` → ``[Send(0), Arm(delay)]``;
* :meth:`timer_fired(seq) <HedgePlan.timer_fired>` (the delay of ``Arm(delay, seq)``
  passed) → maybe ``[Send(n), Arm(delay)]``;
* :meth:`ended(n, code, trailing)` (attempt ``n`` finished) → ``[Win(n)]`` for the first
  OK answer; ``[Fail(n)]`` for a status outside ``nonFatalStatusCodes``, or once every
  attempt has ended and no more may be sent; otherwise maybe ``[Arm(d)]``: a non-fatal
  failure sends the next hedge at once (``d`` 0), or after exactly the
  ``grpc-retry-pushback-ms`` delay; a "don't retry" pushback stops further hedges.

Hedges past the first are sent only when the channel's retry gate grants them, asked
when each is due (``begin_retry``: A6 while its bucket is above half, a retry budget
while it has room;
non-fatal failures take an A6 token, the winner gives some back; making the plan books
the call with the gate). A granted hedge is held until it ends, or the call is won, lost
or cancelled (Envoy's budget counts hedges in flight as retries); an armed delay never goes
past the call's deadline. Each ``Arm`` replaces the one before; its ``seq`` lets a driver
whose actions from two events interleave (threads) keep only the newest timer, and the
plan ignores a stale timer that fired anyway. ``Send(n)`` attempts carry ``n`` previous
attempts in their metadata; after ``Win``/``Fail`` the driver cancels every other
attempt in flight.

:attr:`HedgePlan.retry_delay` is gRFC A96's ``grpc.client.call.retry_delay``: "total
time of delay while there is no active attempt". A hedging delay that runs while an
attempt is in flight is not such a delay; the wait after every attempt in flight failed
(non-fatally) until the next one is sent is, measured on ``clock``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..method_config import HedgingPolicy
from .metadata import parse_pushback
from .throttle import RetryGate, RetryHold


@dataclass(frozen=True, slots=True)
class Send:
    n: int              # the attempt number (0 is the first)


@dataclass(frozen=True, slots=True)
class Arm:
    delay: float        # seconds until timer_fired(seq)
    seq: int            # this arming's number: a later one replaces it


@dataclass(frozen=True, slots=True)
class Win:
    n: int              # the call succeeded with attempt n


@dataclass(frozen=True, slots=True)
class Fail:
    n: int | None       # the call failed with attempt n's error (None: none was sent)


Action = Send | Arm | Win | Fail


class HedgePlan:
    __slots__ = ("policy", "throttle", "deadline", "clock", "started", "in_flight",
                 "done", "no_more", "last_error", "tried", "armed", "_holds", "retry_delay",
                 "_idle_since")

    def __init__(self, policy: HedgingPolicy, *, throttle: RetryGate | None = None,
                 deadline: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.throttle = throttle
        self.deadline = deadline
        self.clock = clock
        self.started = 0
        self.in_flight: set[int] = set()
        self.done = False
        self.no_more = False          # a "don't retry" pushback, or throttled
        self.last_error: int | None = None
        self.tried: list[str] = []    # endpoints of the attempts, in order
        self.armed = 0                # seq of the newest Arm
        self._holds: dict[int, RetryHold] = {}   # hedges the gate granted, while live
        self.retry_delay = 0.0        # seconds with no attempt in flight (A96), so far
        self._idle_since: float | None = None    # every attempt sent so far has ended
        if throttle is not None:
            throttle.record_call()

    @property
    def previous(self) -> int:
        return max(self.started - 1, 0)

    def _more(self) -> bool:
        return not self.no_more and self.started < self.policy.max_attempts

    def _send(self) -> list[Action]:
        idle = self._idle_since
        if idle is not None:          # the wait with no attempt in flight is over
            self._idle_since = None
            self.retry_delay += max(self.clock() - idle, 0.0)
        n = self.started
        self.started += 1
        self.in_flight.add(n)
        out: list[Action] = [Send(n)]
        if self._more():
            out.append(self._arm(self.policy.hedging_delay))
        return out

    def _arm(self, delay: float) -> Arm:
        if self.deadline is not None:
            delay = min(delay, max(self.deadline - self.clock(), 0.0))
        self.armed += 1
        return Arm(delay, self.armed)

    def _finish(self, action: Action) -> list[Action]:
        self.done = True
        self._release_all()
        return [action]

    def _release(self, n: int) -> None:
        hold = self._holds.pop(n, None)
        if hold is not None and self.throttle is not None:
            self.throttle.end_retry(hold)

    def _release_all(self) -> None:
        for n in list(self._holds):
            self._release(n)

    # ------------------------------------------------------------------ events
    def start(self) -> list[Action]:
        return self._send()

    def timer_fired(self, seq: int) -> list[Action]:
        if self.done or seq != self.armed or not self._more():
            return []
        if self.throttle is not None:
            hold = self.throttle.begin_retry()
            if hold is None:
                self.no_more = True
                return [] if self.in_flight else self._finish(Fail(self.last_error))
            self._holds[self.started] = hold      # the attempt _send is about to number
        return self._send()

    def ended(self, n: int, code: str, trailing: Iterable[Any] | None = ()) -> list[Action]:
        self.in_flight.discard(n)
        self._release(n)
        if self.done:
            return []
        if code == "OK":
            if self.throttle is not None:
                self.throttle.record_success()
            return self._finish(Win(n))
        if code not in self.policy.non_fatal_status_codes:
            return self._finish(Fail(n))
        stop, delay = parse_pushback(trailing)
        if self.throttle is not None:
            self.throttle.record_failure()   # A6: a token; the next hedge asks begin_retry
        self.last_error = n
        if stop:
            self.no_more = True
        if not self._more():
            return [] if self.in_flight else self._finish(Fail(n))
        if not self.in_flight:
            self._idle_since = self.clock()   # until the next hedge is sent
        return [self._arm(delay if delay is not None else 0.0)]

    def cancel(self) -> None:
        """The call is over (the caller cancelled it, or the driver is done with it):
        nothing more is sent, granted hedges are given back."""
        self.done = True
        self._release_all()
