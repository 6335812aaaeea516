"""The sync channel's connectivity sweep does a bounded amount of work per sweep, however
many endpoints sit idle, and still reads every endpoint in turn (fake connections and a
manual scheduler: exact counts, no sleeping)."""

from __future__ import annotations

import math
from collections.abc import Callable

from lbclient._sync.subchannel import ConnectivityMonitor
from lbclient.connectivity import Connectivity


class Timer:
    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn, self.cancelled = fn, False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    def __init__(self) -> None:
        self.timers: list[tuple[float, Timer]] = []

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        t = Timer(fn)
        self.timers.append((delay, t))
        return t

    def run(self, kind: str) -> None:
        """Run the pending timers of one kind ("fast" or "sweep") once."""
        due = [(d, t) for d, t in self.timers if not t.cancelled and
               ((d >= 0.05) == (kind == "sweep"))]
        for entry in due:
            self.timers.remove(entry)
            entry[1].fn()


class Sub:
    """A settled connection that counts how often the monitor reads it."""

    def __init__(self) -> None:
        self.reads = 0
        self.polls = 0
        self.flip = False

    def changed(self) -> bool:
        self.reads += 1
        return self.flip

    def poll(self) -> bool:
        self.polls += 1
        self.flip = False
        return True


def settled_monitor(n: int, budget: int) -> tuple[ConnectivityMonitor, Scheduler, list[Sub]]:
    sched = Scheduler()
    mon = ConnectivityMonitor(sched, interval=0.05, budget=budget)   # type: ignore[arg-type]
    subs = [Sub() for _ in range(n)]
    for sub in subs:
        mon.add(sub)                                                    # type: ignore[arg-type]
        mon.settling(sub, Connectivity.READY)                           # type: ignore[arg-type]
    sched.timers = [(d, t) for d, t in sched.timers if d >= 0.05]       # no fast sweeps
    return mon, sched, subs


def test_each_sweep_reads_at_most_budget_endpoints() -> None:
    mon, sched, subs = settled_monitor(1000, budget=64)
    for _ in range(5):
        before = sum(s.reads for s in subs)
        sched.run("sweep")
        assert sum(s.reads for s in subs) - before == 64
    mon.close()


def test_every_endpoint_is_read_within_a_turn() -> None:
    mon, sched, subs = settled_monitor(300, budget=64)
    for _ in range(math.ceil(300 / 64)):
        sched.run("sweep")
    assert min(s.reads for s in subs) >= 1
    assert max(s.reads for s in subs) <= 2
    mon.close()


def test_a_change_is_delivered_by_the_sweep_that_reads_it() -> None:
    mon, sched, subs = settled_monitor(200, budget=50)
    subs[150].flip = True
    for _ in range(4):
        sched.run("sweep")
    assert subs[150].polls == 1
    assert sum(s.polls for s in subs) == 1
    mon.close()


def test_small_sets_are_read_every_sweep() -> None:
    mon, sched, subs = settled_monitor(10, budget=64)
    sched.run("sweep")
    sched.run("sweep")
    assert [s.reads for s in subs] == [2] * 10
    mon.close()


def test_removed_endpoints_are_no_longer_read() -> None:
    mon, sched, subs = settled_monitor(100, budget=30)
    for sub in subs[:90]:
        mon.remove(sub)                                                 # type: ignore[arg-type]
    for _ in range(4):
        sched.run("sweep")
    assert all(s.reads == 0 for s in subs[:90])
    assert all(s.reads >= 1 for s in subs[90:])
    mon.close()
