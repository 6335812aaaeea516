"""One call's gRFC A6 retry decisions, composed from tenacity's strategies.

* ``retry``: :class:`RetryOnPolicy` - only a status in ``retryableStatusCodes`` (never any
  other code), honouring ``grpc-retry-pushback-ms`` ("don't retry" stops), the channel's
  :class:`~lbclient._throttle.RetryThrottle`, commitment (streams past their first
  response message, request streams past the replay buffer) and channel close.
* ``wait``: :class:`A6Backoff` - full jitter, ``random(0, min(initialBackoff *
  backoffMultiplier**(n-1), maxBackoff))`` built on ``tenacity.wait_exponential``; a
  pushback delay is used exactly and restarts the exponent (gRFC A6 "Pushback").
* ``stop``: ``stop_after_attempt(maxAttempts) | StopAtDeadline`` - stop when the call's
  one deadline can't fit the next backoff, so a retry never outlives the deadline.

Blocking calls run ``CallRetry.retrying`` (a ``tenacity.Retrying``) around one attempt;
futures and streams feed each attempt's outcome to ``state`` and ask :meth:`decide`,
which makes the very decision ``Retrying`` would (retry, then wait, then stop).

Threading: a ``CallRetry`` belongs to one call and sees one attempt outcome at a time
(retries are sequential); only the throttle it shares is touched concurrently.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import tenacity
from tenacity import RetryCallState, stop_after_attempt
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from ._invoke import CallArgs
from ._replay import ReplayView, RequestReplay
from ._retry_call import attempt_metadata, code_name, parse_pushback
from .method_config import RetryPolicy

if TYPE_CHECKING:
    from ._throttle import RetryThrottle


@dataclass(frozen=True, slots=True)
class Invocation:
    """Everything about one call that every attempt repeats."""

    args: CallArgs
    request: Any
    deadline: float | None
    metadata: Any
    wait_for_ready: bool
    credentials: Any
    compression: Any

    def attempt(self, how: str, request: Any, metadata: Any,
                timeout: Callable[[float | None], float | None] = lambda t: t,
                ) -> Callable[[Any, float | None], Any]:
        """``call(multicallable, timeout)`` for the invoker: ``multicallable.<how>(...)``
        (``"with_call"``, ``"future"`` or ``"__call__"`` for response streams)."""
        def call(multicallable: Any, t: float | None) -> Any:
            return getattr(multicallable, how)(
                request, timeout=timeout(t), metadata=metadata, credentials=self.credentials,
                wait_for_ready=self.wait_for_ready, compression=self.compression)
        return call


class CallRetry:
    """The retry state of one call (see the module docstring)."""

    def __init__(self, policy: RetryPolicy, deadline: float | None, *,
                 throttle: RetryThrottle | None = None,
                 closed: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None,
                 replay: RequestReplay | None = None) -> None:
        self.policy = policy
        self.deadline = deadline
        self.throttle = throttle
        self.closed = closed
        self.clock = clock
        self.replay = replay
        self.view: ReplayView | None = replay.view() if replay is not None else None
        self.tried: list[str] = []          # addresses, in attempt order
        self.attempts = 0                   # attempts started
        self.committed = False              # a response stream got its first message
        self.pushback: float | None = None  # the last failed attempt's pushback delay
        self.backoff_from = 0               # attempt number the exponent restarts after
        self.cut = False                    # this attempt's timeout is perAttemptRecvTimeout
        # The call's tenacity strategies: ``retrying`` runs them for blocking calls;
        # lbclient.aio runs the same ones in a ``tenacity.AsyncRetrying``.
        self.strategies: dict[str, Any] = {
            "retry": RetryOnPolicy(self),
            "wait": A6Backoff(self, rng or random.Random()),
            "stop": stop_after_attempt(policy.max_attempts) | StopAtDeadline(deadline, clock)}
        self.retrying = tenacity.Retrying(**self.strategies, sleep=sleep, reraise=True)
        self.state = RetryCallState(self.retrying, None, (), {})

    # ------------------------------------------------------------------ attempts
    def begin_attempt(self, metadata: Any) -> Any:
        """Count a new attempt; return its request metadata."""
        md = attempt_metadata(metadata, self.attempts)
        self.attempts += 1
        self.cut = False
        return md

    def request(self, request: Any) -> Any:
        """The request (iterator) for the attempt being started."""
        return self.view if self.view is not None else request

    def exclude(self) -> frozenset[str]:
        return frozenset(self.tried)

    def attempt_timeout(self, timeout: float | None) -> float | None:
        """The attempt's grpc timeout: what is left of the deadline, or the policy's
        ``perAttemptRecvTimeout`` when that is shorter."""
        per = self.policy.per_attempt_recv_timeout
        if per is not None and (timeout is None or per < timeout):
            self.cut = True
            return per
        return timeout

    @property
    def previous(self) -> int:
        """Attempts before the last one (what ``grpc-previous-rpc-attempts`` reports)."""
        return max(self.attempts - 1, 0)

    # ------------------------------------------------------------------ async driver
    def record(self, error: BaseException | None, result: Any = None) -> None:
        """Feed the outcome of the attempt just finished to ``state``."""
        if error is None:
            self.state.set_result(result)
        else:
            self.state.set_exception((type(error), error, error.__traceback__))

    def decide(self) -> float | None:
        """After :meth:`record`: the backoff before the next attempt, or None to stop
        (``Retrying.iter``'s decision: retry predicate, then wait, then stop)."""
        r = self.retrying
        if not r.retry(self.state):
            return None
        self.state.upcoming_sleep = r.wait(self.state)
        if r.stop(self.state):
            return None
        return self.state.upcoming_sleep

    def next_attempt(self) -> None:
        self.state.prepare_for_next_attempt()

    def per_attempt_timed_out(self, code: str) -> bool:
        """gRPC treats an attempt cut by ``perAttemptRecvTimeout`` as retryable."""
        return (code == "DEADLINE_EXCEEDED" and self.cut
                and (self.deadline is None or self.clock() < self.deadline))


class RetryOnPolicy(retry_base):
    """The gRFC A6 retry predicate; also keeps the throttle's books (successes refund,
    retryable failures and "don't retry" pushbacks cost a token)."""

    def __init__(self, ctl: CallRetry) -> None:
        self.ctl = ctl

    def __call__(self, retry_state: RetryCallState) -> bool:
        ctl = self.ctl
        outcome = retry_state.outcome
        if outcome is None:
            return False
        throttle = ctl.throttle
        if not outcome.failed:
            if throttle is not None:
                throttle.record_success()
            return False
        error = outcome.exception()
        code = code_name(error)
        if code is None:        # not an RPC outcome (e.g. a programming error): never
            return False
        retryable = code in ctl.policy.retryable_status_codes or ctl.per_attempt_timed_out(code)
        stop, delay = parse_pushback(error)
        if not retryable and not stop:
            return False
        allowed = throttle.record_failure() if throttle is not None else True
        if stop or not retryable or not allowed or ctl.committed or ctl.closed():
            return False
        if ctl.replay is not None:
            view = ctl.replay.view()   # atomically: None once the request stream committed
            if view is None:
                return False
            ctl.view = view
        ctl.pushback = delay
        return True


class _FullJitter(tenacity.wait_exponential):
    """``random(0, min(initial * multiplier**(n-1), max))`` for the n-th retry."""

    def __init__(self, policy: RetryPolicy, rng: random.Random) -> None:
        super().__init__(multiplier=policy.initial_backoff, max=policy.max_backoff,
                         exp_base=policy.backoff_multiplier)
        self.rng = rng

    def for_retry(self, n: int) -> float:
        # wait_exponential reads only ``attempt_number`` from the retry state.
        high = super().__call__(SimpleNamespace(attempt_number=n))  # type: ignore[arg-type]
        return self.rng.uniform(0.0, high)


class A6Backoff(wait_base):
    """Exponential backoff with full jitter; an explicit pushback wins and resets it."""

    def __init__(self, ctl: CallRetry, rng: random.Random) -> None:
        self.ctl = ctl
        self.jitter = _FullJitter(ctl.policy, rng)

    def __call__(self, retry_state: RetryCallState) -> float:
        ctl = self.ctl
        if ctl.pushback is not None:
            ctl.backoff_from = retry_state.attempt_number
            return ctl.pushback
        return self.jitter.for_retry(retry_state.attempt_number - ctl.backoff_from)


class StopAtDeadline(stop_base):
    """Stop when the next backoff would reach the call's deadline."""

    def __init__(self, deadline: float | None, clock: Callable[[], float]) -> None:
        self.deadline = deadline
        self.clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return (self.deadline is not None
                and self.clock() + retry_state.upcoming_sleep >= self.deadline)
