"""The balancer's per-event cost does not depend on idle endpoints (issue 17).

Fake connections and a manual clock; exact counts, no sleeping:

* a connection that was not READY flapping between CONNECTING and TRANSIENT_FAILURE,
  or a health answer that changes no eligibility, rebuilds no picker and tells no
  listener (no queued call wakes up);
* the counts the balancer keeps (aggregate state, "why no ready endpoint", whether calls
  wait, the connected and fit endpoints) equal a recount from scratch after every event
  of random sequences, and what is published equals what the former whole-walk
  algorithm computed from scratch (a property test over random event sequences).
"""

from __future__ import annotations

import collections
import random
from collections.abc import Sequence
from typing import Any

import pytest
from helpers import Clock, Factory, HealthFactory, NoTimers
from hypothesis import given, settings
from hypothesis import strategies as st

from lbclient import CallOutcome, Connectivity, Endpoint, PickError, PickInfo
from lbclient.balancer.balancer import Balancer
from lbclient.balancer.picker import Candidate, FailingPicker, Picker
from lbclient.balancer.policy import Policy, PolicySpec
from lbclient.balancer.tally import RecordTally
from lbclient.config import HealthCheckConfig, parse_service_config
from lbclient.connectivity import aggregate
from lbclient.health.options import parse_balancing_options
from lbclient.health.tracker import HealthReport
from lbclient.policies.round_robin import RoundRobinPicker


class Counting(Policy):
    """Round robin that counts its picker builds."""

    builds = 0

    def build_picker(self, candidates: Sequence[Candidate]) -> Picker:
        Counting.builds += 1
        return RoundRobinPicker(candidates, 0)


COUNTING = PolicySpec("counting", lambda raw, path: raw, Counting)


def _addresses(n: int) -> list[str]:
    return [f"10.2.{i // 250}.{i % 250 + 1}:80" for i in range(n)]


class World:
    def __init__(self, n: int, health: bool = False) -> None:
        self.factory, self.health, self.clock = Factory(), HealthFactory(), Clock()
        self.bal = Balancer(self.factory, scheduler=NoTimers(), clock=self.clock,
                            rng=random.Random(1), health_factory=self.health)
        if health:
            self.bal.set_health_check(HealthCheckConfig())
        self.bal.set_policy(COUNTING, {})
        self.addresses = _addresses(n)
        self.bal.update_endpoints([Endpoint(a) for a in self.addresses])
        self.told = 0
        self.bal.add_listener(self._told)

    def _told(self) -> None:
        self.told += 1

    def state(self, address: str, state: Connectivity) -> None:
        self.factory.handles[address].on_state(state)


def test_a_flapping_endpoint_that_was_not_ready_rebuilds_nothing() -> None:
    w = World(300)
    for a in w.addresses[:3]:
        w.state(a, Connectivity.READY)
    picker, generation, builds, told = w.bal.picker, w.bal.generation, Counting.builds, w.told
    for a in w.addresses[3:]:
        w.state(a, Connectivity.CONNECTING)
    for _ in range(20):
        for a in w.addresses[3:]:
            w.state(a, Connectivity.TRANSIENT_FAILURE)
            w.state(a, Connectivity.CONNECTING)
    assert Counting.builds == builds
    assert w.bal.picker is picker and w.bal.generation == generation
    assert w.told == told                        # no listener, so no queued call, woken
    assert w.bal.state is Connectivity.READY
    # the counts followed all of it
    assert w.bal._tally.summary() == RecordTally.recount(w.bal.records()).summary()
    # an eligibility change still rebuilds, exactly once
    w.state(w.addresses[200], Connectivity.READY)
    assert Counting.builds == builds + 1 and w.told == told + 1
    assert {i.address for i in w.bal.snapshot() if i.eligible} == {
        *w.addresses[:3], w.addresses[200]}


def test_a_health_answer_that_changes_no_eligibility_rebuilds_nothing() -> None:
    w = World(4, health=True)
    for a in w.addresses:
        w.state(a, Connectivity.READY)
        w.health.report[a](HealthReport("watch", True))
    builds, told = Counting.builds, w.told
    w.health.report[w.addresses[0]](HealthReport("watch", True))         # no change at all
    w.health.report[w.addresses[1]](HealthReport("unimplemented"))       # healthy -> disabled
    assert w.bal.snapshot()[1].health == "disabled"
    assert Counting.builds == builds and w.told == told
    w.health.report[w.addresses[2]](HealthReport("watch", False))        # eligibility changes
    assert Counting.builds == builds + 1 and w.told == told + 1
    w.health.report[w.addresses[2]](HealthReport("stream_error"))        # still unhealthy
    assert Counting.builds == builds + 1


