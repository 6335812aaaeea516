"""Retry budgets (Envoy's concurrency budget, Finagle's rate budget): config parsing, the
budgets themselves and the retry / hedging plans that ask them, with a fake clock and a
fake count of attempts in flight (no sleeping, no channel)."""

from __future__ import annotations

import gc
import random
from typing import Any

import pytest

from lbclient import ServiceConfigError
from lbclient._core.budget import ConcurrencyRetryBudget, RateRetryBudget, retry_gate
from lbclient._core.hedging import Arm, Fail, HedgePlan, Send, Win
from lbclient._core.retry_plan import RetryPlan
from lbclient._core.throttle import RetryCounts, RetryThrottle
from lbclient.config import parse_service_config
from lbclient.health.options import (
    ConcurrencyBudgetConfig,
    RateBudgetConfig,
    parse_balancing_options,
)
from lbclient.method_config import HedgingPolicy, RetryPolicy, RetryThrottling


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Active:
    """A settable count of attempts in flight on the channel."""

    def __init__(self, n: int = 0) -> None:
        self.n = n
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.n


def envoy(percent: float = 20.0, minimum: int = 3, active: Active | None = None,
          clock: Clock | None = None) -> ConcurrencyRetryBudget:
    return ConcurrencyRetryBudget(ConcurrencyBudgetConfig(percent, minimum),
                                  active or Active(), clock=clock or Clock())


def finagle(ttl: float = 10.0, per_sec: int = 10, percent: float = 0.2,
            clock: Clock | None = None) -> RateRetryBudget:
    return RateRetryBudget(RateBudgetConfig(ttl, per_sec, percent), clock=clock or Clock())


POLICY = RetryPolicy(5, 0.01, 0.1, 2.0, frozenset({"UNAVAILABLE"}), None)


def plan(gate: Any, clock: Clock | None = None) -> RetryPlan:
    return RetryPlan(POLICY, None, throttle=gate, rng=random.Random(1),
                     clock=clock or Clock())


# ------------------------------------------------------------------------ parsing
@pytest.mark.parametrize(("raw", "expected"), [
    ({"budgetPercent": 20, "minRetryConcurrency": 3}, ConcurrencyBudgetConfig(20.0, 3)),
    ({"budgetPercent": 25.5}, ConcurrencyBudgetConfig(25.5, 3)),
    ({"budgetPercent": {"value": 30}}, ConcurrencyBudgetConfig(30.0, 3)),
    ({"minRetryConcurrency": 0, "budgetPercent": 0}, ConcurrencyBudgetConfig(0.0, 0)),
    ({"ttl": "10s", "minRetriesPerSec": 10, "percentCanRetry": 0.2},
     RateBudgetConfig(10.0, 10, 0.2)),
    ({"percentCanRetry": 0.5}, RateBudgetConfig(10.0, 10, 0.5)),
    ({"ttl": "60s", "minRetriesPerSec": "0"}, RateBudgetConfig(60.0, 0, 0.2)),
])
def test_retry_budget_fields_and_defaults(raw: dict[str, Any], expected: object) -> None:
    assert parse_balancing_options({"retryBudget": raw}).retry_budget == expected


@pytest.mark.parametrize(("raw", "path", "words"), [
    ({}, "lbclient.retryBudget", "is empty"),
    ([], "lbclient.retryBudget", "JSON object"),
    ({"budgetPercent": 20, "ttl": "10s"}, "lbclient.retryBudget.ttl",
     "can't be mixed with budgetPercent"),
    ({"budgetPercent": 101}, "lbclient.retryBudget.budgetPercent", "at most 100"),
    ({"budgetPercent": -1}, "lbclient.retryBudget.budgetPercent", "at least 0"),
    ({"budgetPercent": "20%"}, "lbclient.retryBudget.budgetPercent", "finite number"),
    ({"budgetPercent": {}}, "lbclient.retryBudget.budgetPercent.value", "is required"),
    ({"budgetPercent": {"percent": 2}}, "lbclient.retryBudget.budgetPercent.percent",
     "unknown field"),
    ({"minRetryConcurrency": -1}, "lbclient.retryBudget.minRetryConcurrency", "at least 0"),
    ({"minRetryConcurrency": 2.5}, "lbclient.retryBudget.minRetryConcurrency", "integer"),
    ({"ttl": "0.5s"}, "lbclient.retryBudget.ttl", "between 1s and 60s"),
    ({"ttl": "61s"}, "lbclient.retryBudget.ttl", "between 1s and 60s"),
    ({"ttl": "ten"}, "lbclient.retryBudget.ttl", "duration"),
    ({"minRetriesPerSec": -1}, "lbclient.retryBudget.minRetriesPerSec", "at least 0"),
    ({"percentCanRetry": 1001}, "lbclient.retryBudget.percentCanRetry", "at most 1000"),
    ({"budgetpercent": 20}, "lbclient.retryBudget.budgetpercent", "unknown field"),
])
def test_retry_budget_errors_name_the_json_path(raw: Any, path: str, words: str) -> None:
    with pytest.raises(ServiceConfigError) as info:
        parse_service_config({"lbclient": {"retryBudget": raw}})
    assert info.value.path == path
    assert words in str(info.value)


