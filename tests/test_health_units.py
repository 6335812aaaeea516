"""Pure health pieces: thresholds, backoff, the recent window and event delivery."""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass

import pytest

from lbclient.health.events import EndpointEvent, EventBus
from lbclient.health.tracker import Backoff, HealthReport, HealthTracker
from lbclient.health.window import RecentWindow


@dataclass
class Cfg:
    mode: str = "poll"
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2


def probe(ok: bool) -> HealthReport:
    return HealthReport("probe", ok, "SERVING" if ok else "NOT_SERVING")


def test_poll_thresholds() -> None:
    t = HealthTracker(Cfg())
    assert t.state == "pending" and t.healthy is None
    assert t.apply(probe(True)) and t.state == "healthy"      # first answer decides
    assert not t.apply(probe(False)) and not t.apply(probe(False))
    assert t.healthy is True                                  # 2 failures < 3
    assert t.apply(probe(False)) and t.state == "unhealthy"
    assert "3 failed probes in a row" in t.reason
    assert not t.apply(probe(True)) and t.healthy is False    # 1 success < 2
    assert not t.apply(probe(False))                          # the run starts over
    assert not t.apply(probe(True))
    assert t.apply(probe(True)) and t.healthy is True


def test_poll_pending_failure_is_unhealthy_and_reset_returns_to_pending() -> None:
    t = HealthTracker(Cfg())
    assert t.apply(probe(False)) and t.state == "unhealthy"
    t.reset()
    assert t.state == "pending" and t.streak == 0


def test_watch_is_authoritative_and_probes_only_feed_the_streak() -> None:
    t = HealthTracker(Cfg(mode="watch"))
    assert t.apply(HealthReport("watch", True, "SERVING")) and t.healthy is True
    assert not t.apply(probe(False)) and t.healthy is True
    assert t.streak == 0
    t.apply(probe(True))
    t.apply(probe(True))
    assert t.streak == 2 and t.readmit_ok()
    t.reset_streak()
    assert not t.readmit_ok()
    assert t.apply(HealthReport("watch", False, "NOT_SERVING")) and t.healthy is False
    assert t.reason == "NOT_SERVING"
    t.apply(probe(True))
    t.apply(probe(True))
    assert not t.readmit_ok()                 # the stream says NOT_SERVING
    assert t.apply(HealthReport("watch", True, "SERVING"))
    assert t.apply(HealthReport("stream_error", False, "health stream failed: INTERNAL"))
    assert t.healthy is False and "INTERNAL" in t.reason


def test_unimplemented_disables_checking_as_healthy() -> None:
    t = HealthTracker(Cfg(mode="watch"))
    assert t.apply(HealthReport("unimplemented", True, "no health service"))
    assert t.state == "disabled" and t.healthy is True and t.readmit_ok()
    assert not t.apply(HealthReport("watch", False))          # nothing changes it now


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(random.Random(1), initial=1.0, multiplier=2.0, maximum=5.0, jitter=0.0)
    assert [b.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    b.reset()
    assert b.next_delay() == 1.0
    j = Backoff(random.Random(2))
    delays = [j.next_delay() for _ in range(3)]
    assert 0.8 <= delays[0] <= 1.2 and 1.28 <= delays[1] <= 1.92


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_recent_window_forgets_old_buckets() -> None:
    clock = Clock()
    w = RecentWindow(clock, span=10.0, slots=10)
    w.add(False)
    w.add(True)
    clock.t += 5
    w.add(True)
    assert w.counts() == (3, 2)
    clock.t += 5.5                      # the first bucket is now older than 10 s
    assert w.counts() == (1, 1)
    clock.t += 100
    assert w.counts() == (0, 0)
    w.add(False)
    assert w.counts() == (1, 0)
    with pytest.raises(ValueError):
        RecentWindow(clock, span=0)


def test_events_are_delivered_in_order_and_listener_errors_are_contained(
        caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    got: list[str] = []

    def bad(e: EndpointEvent) -> None:
        raise RuntimeError("boom")

    bus.add_listener(bad)
    bus.add_listener(lambda e: got.append(e.kind))
    caplog.set_level(logging.INFO, logger="lbclient.events")
    for kind in ("added", "ejected", "readmitted"):
        bus.post(EndpointEvent(kind, "a:1", 1.0, "why"))  # type: ignore[arg-type]
    bus.flush()
    assert got == ["added", "ejected", "readmitted"]
    assert "endpoint a:1: ejected (why)" in caplog.text
    assert "endpoint event listener failed" in caplog.text
    assert [r.levelname for r in caplog.records if "ejected" in r.getMessage()] == ["WARNING"]
    bus.remove_listener(bad)
    bus.post(EndpointEvent("health_changed", "a:1", 2.0, "NOT_SERVING", healthy=False))
    bus.flush()
    assert got[-1] == "health_changed"
    assert str(EndpointEvent("health_changed", "a:1", 2.0, "x", healthy=False)) == \
        "endpoint a:1: unhealthy (x)"


def test_listener_may_post_and_threads_never_deliver_concurrently() -> None:
    bus = EventBus()
    seen: list[str] = []
    active = [0]
    overlap = [False]

    def listener(e: EndpointEvent) -> None:
        active[0] += 1
        if active[0] > 1:
            overlap[0] = True
        if e.address == "first":               # re-entrant post + flush
            bus.post(EndpointEvent("removed", "second", 0.0))
            bus.flush()
        seen.append(e.address)
        active[0] -= 1

    bus.add_listener(listener)
    bus.post(EndpointEvent("added", "first", 0.0))
    bus.flush()
    assert seen == ["first", "second"]

    def worker(i: int) -> None:
        for j in range(200):
            bus.post(EndpointEvent("added", f"{i}-{j}", 0.0))
            bus.flush()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    bus.flush()
    assert len(seen) == 2 + 800 and not overlap[0]
    for i in range(4):                       # each thread's events stay in its order
        mine = [s for s in seen if s.startswith(f"{i}-")]
        assert mine == [f"{i}-{j}" for j in range(200)]