def test_the_failing_picker_follows_the_counts_and_wakes_only_on_wait_or_fail() -> None:
    """Nothing eligible: the reason follows every change (silently), listeners hear only
    of a change between "calls wait" and "calls fail fast" (and of the channel state)."""
    w = World(3)
    for a in w.addresses:
        w.state(a, Connectivity.CONNECTING)
    told = w.told
    w.state(w.addresses[0], Connectivity.TRANSIENT_FAILURE)
    picker = w.bal.picker
    assert isinstance(picker, FailingPicker) and picker.queue
    assert picker.reason == "no ready endpoints: 2 connecting, 1 failed"
    assert w.told == told                    # still "wait": nothing to tell
    w.state(w.addresses[1], Connectivity.TRANSIENT_FAILURE)
    w.state(w.addresses[2], Connectivity.TRANSIENT_FAILURE)
    picker = w.bal.picker
    assert isinstance(picker, FailingPicker) and not picker.queue
    assert picker.reason == "no ready endpoints: 3 failed"
    assert w.told == told + 1                # now calls fail fast (and the state is TF)
    assert w.bal.state is Connectivity.TRANSIENT_FAILURE
    w.state(w.addresses[0], Connectivity.CONNECTING)     # reconnecting after a failure
    picker = w.bal.picker
    assert isinstance(picker, FailingPicker) and not picker.queue
    assert picker.reason == "no ready endpoints: 1 connecting, 2 failed"
    assert w.bal.state is Connectivity.CONNECTING
    assert w.told == told + 2                # the channel state changed, subscribers hear


def test_one_change_costs_the_same_at_10000_endpoints() -> None:
    """Not a timing: the work an event does is counted. A flapping endpoint among
    10,000 reads only its own record (classify calls), whatever n is."""
    reads: list[int] = []
    for n in (100, 10_000):
        w = World(n)
        for a in w.addresses[:3]:
            w.state(a, Connectivity.READY)
        calls = [0]
        original = type(w.bal.records()[0]).classify

        def counting(rec: Any, original: Any = original, calls: list[int] = calls) -> Any:
            calls[0] += 1
            return original(rec)

        cls = type(w.bal.records()[0])
        cls.classify = counting           # type: ignore[method-assign]
        try:
            w.state(w.addresses[50], Connectivity.CONNECTING)
            w.state(w.addresses[50], Connectivity.TRANSIENT_FAILURE)
        finally:
            cls.classify = original       # type: ignore[method-assign]
        reads.append(calls[0])
        w.bal.close()
    assert reads == [2, 2]


# ---------------------------------------------------------------------- property test
ADDRESSES = _addresses(8)
STATES = [Connectivity.READY, Connectivity.TRANSIENT_FAILURE, Connectivity.IDLE,
          Connectivity.CONNECTING]
OUTLIER = {"outlier_detection": {"consecutiveFailures": 2, "baseEjectionTime": "1s",
                                 "interval": "0.5s", "maxEjectionPercent": 100,
                                 "childPolicy": [{"round_robin": {}}]}}
PRIORITY = {"priority": {"childPolicy": [{"round_robin": {}}]}}


def _policy(raw: dict[str, Any]) -> Any:
    config = parse_service_config({"loadBalancingConfig": [raw]})
    return config.lb.spec, config.lb.config


def _from_scratch(bal: Balancer) -> dict[str, Any]:
    """What the balancer published before it counted incrementally: every record
    walked (the former _rebuild_locked, _queue_calls and _no_endpoint_reason)."""
    recs = bal.records()
    connected = [r for r in recs if r.connected()]
    fit = [r for r in connected if r.fit()]
    threshold = bal._options.panic_threshold
    panic = False
    policy = bal.policy
    if threshold > 0 and connected and policy is not None:
        share = policy.available_share([r.endpoint for r in fit], [r.endpoint for r in connected])
        panic = share * 100.0 < threshold
    chosen = connected if panic else fit
    queue = any((r.connectivity in (Connectivity.IDLE, Connectivity.CONNECTING)
                 and not r.failed_since_ready)
                or (r.connectivity is Connectivity.READY and r.tracker is not None
                    and r.tracker.healthy is None) for r in recs)
    return {"state": aggregate([r.connectivity for r in recs]) if recs
            else Connectivity.TRANSIENT_FAILURE,
            "chosen": [r.address for r in chosen], "panic": panic, "queue": queue,
            "reasons": collections.Counter(r.unfit_reason() for r in recs)}