def test_service_config_carries_the_budget_beside_retry_throttling() -> None:
    config = parse_service_config({
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        "lbclient": {"retryBudget": {"budgetPercent": 20}}})
    assert config.retry_throttling == RetryThrottling(10, 0.1)
    assert config.options.retry_budget == ConcurrencyBudgetConfig(20.0, 3)


# ------------------------------------------------------------------------ the gate chosen
def test_retry_budget_wins_over_retry_throttling_and_is_kept_while_unchanged() -> None:
    throttling = RetryThrottling(10, 0.1)
    rate = RateBudgetConfig(10.0, 1, 0.2)
    gate = retry_gate(throttling, rate, None, Active())
    assert isinstance(gate, RateRetryBudget)
    assert retry_gate(throttling, rate, gate, Active()) is gate
    conc = retry_gate(throttling, ConcurrencyBudgetConfig(20.0, 3), gate, Active())
    assert isinstance(conc, ConcurrencyRetryBudget)
    a6 = retry_gate(throttling, None, conc, Active())
    assert isinstance(a6, RetryThrottle) and a6.tokens == 10
    assert retry_gate(throttling, None, a6, Active()) is a6
    assert retry_gate(None, None, a6, Active()) is None


def test_gates_that_replace_each_other_count_in_the_channels_counts() -> None:
    counts = RetryCounts()
    gates: list[Any] = []
    previous = None
    for throttling, budget in [(RetryThrottling(10, 0.1), None),
                               (None, RateBudgetConfig(10.0, 1, 0.2)),
                               (None, ConcurrencyBudgetConfig(0.0, 1)),
                               (RetryThrottling(20, 0.1), None)]:
        previous = retry_gate(throttling, budget, previous, Active(), counts)
        gates.append(previous)
        assert previous is not None and previous.counts is counts
        assert previous.begin_retry() is not None
    assert (counts.granted, counts.refused) == (4, 0)
    # without the channel's counts, a new gate goes on counting in the previous one's
    a6 = retry_gate(RetryThrottling(30, 0.1), None, gates[-1], Active())
    assert a6 is not None and a6.counts is counts


# ------------------------------------------------------------------------ Envoy's budget
def test_concurrency_limit_is_the_larger_of_the_floor_and_the_percentage() -> None:
    active = Active(0)
    clock = Clock()
    budget = envoy(20.0, 3, active, clock)
    for n, limit in [(0, 3), (10, 3), (19, 3), (20, 4), (24, 4), (100, 20), (1001, 200)]:
        active.n = n
        clock.now += 1
        assert budget.limit() == limit, n


def test_concurrency_budget_counts_retries_in_flight_until_they_end() -> None:
    budget = envoy(20.0, 3, Active(5))
    holds = [budget.begin_retry() for _ in range(3)]
    assert all(h is not None for h in holds)
    assert budget.in_flight == 3 and not budget.allows_retry()
    assert budget.begin_retry() is None and budget.refused == 1
    hold = holds.pop()
    assert hold is not None
    budget.end_retry(hold)
    budget.end_retry(hold)                       # twice: no effect
    assert budget.in_flight == 2 and budget.allows_retry()
    assert budget.begin_retry() is not None and budget.granted == 4


def test_a_dropped_hold_gives_its_slot_back() -> None:
    budget = envoy(0.0, 1, Active())
    hold = budget.begin_retry()
    assert hold is not None and budget.begin_retry() is None
    del hold
    gc.collect()
    assert budget.in_flight == 0 and budget.begin_retry() is not None


