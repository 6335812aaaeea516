"""The balancer's health logic without grpc: fake connections, fake probers, a fake clock
and a manual scheduler, so ejection, readmission, panic and slow start are exact."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from helpers import ConnectionStub, FactoryStub

from lbclient.balancer.balancer import Balancer
from lbclient.balancer.picker import CallOutcome, Candidate, FailingPicker, PickInfo
from lbclient.balancer.policy import Policy, PolicySpec
from lbclient.config import HealthCheckConfig, parse_service_config
from lbclient.connectivity import Connectivity
from lbclient.endpoint import Endpoint
from lbclient.health.codes import SERVER_FAILURE_CODES
from lbclient.health.events import EndpointEvent
from lbclient.health.options import BalancingOptions, SlowStartConfig
from lbclient.health.tracker import HealthReport


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Timer:
    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when, self.fn, self.cancelled = when, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class ManualScheduler:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.timers: list[Timer] = []

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        t = Timer(self.clock.t + delay, fn)
        self.timers.append(t)
        return t

    def advance(self, seconds: float) -> None:
        end = self.clock.t + seconds
        for _ in range(10_000):
            due = [t for t in self.timers if not t.cancelled and t.when <= end]
            if not due:
                break
            t = min(due, key=lambda x: x.when)
            self.timers.remove(t)
            self.clock.t = max(self.clock.t, t.when)
            t.fn()
        self.clock.t = end


class Handle(ConnectionStub):
    def __init__(self, endpoint: Endpoint, on_state: Callable[[Connectivity], None]) -> None:
        self.endpoint, self.address, self.on_state = endpoint, endpoint.address, on_state
        self.closed = False

    def request_connection(self) -> None:
        pass

    def shutdown(self) -> None:
        self.closed = True


class Factory(FactoryStub):
    def __init__(self) -> None:
        self.handles: dict[str, Handle] = {}

    def create(self, endpoint: Endpoint, on_state: Callable[[Connectivity], None]) -> Handle:
        h = Handle(endpoint, on_state)
        self.handles[endpoint.address] = h
        return h


class Checker:
    def __init__(self, report: Callable[[HealthReport], None]) -> None:
        self.report, self.probing, self.stopped = report, False, False

    def set_probing(self, on: bool) -> None:
        self.probing = on

    def stop(self) -> None:
        self.stopped = True

    def join(self, timeout: float) -> None:
        pass


class HealthFactory:
    def __init__(self) -> None:
        self.started: dict[str, list[Checker]] = {}

    def start(self, handle: Handle, config: Any,
              report: Callable[[HealthReport], None]) -> Checker:
        c = Checker(report)
        self.started.setdefault(handle.address, []).append(c)
        return c

    def current(self, address: str) -> Checker:
        return self.started[address][-1]


class Recorder(Policy):
    """Round robin that remembers the candidates (and weights) it was given."""

    last: list[Candidate] = []

    def build_picker(self, candidates: Sequence[Candidate]) -> Any:
        Recorder.last = list(candidates)
        from lbclient.policies.round_robin import RoundRobinPicker
        return RoundRobinPicker(candidates, 0)


RECORDER = PolicySpec("recorder", lambda raw, path: raw, Recorder)
ADDRS = [f"10.0.0.{i}:80" for i in range(1, 7)]
WATCH = HealthCheckConfig(mode="watch")


class World:
    def __init__(self, n: int = 3, health: HealthCheckConfig | None = None,
                 options: BalancingOptions | None = None, lb: Any = None) -> None:
        self.clock = Clock()
        self.sched = ManualScheduler(self.clock)
        self.factory = Factory()
        self.hf = HealthFactory()
        self.bal = Balancer(self.factory, clock=self.clock, rng=random.Random(7),
                            scheduler=self.sched, health_factory=self.hf)
        self.events: list[EndpointEvent] = []
        self.bal.add_event_listener(self.events.append)
        if options is not None:
            self.bal.set_options(options)
        if health is not None:
            self.bal.set_health_check(health)
        if lb is None:
            self.bal.set_policy(RECORDER, {})
        else:
            choice = parse_service_config({"loadBalancingConfig": [lb]}).lb
            self.bal.set_policy(choice.spec, choice.config)
        self.bal.update_endpoints([Endpoint(a) for a in ADDRS[:n]])

    def ready(self, *addresses: str) -> None:
        for a in addresses or tuple(self.factory.handles):
            self.factory.handles[a].on_state(Connectivity.READY)

    def watch(self, address: str, serving: bool) -> None:
        self.hf.current(address).report(
            HealthReport("watch", serving, "SERVING" if serving else "NOT_SERVING"))

    def picked(self) -> set[str]:
        picker = self.bal.picker
        if isinstance(picker, FailingPicker):
            return set()
        return {picker.pick(PickInfo("/s/m")).candidate.address for _ in range(60)}

    def call(self, code: str, address: str | None = None) -> str:
        """Place one call (on ``address`` if given) through the picker and end it."""
        for _ in range(60):
            res = self.bal.picker.pick(PickInfo("/s/m"))
            if address is None or res.candidate.address == address:
                break
        else:
            raise AssertionError(f"{address} is not picked")
        res.candidate.stats.begin()
        outcome = CallOutcome(code, 0.01)
        res.candidate.stats.end(outcome, code in SERVER_FAILURE_CODES)
        if res.on_done is not None:
            res.on_done(outcome)
        return res.candidate.address

    def info(self, address: str) -> Any:
        return next(i for i in self.bal.snapshot() if i.address == address)

    def kinds(self, address: str) -> list[str]:
        return [e.kind for e in self.events if e.address == address]


def test_pending_health_is_not_eligible_and_unhealthy_is_skipped() -> None:
    w = World(3, health=WATCH)
    w.ready()
    assert w.picked() == set()
    assert "3 waiting for health" in str(w.bal.picker.reason)  # type: ignore[attr-defined]
    assert w.info(ADDRS[0]).health == "pending"
    for a in ADDRS[:3]:
        w.watch(a, True)
    assert w.picked() == set(ADDRS[:3])
    w.watch(ADDRS[1], False)
    assert w.picked() == {ADDRS[0], ADDRS[2]}
    info = w.info(ADDRS[1])
    assert (info.healthy, info.health, info.eligible, info.health_reason) == (
        False, "unhealthy", False, "NOT_SERVING")
    w.watch(ADDRS[1], True)
    assert w.picked() == set(ADDRS[:3])
    assert w.kinds(ADDRS[1]) == ["added", "health_changed", "health_changed",
                                 "health_changed"]
    assert [e.healthy for e in w.events if e.kind == "health_changed"
            and e.address == ADDRS[1]] == [True, False, True]


def test_checkers_follow_the_connection_and_stale_reports_are_ignored() -> None:
    w = World(2, health=WATCH)
    w.ready()
    first = w.hf.current(ADDRS[0])
    w.factory.handles[ADDRS[0]].on_state(Connectivity.IDLE)
    assert first.stopped and w.info(ADDRS[0]).health == "pending"
    first.report(HealthReport("watch", True))            # late: ignored
    assert w.info(ADDRS[0]).health == "pending"
    w.ready(ADDRS[0])
    second = w.hf.current(ADDRS[0])
    assert second is not first and not second.stopped
    w.bal.update_endpoints([Endpoint(ADDRS[1])])          # removed: probing stops at once
    assert second.stopped and w.factory.handles[ADDRS[0]].closed
    assert w.kinds(ADDRS[0])[-1] == "removed"
    other = w.hf.current(ADDRS[1])
    w.bal.close()
    assert other.stopped


def test_health_check_can_be_turned_off() -> None:
    w = World(2, health=WATCH)
    w.ready()
    w.watch(ADDRS[0], False)
    w.watch(ADDRS[1], True)
    assert w.picked() == {ADDRS[1]}
    checker = w.hf.current(ADDRS[0])
    w.bal.set_health_check(None)
    assert checker.stopped and w.picked() == set(ADDRS[:2])
    assert w.info(ADDRS[0]).health == "unchecked"


def test_unimplemented_counts_as_healthy(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lbclient.health")
    w = World(2, health=WATCH)
    w.ready()
    for _ in range(2):                                    # twice: logged once
        w.hf.current(ADDRS[0]).report(HealthReport("unimplemented", True, "UNIMPLEMENTED"))
        w.factory.handles[ADDRS[0]].on_state(Connectivity.IDLE)
        w.ready(ADDRS[0])
    w.hf.current(ADDRS[0]).report(HealthReport("unimplemented", True, "UNIMPLEMENTED"))
    w.hf.current(ADDRS[1]).report(HealthReport("unimplemented", True, "UNIMPLEMENTED"))
    assert ADDRS[0] in w.picked() and w.info(ADDRS[0]).health == "disabled"
    # once per channel (balancer), however many endpoints and reconnections, at INFO
    said = [r for r in caplog.records if "does not implement grpc.health.v1" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.INFO]


def test_panic_threshold_picks_among_all_connected_endpoints() -> None:
    w = World(4, health=WATCH)
    w.ready()
    for a in ADDRS[:4]:
        w.watch(a, True)
    w.watch(ADDRS[0], False)
    w.watch(ADDRS[1], False)                             # 2 of 4 fit: 50%, no panic
    assert w.picked() == {ADDRS[2], ADDRS[3]} and not w.bal.panic
    w.watch(ADDRS[2], False)                             # 1 of 4: 25% < 50%
    assert w.bal.panic and w.picked() == set(ADDRS[:4])
    assert all(i.panic and i.eligible for i in w.bal.snapshot())
    w.watch(ADDRS[2], True)
    assert not w.bal.panic and w.picked() == {ADDRS[2], ADDRS[3]}
    # disconnected endpoints are not part of the share: only connected ones
    w.factory.handles[ADDRS[3]].on_state(Connectivity.TRANSIENT_FAILURE)
    assert w.bal.panic and w.picked() == set(ADDRS[:3])   # 1 of 3 connected is fit


def test_panic_threshold_zero_disables_it() -> None:
    w = World(2, health=WATCH, options=BalancingOptions(panic_threshold=0))
    w.ready()
    w.watch(ADDRS[0], False)
    w.watch(ADDRS[1], True)
    assert w.picked() == {ADDRS[1]}
    w.watch(ADDRS[1], False)
    assert w.picked() == set()
    assert "2 unhealthy" in w.bal.picker.reason  # type: ignore[attr-defined]


OD = {"outlier_detection": {"interval": "10s", "baseEjectionTime": "30s",
                            "consecutiveFailures": 3, "maxEjectionPercent": 100,
                            "childPolicy": [{"round_robin": {}}]}}


def test_consecutive_failures_eject_at_once_and_readmit_after_the_time() -> None:
    w = World(3, lb=OD)
    w.ready()
    for _ in range(2):
        w.call("UNAVAILABLE", ADDRS[0])
    w.call("OK", ADDRS[0])                             # the run restarts
    for _ in range(3):
        w.call("INTERNAL", ADDRS[0])
    assert w.picked() == {ADDRS[1], ADDRS[2]}
    info = w.info(ADDRS[0])
    assert info.ejected and info.ejected_until == 1030.0 and info.ejections == 1
    assert info.eject_reason == "3 consecutive failures"
    assert (info.recent_calls, info.recent_failures) == (6, 5)
    ev = [e for e in w.events if e.kind == "ejected"]
    assert len(ev) == 1 and ev[0].ejected_until == 1030.0
    w.sched.advance(20)                                  # sweeps at 1010, 1020
    assert w.info(ADDRS[0]).ejected
    w.sched.advance(10)                                  # the sweep at 1030 readmits
    assert w.picked() == set(ADDRS[:3]) and not w.info(ADDRS[0]).ejected
    assert w.kinds(ADDRS[0])[-1] == "readmitted"
    for _ in range(3):
        w.call("UNAVAILABLE", ADDRS[0])
    assert w.info(ADDRS[0]).ejected_until == pytest.approx(w.clock.t + 60)   # x2


def test_max_ejection_and_never_the_last_endpoint_then_panic() -> None:
    w = World(3, lb=OD)
    w.ready()
    for a in ADDRS[:3]:
        for _ in range(3):
            w.call("UNAVAILABLE", a) if a in w.picked() else None
    ejected = [i.address for i in w.bal.snapshot() if i.ejected]
    assert len(ejected) == 2                              # never the last of 3
    assert w.bal.panic and w.picked() == set(ADDRS[:3])   # 1 of 3 fit < 50%
    low = World(3, lb={"outlier_detection": {**OD["outlier_detection"],
                                             "maxEjectionPercent": 10}})
    low.ready()
    for a in ADDRS[:3]:
        for _ in range(3):
            low.call("UNAVAILABLE", a) if a in low.picked() else None
    assert sum(i.ejected for i in low.bal.snapshot()) == 1    # 1/3 = 33% >= 10%


def test_failure_percentage_ejects_at_the_interval() -> None:
    fp = {"outlier_detection": {"interval": "1s", "baseEjectionTime": "5s",
                                "failurePercentageEjection": {"minimumHosts": 3,
                                                              "requestVolume": 10},
                                "childPolicy": [{"round_robin": {}}]}}
    w = World(3, lb=fp)
    w.ready()
    for _ in range(10):
        w.call("OK", ADDRS[1])
        w.call("OK", ADDRS[2])
    for _ in range(12):
        w.call("UNAVAILABLE", ADDRS[0])
    assert not w.info(ADDRS[0]).ejected                  # not before the interval
    w.sched.advance(1.0)
    info = w.info(ADDRS[0])
    assert info.ejected and "failure percentage" in info.eject_reason
    assert w.picked() == {ADDRS[1], ADDRS[2]}


def test_readmission_waits_for_good_probes_when_health_checking_is_on() -> None:
    w = World(3, health=HealthCheckConfig(mode="watch", healthy_threshold=2), lb=OD)
    w.ready()
    for a in ADDRS[:3]:
        w.watch(a, True)
    for _ in range(3):
        w.call("UNAVAILABLE", ADDRS[0])
    checker = w.hf.current(ADDRS[0])
    assert checker.probing                               # Check probes while ejected
    checker.report(HealthReport("probe", True, "SERVING"))
    w.sched.advance(30)                                  # time over, 1 good probe < 2
    info = w.info(ADDRS[0])
    assert info.ejected and "awaiting 2 good health probes" in info.eject_reason
    checker.report(HealthReport("probe", False, "probe timed out"))
    checker.report(HealthReport("probe", True, "SERVING"))
    assert w.info(ADDRS[0]).ejected                      # the run restarted
    checker.report(HealthReport("probe", True, "SERVING"))
    assert not w.info(ADDRS[0]).ejected and not checker.probing
    assert w.picked() == set(ADDRS[:3])


def test_switching_away_from_outlier_detection_readmits() -> None:
    w = World(3, lb=OD)
    w.ready()
    for _ in range(3):
        w.call("UNAVAILABLE", ADDRS[0])
    assert w.info(ADDRS[0]).ejected
    same = parse_service_config({"loadBalancingConfig": [
        {"outlier_detection": {**OD["outlier_detection"], "consecutiveFailures": 4}}]}).lb
    w.bal.set_policy(same.spec, same.config)             # a new config keeps the state
    assert w.info(ADDRS[0]).ejected
    w.bal.set_policy(RECORDER, {})
    assert not w.info(ADDRS[0]).ejected and w.picked() == set(ADDRS[:3])
    assert w.kinds(ADDRS[0])[-1] == "readmitted"
    assert not [t for t in w.sched.timers if not t.cancelled and t.fn == w.bal.sweep]


def test_slow_start_ramps_new_and_readmitted_endpoints() -> None:
    slow = BalancingOptions(slow_start=SlowStartConfig(window=10.0, aggression=1.0,
                                                       min_weight_percent=10.0))
    w = World(2, options=slow)
    w.ready(ADDRS[0])
    w.sched.advance(20)                                  # ADDRS[0] finished its ramp
    assert {c.address: c.weight for c in Recorder.last} == {ADDRS[0]: 1.0}
    w.ready(ADDRS[1])
    weights = {c.address: c.weight for c in Recorder.last}
    assert weights == {ADDRS[0]: 1.0, ADDRS[1]: pytest.approx(0.1)}
    assert w.info(ADDRS[1]).slow_start == pytest.approx(0.0)
    w.sched.advance(5.0)                                 # ramp ticks rebuild the picker
    assert {c.address: c.weight for c in Recorder.last}[ADDRS[1]] == pytest.approx(0.5)
    assert w.info(ADDRS[1]).effective_weight == pytest.approx(0.5)
    assert w.info(ADDRS[1]).slow_start == pytest.approx(0.5)
    w.sched.advance(5.0)
    assert {c.address: c.weight for c in Recorder.last}[ADDRS[1]] == 1.0
    assert w.info(ADDRS[1]).slow_start is None
    assert not [t for t in w.sched.timers if not t.cancelled]   # no more ticks


def test_slow_start_after_health_recovers_but_not_after_a_reconnect() -> None:
    slow = BalancingOptions(slow_start=SlowStartConfig(window=10.0))
    w = World(2, health=WATCH, options=slow)
    w.ready()
    w.watch(ADDRS[0], True)
    w.watch(ADDRS[1], True)
    w.sched.advance(30)
    w.factory.handles[ADDRS[0]].on_state(Connectivity.IDLE)
    w.ready(ADDRS[0])
    w.watch(ADDRS[0], True)
    assert w.info(ADDRS[0]).slow_start is None           # a reconnect is not a ramp
    w.watch(ADDRS[0], False)
    w.watch(ADDRS[0], True)
    assert w.info(ADDRS[0]).slow_start == pytest.approx(0.0)
    assert {c.address: c.weight for c in Recorder.last}[ADDRS[0]] == pytest.approx(0.1)


def test_slow_start_after_readmission() -> None:
    w = World(3, lb=OD, options=BalancingOptions(slow_start=SlowStartConfig(window=4.0)))
    w.ready()
    w.sched.advance(10)
    for _ in range(3):
        w.call("UNAVAILABLE", ADDRS[0])
    w.sched.advance(30)
    assert not w.info(ADDRS[0]).ejected
    assert w.info(ADDRS[0]).effective_weight == pytest.approx(0.25)   # max(0, 1 s)/4


def test_no_endpoint_reason_counts_each_cause() -> None:
    w = World(3, health=WATCH, options=BalancingOptions(panic_threshold=0))
    w.ready(ADDRS[0], ADDRS[1])
    w.watch(ADDRS[0], False)
    reason = w.bal.picker.reason  # type: ignore[attr-defined]
    assert reason.startswith("no ready endpoints:")
    assert "1 unhealthy" in reason and "1 waiting for health" in reason and "1 idle" in reason


def test_slow_start_after_coming_back_from_failed_connections() -> None:
    """A graceful reconnect (IDLE, e.g. GOAWAY) is not a ramp; coming back after failed
    connection attempts (a crash and restart) is, as its caches are cold."""
    slow = BalancingOptions(slow_start=SlowStartConfig(window=10.0))
    w = World(2, options=slow)
    w.ready()
    w.sched.advance(30)
    handle = w.factory.handles[ADDRS[0]]
    handle.on_state(Connectivity.IDLE)
    w.ready(ADDRS[0])
    assert w.info(ADDRS[0]).slow_start is None
    handle.on_state(Connectivity.TRANSIENT_FAILURE)
    handle.on_state(Connectivity.CONNECTING)
    w.ready(ADDRS[0])
    assert w.info(ADDRS[0]).slow_start == pytest.approx(0.0)
    assert {c.address: c.weight for c in Recorder.last}[ADDRS[0]] == pytest.approx(0.1)