def _check(bal: Balancer, reaches_all: bool) -> None:
    assert bal._tally.summary() == RecordTally.recount(bal.records()).summary()
    want = _from_scratch(bal)
    assert bal.state is want["state"]
    assert bal.panic == want["panic"]
    eligible = [i.address for i in bal.snapshot() if i.eligible]
    assert eligible == want["chosen"]
    picker = bal.picker
    if not want["chosen"]:
        assert isinstance(picker, FailingPicker)
        assert picker.queue == want["queue"]
        if bal.records():
            parts = picker.reason.removeprefix("no ready endpoints: ").split(", ")
            got = collections.Counter({p.split(" ", 1)[1]: int(p.split(" ", 1)[0])
                                       for p in parts})
            assert got == want["reasons"]
        return
    picked = set()
    for _ in range(3 * len(want["chosen"])):
        picked.add(picker.pick(PickInfo("/svc/M")).candidate.address)
    assert picked <= set(want["chosen"])
    if reaches_all:
        assert picked == set(want["chosen"])     # round robin reaches every one


EVENT = st.tuples(st.sampled_from(["state", "state", "state", "health", "fail", "sweep",
                                   "update", "options", "health_config", "batch"]),
                  st.integers(0, 2**32 - 1))


def _apply(w: World, what: str, seed: int) -> None:
    rng = random.Random(seed)
    bal = w.bal
    members = [r.address for r in bal.records()]
    if what == "state" and members:
        w.state(rng.choice(members), rng.choice(STATES))
    elif what == "health" and members:
        report = w.health.report.get(rng.choice(members))
        if report is not None:
            report(rng.choice([HealthReport("watch", True), HealthReport("watch", False),
                               HealthReport("unimplemented"), HealthReport("stream_error"),
                               HealthReport("probe", rng.random() < 0.5)]))
    elif what == "fail":
        try:
            for _ in range(2):
                result = bal.picker.pick(PickInfo("/svc/M"))
                if result.on_done is not None:
                    result.on_done(CallOutcome("UNAVAILABLE", 0.001))
        except PickError:
            pass
    elif what == "sweep":
        w.clock.t += rng.choice([0.5, 1.0, 3.0])
        bal.sweep()
    elif what == "update":
        chosen = rng.sample(ADDRESSES, rng.randint(0, len(ADDRESSES)))
        bal.update_endpoints([Endpoint(a, rng.randint(1, 3), {"priority": rng.randint(0, 1)})
                              for a in chosen])
    elif what == "options":
        bal.set_options(parse_balancing_options(
            {"panicThreshold": rng.choice([0, 50, 80])}))
    elif what == "health_config":
        bal.set_health_check(rng.choice([None, HealthCheckConfig(),
                                         HealthCheckConfig(mode="poll")]))
    elif what == "batch" and members:
        with bal.batch():
            for _ in range(rng.randint(1, 6)):
                w.state(rng.choice(members), rng.choice(STATES))
                _check_counts_only(bal)


def _check_counts_only(bal: Balancer) -> None:
    assert bal._tally.summary() == RecordTally.recount(bal.records()).summary()


@pytest.mark.parametrize("raw", [OUTLIER, PRIORITY], ids=["outlier_detection", "priority"])
@settings(max_examples=60, deadline=None)
@given(events=st.lists(EVENT, min_size=1, max_size=80))
def test_counts_and_pickers_match_a_recount_after_any_events(
        raw: dict[str, Any], events: list[tuple[str, int]]) -> None:
    w = World(0)
    w.bal.set_health_check(HealthCheckConfig())
    w.bal.set_options(parse_balancing_options({"panicThreshold": 50}))
    w.bal.set_policy(*_policy(raw))
    w.bal.update_endpoints([Endpoint(a) for a in ADDRESSES])
    _check(w.bal, raw is OUTLIER)
    for what, seed in events:
        _apply(w, what, seed)
        _check(w.bal, raw is OUTLIER)
    w.bal.close()