def test_both_zero_never_retries() -> None:
    assert envoy(0.0, 0, Active(1000)).begin_retry() is None
    assert finagle(10.0, 0, 0.0).begin_retry() is None


def test_active_requests_are_read_at_most_once_per_refresh() -> None:
    active, clock = Active(10), Clock()
    budget = envoy(50.0, 0, active, clock)
    assert budget.limit() == 5
    active.n = 40
    clock.now += 0.0005
    assert budget.limit() == 5 and active.reads == 1
    clock.now += 0.001
    assert budget.limit() == 20 and active.reads == 2


# ------------------------------------------------------------------------ Finagle's budget
def test_rate_budget_reserve_then_a_share_of_calls() -> None:
    clock = Clock()
    budget = finagle(10.0, 1, 0.2, clock)          # reserve: 1/s * 10 s = 10 retries
    assert budget.balance == pytest.approx(10)
    granted = sum(budget.begin_retry() is not None for _ in range(15))
    assert granted == 10 and budget.refused == 5
    for _ in range(24):                            # 24 calls deposit 4.8 retries
        budget.record_call()
    assert sum(budget.begin_retry() is not None for _ in range(10)) == 4
    budget.record_call()                           # the 25th: 5.0
    assert budget.begin_retry() is not None
    assert budget.begin_retry() is None


def test_rate_budget_deposits_and_withdrawals_expire_after_about_ttl() -> None:
    clock = Clock(0.0)
    budget = finagle(10.0, 0, 0.5, clock)
    for _ in range(10):
        budget.record_call()                       # 5 retries' worth, in slot 0
    clock.now = 5.0
    assert budget.begin_retry() is not None        # withdrawn in slot 5
    assert budget.balance == pytest.approx(4)
    clock.now = 9.9                                # slot 9: nothing has expired yet
    assert budget.balance == pytest.approx(4)
    clock.now = 10.0                               # slot 10 replaces slot 0: deposits gone
    assert budget.balance == pytest.approx(-1)
    clock.now = 15.0                               # and the withdrawal of slot 5 too
    assert budget.balance == pytest.approx(0)
    clock.now = 1000.0                             # idle for long: everything expired
    budget.record_call()
    assert budget.balance == pytest.approx(0.5)


def test_rate_budget_bound_over_a_window() -> None:
    """Whatever the mix, retries within one ttl <= reserve + percentCanRetry * calls."""
    clock = Clock(0.0)
    budget = finagle(10.0, 2, 0.2, clock)
    rng = random.Random(7)
    calls = retries = 0
    for _ in range(5000):
        clock.now += 0.0018                       # 9 s in all: within one ttl
        if rng.random() < 0.7:
            budget.record_call()
            calls += 1
        elif budget.begin_retry() is not None:
            retries += 1
    assert retries <= 2 * 10 + 0.2 * calls
    assert retries >= 2 * 10 + 0.2 * calls - 1


# ------------------------------------------------------------------------ retry plans
def test_a_plan_books_its_call_and_holds_a_granted_retry_until_the_next_outcome() -> None:
    budget = envoy(0.0, 1, Active())
    p = plan(budget)
    p.start_attempt(())
    assert p.failed("UNAVAILABLE") is not None     # granted: held through the backoff
    assert budget.in_flight == 1
    other = plan(budget)
    other.start_attempt(())
    assert other.failed("UNAVAILABLE") is None     # the only slot is taken
    p.start_attempt(())
    assert p.failed("UNAVAILABLE") is not None     # its retry ended: it may take another
    p.start_attempt(())
    p.succeeded()
    assert budget.in_flight == 0


@pytest.mark.parametrize("end", ["commit", "ended", "final_outcome"])
def test_commitment_and_the_end_of_the_call_give_the_retry_back(end: str) -> None:
    budget = envoy(0.0, 1, Active())
    p = plan(budget)
    p.start_attempt(())
    assert p.failed("UNAVAILABLE") is not None
    if end == "commit":
        p.committed = True
    elif end == "ended":
        p.ended()
        p.ended()
    else:
        p.final_outcome("INTERNAL")
    assert budget.in_flight == 0


