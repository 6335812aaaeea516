"""One call's gRFC A6 retry decisions (pure: no threads, no I/O, no event loop).

The drivers loop; the plan decides. For every attempt a driver calls
:meth:`RetryPlan.start_attempt` (which also gives the attempt's request metadata and
timeout), then reports how it ended: :meth:`succeeded`, or :meth:`failed`, whose answer
is the backoff before the next attempt or None to stop (the attempt's error is the
call's). The rules, in the order they apply:

* only a status in ``retryableStatusCodes`` is retried (an attempt cut short by
  ``perAttemptRecvTimeout`` counts as retryable while the call's deadline is not up);
* a ``grpc-retry-pushback-ms`` trailer: "don't retry" stops; a delay is used exactly and
  restarts the exponential backoff;
* the channel's retry gate (``ctx.throttle``: gRFC A6's token bucket, or a retry budget
  of :mod:`lbclient._core.budget`): every retryable failure (and every "don't retry"
  pushback) is reported (A6: takes a token), every success too (A6: gives some back);
  a retry is sent only if the gate grants it (:meth:`RetryGate.begin_retry`; A6: while
  the bucket is above half), checked last, so a retry that would not be made for another
  reason costs nothing and each one the gate decides on is counted once;
* a committed call is not retried (a response stream past its first message, a
  request stream past the replay buffer) - ``committed``/``replayable`` say so;
* at most ``maxAttempts`` attempts;
* full-jitter backoff ``random(0, min(initialBackoff * backoffMultiplier**(n-1),
  maxBackoff))`` for the n-th retry, and never a retry whose backoff reaches the call's
  deadline.

A plan is made once per call: making it books the call with the gate
(``record_call``: Finagle's deposit). A granted retry is held until the next outcome of
the call's attempts, its commitment or :meth:`RetryPlan.ended` (Envoy's budget counts
retries in flight); drivers call ``ended()`` when the call is over.

:attr:`RetryPlan.retry_delay` is gRFC A96's ``grpc.client.call.retry_delay``: the time
(on ``clock``) the call spent with no attempt in flight, from each failure that
:meth:`failed` answers with a backoff to the start of the next attempt - the backoff as
it really elapsed (timer lateness included), as gRPC's own call tracers measure it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..method_config import RetryPolicy
from .metadata import attempt_metadata, parse_pushback
from .throttle import RetryGate, RetryHold


class RetryPlan:
    __slots__ = ("policy", "deadline", "throttle", "rng", "clock", "attempts", "tried",
                 "_committed", "cut", "_backoff_from", "_hold", "retry_delay", "_idle_since")

    def __init__(self, policy: RetryPolicy, deadline: float | None, *,
                 throttle: RetryGate | None = None, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.deadline = deadline            # on ``clock``'s time line
        self.throttle = throttle
        self.rng = rng or random.Random()
        self.clock = clock
        self.attempts = 0                   # attempts started
        self.tried: list[str] = []          # their endpoints, in order
        self._committed = False             # e.g. a response stream got its first message
        self.cut = False                    # the current attempt has perAttemptRecvTimeout
        self._backoff_from = 0              # the attempt after which backoff restarts
        self._hold: RetryHold | None = None  # the retry the gate granted, until it ends
        self.retry_delay = 0.0              # seconds between attempts (A96), so far
        self._idle_since: float | None = None   # a backoff began: no attempt in flight
        if throttle is not None:
            throttle.record_call()

    @property
    def committed(self) -> bool:
        return self._committed

    @committed.setter
    def committed(self, value: bool) -> None:
        self._committed = value
        if value:
            self._release()      # a committed call's retry is over (Envoy: response headers)

    def _release(self) -> None:
        hold = self._hold
        if hold is not None:
            self._hold = None
            assert self.throttle is not None
            self.throttle.end_retry(hold)

    def ended(self) -> None:
        """The call is over: give back a retry it still holds (idempotent)."""
        self._release()

    # ------------------------------------------------------------------ attempts
    def start_attempt(self, metadata: Any) -> Any:
        """Count a new attempt; return its request metadata."""
        idle = self._idle_since
        if idle is not None:                # the backoff before this attempt is over
            self._idle_since = None
            self.retry_delay += max(self.clock() - idle, 0.0)
        md = attempt_metadata(metadata, self.attempts)
        self.attempts += 1
        self.cut = False
        return md

    def placed(self, address: str) -> None:
        """The current attempt went to ``address`` (later picks avoid it)."""
        self.tried.append(address)

    def exclude(self) -> frozenset[str]:
        return frozenset(self.tried)

    def attempt_timeout(self, timeout: float | None) -> float | None:
        """The attempt's grpc timeout: what is left of the call (``timeout``), or the
        policy's ``perAttemptRecvTimeout`` when that is shorter."""
        per = self.policy.per_attempt_recv_timeout
        if per is not None and (timeout is None or per < timeout):
            self.cut = True
            return per
        return timeout

    @property
    def previous(self) -> int:
        """Attempts before the current one (what ``grpc-previous-rpc-attempts`` says)."""
        return max(self.attempts - 1, 0)

    # ------------------------------------------------------------------ outcomes
    def succeeded(self) -> None:
        self._release()
        if self.throttle is not None:
            self.throttle.record_success()

    def failed(self, code: str, trailing: Iterable[Any] | None = (), *,
               replayable: bool = True, closed: bool = False) -> float | None:
        """The backoff (seconds) before the next attempt, or None: the call ends with
        this attempt's error. ``replayable`` False: the request stream can no longer be
        replayed; ``closed``: the channel is closing."""
        self._release()                     # the attempt that held a retry has ended
        policy = self.policy
        retryable = code in policy.retryable_status_codes or (
            code == "DEADLINE_EXCEEDED" and self.cut
            and (self.deadline is None or self.clock() < self.deadline))
        stop, pushback = parse_pushback(trailing)
        if not retryable and not stop:
            return None
        if self.throttle is not None:
            self.throttle.record_failure()  # A6: a token (whether retries may go: below)
        if stop or not retryable or self.committed or closed \
                or not replayable or self.attempts >= policy.max_attempts:
            return None
        if pushback is not None:
            delay = pushback
            self._backoff_from = self.attempts
        else:
            n = self.attempts - self._backoff_from
            high = min(policy.initial_backoff * policy.backoff_multiplier ** (n - 1),
                       policy.max_backoff)
            delay = self.rng.uniform(0.0, high)
        if self.deadline is not None and self.clock() + delay >= self.deadline:
            return None
        if self.throttle is not None:       # last: the gate counts what it decides
            self._hold = self.throttle.begin_retry()
            if self._hold is None:
                return None
        self._idle_since = self.clock()     # until the next start_attempt (retry_delay)
        return delay

    def final_outcome(self, code: str, trailing: Iterable[Any] | None = ()) -> None:
        """Book a committed call's outcome with the throttle (it was not retried)."""
        self._release()
        if code == "OK":
            self.succeeded()
            return
        retryable = code in self.policy.retryable_status_codes
        stop, _ = parse_pushback(trailing)
        if (retryable or stop) and self.throttle is not None:
            self.throttle.record_failure()
