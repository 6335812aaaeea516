"""The gRFC A6 retry plan (decision, backoff, pushback, throttle) and request replay, driven
directly with a fake clock and a controlled random source (no sleeping)."""

from __future__ import annotations

import queue
import random
import threading
from typing import Any

import grpc
import pytest

from lbclient._core.metadata import (
    PREVIOUS_ATTEMPTS,
    REQUEST_PREVIOUS_ATTEMPTS,
    attempt_metadata,
    parse_pushback,
)
from lbclient._core.replay import message_size
from lbclient._core.retry_plan import RetryPlan
from lbclient._core.throttle import RetryThrottle
from lbclient._sync.errors import LocalRpcError
from lbclient._sync.future import RetriedCall, RetriedRpcError, with_attempts
from lbclient._sync.replay import SyncReplay
from lbclient.method_config import RetryPolicy, RetryThrottling
from lbclient.testing import echo_pb2


class Failure(LocalRpcError):
    """A finished failed attempt with trailing metadata (lbclient's own RpcError type)."""

    def __init__(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
                 trailing: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(code, "test failure")
        self._trailing = trailing

    def trailing_metadata(self) -> tuple[Any, ...]:
        return self._trailing


class UpperRng(random.Random):
    """uniform(a, b) -> b: exposes the full-jitter bound itself."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(max_attempts: int = 5, initial: float = 0.1, maximum: float = 1.0,
           multiplier: float = 2.0, codes: frozenset[str] = frozenset({"UNAVAILABLE"}),
           per_attempt: float | None = None) -> RetryPolicy:
    return RetryPolicy(max_attempts, initial, maximum, multiplier, codes, per_attempt)


class Plan(RetryPlan):
    """A plan for one call whose channel may be closed (what the drivers pass)."""

    closed = False


def ctl_for(p: RetryPolicy | None = None, deadline: float | None = None, *,
            clock: Clock | None = None, rng: random.Random | None = None,
            throttle: RetryThrottle | None = None, closed: bool = False) -> Plan:
    ctl = Plan(p or policy(), deadline, throttle=throttle, clock=clock or Clock(),
               rng=rng or UpperRng())
    ctl.closed = closed
    ctl.start_attempt(())
    return ctl


def fail(ctl: Plan, error: Failure | None = None) -> float | None:
    """Report a failed attempt; return the decision (and start the next attempt when it
    is a retry), as a driver does."""
    error = error if error is not None else Failure()
    delay = ctl.failed(error.code().name, error.trailing_metadata(), closed=ctl.closed)
    if delay is not None:
        ctl.start_attempt(())
    return delay


def test_backoff_bounds_follow_grfc_a6() -> None:
    # n-th retry at random(0, min(initialBackoff * multiplier**(n-1), maxBackoff)).
    ctl = ctl_for(policy(max_attempts=5, initial=0.1, maximum=0.5, multiplier=2.0))
    assert [fail(ctl) for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, None]
    assert ctl.attempts == 5


@pytest.mark.parametrize("seed", range(5))
def test_backoff_is_full_jitter_within_bounds(seed: int) -> None:
    draws: list[list[float]] = [[], [], []]
    for i in range(200):
        ctl = ctl_for(policy(max_attempts=4, initial=0.1, maximum=0.3, multiplier=3.0),
                      rng=random.Random(seed * 1000 + i))
        for n in range(3):
            delay = fail(ctl)
            assert delay is not None
            draws[n].append(delay)
    for n, bound in enumerate((0.1, 0.3, 0.3)):
        assert all(0.0 <= d <= bound for d in draws[n])
        # full jitter: the draws spread over the whole interval, not clustered at the top
        assert min(draws[n]) < bound * 0.1 and max(draws[n]) > bound * 0.9
        assert bound * 0.35 < sum(draws[n]) / len(draws[n]) < bound * 0.65


def test_multiplier_below_one_shrinks_the_bound() -> None:
    ctl = ctl_for(policy(max_attempts=4, initial=0.4, maximum=1.0, multiplier=0.5))
    assert [fail(ctl) for _ in range(3)] == [0.4, 0.2, 0.1]


def test_max_attempts_counts_the_first_attempt() -> None:
    ctl = ctl_for(policy(max_attempts=2))
    assert fail(ctl) == 0.1
    assert fail(ctl) is None
    assert ctl.attempts == 2 and ctl.previous == 1


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode
                                  if c not in (grpc.StatusCode.OK,
                                               grpc.StatusCode.UNAVAILABLE)])
def test_codes_not_in_the_list_are_never_retried(code: grpc.StatusCode) -> None:
    throttle = RetryThrottle(10, 0.1)
    ctl = ctl_for(throttle=throttle)
    assert fail(ctl, Failure(code)) is None
    assert throttle.tokens == 10  # only retryable failures cost tokens


def test_a_listed_code_is_retried_and_the_list_is_per_policy() -> None:
    codes = frozenset({"RESOURCE_EXHAUSTED", "ABORTED"})
    ctl = ctl_for(policy(codes=codes))
    assert fail(ctl, Failure(grpc.StatusCode.ABORTED)) == 0.1
    assert fail(ctl, Failure(grpc.StatusCode.RESOURCE_EXHAUSTED)) == 0.2
    assert fail(ctl, Failure(grpc.StatusCode.UNAVAILABLE)) is None


def test_a_stream_that_cannot_be_replayed_is_not_retried() -> None:
    ctl = ctl_for()
    assert ctl.failed("UNAVAILABLE", (), replayable=False) is None


def test_success_ends_and_refunds_the_throttle() -> None:
    throttle = RetryThrottle(10, 0.5, tokens=7)
    ctl = ctl_for(throttle=throttle)
    ctl.succeeded()
    assert throttle.tokens == 7.5


def test_a_committed_calls_outcome_is_booked_with_the_throttle() -> None:
    throttle = RetryThrottle(10, 0.5, tokens=7)
    ctl = ctl_for(throttle=throttle)
    ctl.committed = True
    ctl.final_outcome("UNAVAILABLE")      # retryable code: a token, though not retried
    ctl.final_outcome("INTERNAL")         # not retryable: no token
    ctl.final_outcome("OK")
    assert throttle.tokens == 6.5


def test_deadline_stops_when_the_next_backoff_does_not_fit() -> None:
    clock = Clock()
    ctl = ctl_for(policy(initial=0.1, maximum=1.0), deadline=clock.now + 0.5, clock=clock)
    assert fail(ctl) == 0.1          # 1000.0 + 0.1 < 1000.5
    clock.now += 0.3
    assert fail(ctl) is None         # 1000.3 + 0.2 reaches the deadline


def test_no_deadline_means_only_max_attempts_stop() -> None:
    ctl = ctl_for(policy(max_attempts=3, initial=100.0, maximum=100.0))
    assert [fail(ctl) for _ in range(3)] == [100.0, 100.0, None]


def _push(value: str) -> Failure:
    return Failure(grpc.StatusCode.UNAVAILABLE, (("grpc-retry-pushback-ms", value),))


def test_pushback_delay_is_exact_and_resets_the_backoff() -> None:
    ctl = ctl_for(policy(max_attempts=5, initial=0.1, maximum=10.0, multiplier=2.0))
    assert fail(ctl) == 0.1
    assert fail(ctl) == 0.2
    assert fail(ctl, _push("250")) == 0.25    # exactly the server's delay
    assert fail(ctl) == 0.1                   # then back to initialBackoff


@pytest.mark.parametrize("value", ["-1", "-100", "abc", "", "1.5", "1e3", "007",
                                   "99999999999", "2147483648"])
def test_pushback_saying_no_stops_retrying_and_costs_a_token(value: str) -> None:
    throttle = RetryThrottle(10, 0.1)
    ctl = ctl_for(throttle=throttle)
    assert fail(ctl, _push(value)) is None
    assert throttle.tokens == 9


def test_pushback_no_on_a_non_retryable_code_also_costs_a_token() -> None:
    throttle = RetryThrottle(10, 0.1)
    ctl = ctl_for(throttle=throttle)
    error = Failure(grpc.StatusCode.INTERNAL, (("grpc-retry-pushback-ms", "-1"),))
    assert fail(ctl, error) is None
    assert throttle.tokens == 9


def test_pushback_cannot_exceed_max_attempts_or_the_deadline() -> None:
    ctl = ctl_for(policy(max_attempts=2))
    assert fail(ctl, _push("10")) == 0.01
    assert fail(ctl, _push("10")) is None
    clock = Clock()
    ctl = ctl_for(deadline=clock.now + 1.0, clock=clock)
    assert fail(ctl, _push("2000")) is None


PUSHBACK_TABLE = [
    ((("grpc-retry-pushback-ms", "0"),), (False, 0.0)),
    ((("grpc-retry-pushback-ms", "1500"),), (False, 1.5)),
    ((("grpc-retry-pushback-ms", b"20"),), (False, 0.02)),
    ((("grpc-retry-pushback-ms", "2147483647"),), (False, 2147483.647)),
    ((("grpc-retry-pushback-ms", "-5"),), (True, None)),
    ((("grpc-retry-pushback-ms", "soon"),), (True, None)),
    ((("x-other", "5"),), (False, None)),
    ((), (False, None)),
]


@pytest.mark.parametrize(("trailing", "expected"), PUSHBACK_TABLE)
def test_parse_pushback(trailing: tuple[Any, ...], expected: tuple[bool, float | None]) -> None:
    assert parse_pushback(trailing) == expected


def test_throttle_blocks_retries_at_half_and_recovers() -> None:
    throttle = RetryThrottle(4, 0.5)
    ctl = ctl_for(throttle=throttle)
    assert fail(ctl) == 0.1            # 4 -> 3 > 2: retry allowed
    assert fail(ctl) is None           # 3 -> 2 <= 2: no more retries
    assert throttle.tokens == 2
    for _ in range(3):
        throttle.record_success()      # 2 -> 3.5
    assert fail(ctl_for(throttle=throttle)) == 0.1   # 3.5 -> 2.5 > 2: retries are back
    assert fail(ctl_for(throttle=throttle)) is None  # 2.5 -> 1.5


def test_throttle_token_arithmetic() -> None:
    t = RetryThrottle(10, 0.1)
    assert (t.tokens, t.allows_retry()) == (10, True)
    results = [t.record_failure() for _ in range(5)]
    assert results == [True, True, True, True, False]   # 9,8,7,6 > 5; 5 is not
    assert not t.allows_retry()
    t.record_success()
    assert t.tokens == pytest.approx(5.1) and t.allows_retry()
    for _ in range(20):
        t.record_failure()
    assert t.tokens == 0                                 # never below 0
    for _ in range(1000):
        t.record_success()
    assert t.tokens == 10                                # never above maxTokens
    assert RetryThrottle(10, 0.001, tokens=5).token_ratio == 0.001


def test_throttle_keeps_its_fill_across_config_updates() -> None:
    old = RetryThrottle(10, 0.1, tokens=4)
    same = RetryThrottle.from_config(RetryThrottling(10, 0.1), old)
    assert same is old
    bigger = RetryThrottle.from_config(RetryThrottling(100, 0.5), old)
    assert (bigger.tokens, bigger.max_tokens, bigger.token_ratio) == (40, 100, 0.5)
    fresh = RetryThrottle.from_config(RetryThrottling(8, 1), None)
    assert fresh.tokens == 8
    with pytest.raises(ValueError):
        RetryThrottle(0, 0.1)


def test_committed_or_closed_calls_are_not_retried() -> None:
    ctl = ctl_for()
    ctl.committed = True
    assert fail(ctl) is None
    assert fail(ctl_for(closed=True)) is None


def test_per_attempt_timeout_makes_deadline_exceeded_retryable() -> None:
    clock = Clock()
    ctl = ctl_for(policy(per_attempt=0.2), deadline=clock.now + 5, clock=clock)
    assert ctl.attempt_timeout(4.0) == 0.2 and ctl.cut
    assert fail(ctl, Failure(grpc.StatusCode.DEADLINE_EXCEEDED)) == 0.1
    # the next attempt got the whole remaining time: its DEADLINE_EXCEEDED is the call's
    assert ctl.attempt_timeout(0.1) == 0.1 and not ctl.cut
    assert fail(ctl, Failure(grpc.StatusCode.DEADLINE_EXCEEDED)) is None
    plain = ctl_for(policy(per_attempt=None))
    assert plain.attempt_timeout(None) is None
    assert fail(plain, Failure(grpc.StatusCode.DEADLINE_EXCEEDED)) is None


def test_attempt_metadata_and_wrappers() -> None:
    assert attempt_metadata(None, 0) is None
    assert attempt_metadata([("a", "1")], 2) == (("a", "1"), (REQUEST_PREVIOUS_ATTEMPTS, "2"))
    error = Failure(trailing=(("x", "y"),))
    assert with_attempts(error, 0) is error
    wrapped = with_attempts(error, 2)
    assert isinstance(wrapped, RetriedRpcError)
    assert isinstance(wrapped, grpc.RpcError | grpc.Call) and isinstance(wrapped, grpc.Future)
    assert wrapped.code() is grpc.StatusCode.UNAVAILABLE
    assert wrapped.trailing_metadata() == (("x", "y"), (PREVIOUS_ATTEMPTS, "2"))
    assert wrapped.done() and wrapped.exception() is wrapped
    with pytest.raises(grpc.RpcError):
        wrapped.result()
    assert "2 earlier attempt" in str(wrapped)


def test_retried_call_delegates() -> None:
    inner = Failure(trailing=(("k", "v"),))
    call = RetriedCall(inner, 1)
    assert isinstance(call, grpc.Call) and not isinstance(call, grpc.RpcError)
    assert call.trailing_metadata() == (("k", "v"), (PREVIOUS_ATTEMPTS, "1"))
    assert call.code() is grpc.StatusCode.UNAVAILABLE and call.details() == "test failure"
    assert call.previous_rpc_attempts == 1
    seen: list[Any] = []
    call.add_done_callback(seen.append)
    assert seen == [call]


# ---------------------------------------------------------------------------- replay
def _requests(n: int, size: int = 10) -> list[echo_pb2.EchoRequest]:
    return [echo_pb2.EchoRequest(message=str(i), payload=b"x" * size) for i in range(n)]


def test_replay_gives_every_attempt_the_whole_stream() -> None:
    reqs = _requests(5)
    replay = SyncReplay(iter(reqs), limit=10_000)
    first = replay.view()
    assert first is not None
    assert [next(first) for _ in range(3)] == reqs[:3]      # attempt 1 read 3, then failed
    second = replay.view()
    assert second is not None
    assert list(second) == reqs                              # replayed, then read on
    assert list(first) == []                                 # the old attempt's view is closed
    assert not replay.committed


def test_replay_commits_past_the_limit_and_keeps_the_stream_whole() -> None:
    reqs = _requests(10, size=100)
    limit = 3 * message_size(reqs[0], None)
    replay = SyncReplay(iter(reqs), limit=limit)
    view = replay.view()
    assert view is not None
    got = [next(view) for _ in range(4)]                     # the 4th overflows the buffer
    assert replay.committed
    assert replay.view() is None                             # no retry can replay it now
    assert got + list(view) == reqs                          # the current attempt goes on
    assert replay.buffered_bytes == 0


def test_replay_commit_by_first_response_frees_the_buffer() -> None:
    reqs = _requests(4)
    replay = SyncReplay(iter(reqs), limit=10_000)
    view = replay.view()
    assert view is not None and next(view) == reqs[0]
    replay.commit(view)
    assert replay.committed and replay.view() is None
    assert list(view) == reqs[1:]


def test_replay_source_error_commits() -> None:
    def source() -> Any:
        yield echo_pb2.EchoRequest(message="a")
        raise RuntimeError("broken generator")

    replay = SyncReplay(source(), limit=10_000)
    view = replay.view()
    assert view is not None and next(view).message == "a"
    with pytest.raises(RuntimeError):
        next(view)
    assert replay.committed and replay.view() is None


def test_message_size() -> None:
    req = echo_pb2.EchoRequest(payload=b"x" * 1000)
    assert message_size(req, None) == req.ByteSize() > 1000
    assert message_size(b"abc", None) == 3
    assert message_size("text", lambda s: s.encode() * 2) == 8
    assert message_size(object(), None) == 0


def test_replay_never_reads_the_source_under_its_lock() -> None:
    """Ping-pong: the caller's iterator blocks until a response was read, and the
    response path commits the call meanwhile (that used to deadlock)."""
    feed: queue.Queue[Any] = queue.Queue()

    def source() -> Any:
        while True:
            item = feed.get(timeout=5)
            if item is None:
                return
            yield item

    replay = SyncReplay(source(), limit=10_000)
    view = replay.view()
    assert view is not None
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.extend(view), daemon=True)
    reader.start()                           # grpc's request thread, blocked in source()
    committed = threading.Event()
    threading.Thread(target=lambda: (replay.commit(view), committed.set()),
                     daemon=True).start()    # the first response arrives meanwhile
    assert committed.wait(2), "commit waited for the request source"
    reqs = _requests(2)
    for r in reqs:
        feed.put(r)
    feed.put(None)
    reader.join(5)
    assert not reader.is_alive() and got == reqs


def test_a_new_attempt_waits_for_the_message_an_old_one_is_reading() -> None:
    feed: queue.Queue[Any] = queue.Queue()

    def source() -> Any:
        while True:
            item = feed.get(timeout=5)
            if item is None:
                return
            yield item

    replay = SyncReplay(source(), limit=10_000)
    first = replay.view()
    assert first is not None
    old: list[Any] = []
    threading.Thread(target=lambda: old.extend(first), daemon=True).start()
    second = replay.view()                   # a retry, while attempt 1 waits in source()
    assert second is not None
    new: list[Any] = []
    reader = threading.Thread(target=lambda: new.extend(second), daemon=True)
    reader.start()
    reqs = _requests(3)
    for r in reqs:
        feed.put(r)
    feed.put(None)
    reader.join(5)
    assert new == reqs and old == []         # each message once, to the current attempt