def test_a_retry_refused_for_another_reason_costs_no_budget() -> None:
    budget = finagle(10.0, 1, 0.0)                 # 10 retries, nothing deposited
    p = RetryPlan(RetryPolicy(2, 0.01, 0.1, 2.0, frozenset({"UNAVAILABLE"}), None), None,
                  throttle=budget, rng=random.Random(1), clock=Clock())
    p.start_attempt(())
    assert p.failed("INTERNAL") is None            # not retryable
    assert p.failed("UNAVAILABLE") is not None     # 1 retry
    p.start_attempt(())
    assert p.failed("UNAVAILABLE") is None         # maxAttempts 2
    assert budget.granted == 1 and budget.balance == pytest.approx(9)


def test_each_plan_deposits_once() -> None:
    budget = finagle(10.0, 0, 0.5)
    for _ in range(4):
        plan(budget)
    assert budget.balance == pytest.approx(2)


def test_a6_throttle_is_unchanged_behind_the_gate_interface() -> None:
    throttle = RetryThrottle(10, 0.1)
    attempts = []
    for _ in range(6):
        p = plan(throttle)
        n = 1
        p.start_attempt(())
        while p.failed("UNAVAILABLE") is not None:
            p.start_attempt(())
            n += 1
        attempts.append(n)
    # 5 failures take 10 -> 5 (4 retries, then maxAttempts); at 5 (not above 10/2) every
    # later failure is the call's last
    assert attempts == [5, 1, 1, 1, 1, 1]
    assert throttle.tokens == 0
    # asked last, the gate decided 9 times: 4 retries of the first call, then one refusal
    # per later call (the first call's 5th failure hit maxAttempts: no question asked)
    assert (throttle.granted, throttle.refused) == (4, 5)


# ------------------------------------------------------------------------ hedging plans
HEDGE = HedgingPolicy(4, 0.01, frozenset({"UNAVAILABLE"}))


def test_hedges_take_budget_slots_and_give_them_back() -> None:
    budget = envoy(0.0, 2, Active())
    h = HedgePlan(HEDGE, throttle=budget, deadline=None, clock=Clock())
    actions = h.start()
    assert actions[0] == Send(0) and isinstance(actions[1], Arm)
    out = h.timer_fired(h.armed)
    assert out[0] == Send(1) and budget.in_flight == 1
    out = h.timer_fired(h.armed)
    assert out[0] == Send(2) and budget.in_flight == 2
    assert h.timer_fired(h.armed) == []            # no third slot: no more hedges
    assert h.no_more
    assert h.ended(1, "UNAVAILABLE") == []         # hedge 1 ended: its slot is back
    assert budget.in_flight == 1
    assert h.ended(2, "OK") == [Win(2)]
    assert budget.in_flight == 0


def test_a_cancelled_hedged_call_gives_its_slots_back() -> None:
    budget = envoy(0.0, 3, Active())
    h = HedgePlan(HEDGE, throttle=budget, deadline=None, clock=Clock())
    h.start()
    h.timer_fired(h.armed)
    h.timer_fired(h.armed)
    assert budget.in_flight == 2
    h.cancel()
    assert budget.in_flight == 0


def test_hedging_with_an_empty_rate_budget_sends_the_first_attempt_only() -> None:
    budget = finagle(10.0, 0, 0.0)
    h = HedgePlan(HEDGE, throttle=budget, deadline=None, clock=Clock())
    h.start()
    assert h.timer_fired(h.armed) == []
    assert h.ended(0, "UNAVAILABLE") == [Fail(0)]


def test_a6_refuses_a_hedge_when_it_is_due_and_counts_it() -> None:
    throttle = RetryThrottle(4, 0.1)
    h = HedgePlan(HEDGE, throttle=throttle, deadline=None, clock=Clock())
    h.start()
    assert h.timer_fired(h.armed)[0] == Send(1)        # 4 tokens: above half
    assert h.ended(0, "UNAVAILABLE") == [Arm(0.0, h.armed)]   # 3 tokens: the next at once
    assert h.timer_fired(h.armed)[0] == Send(2)
    assert h.ended(1, "UNAVAILABLE") == [Arm(0.0, h.armed)]   # 2 tokens: at half
    assert h.timer_fired(h.armed) == [] and h.no_more   # refused; attempt 2 still runs
    assert h.ended(2, "UNAVAILABLE") == [Fail(2)]
    assert (throttle.granted, throttle.refused) == (2, 1)
