"""The resolver thread discipline (lbclient.resolver._worker): wake/stop, no delivery after
stop, stop from inside a delivery, bounded joins."""

from __future__ import annotations

import threading
import time

from _discovery import Recorder

from lbclient.endpoint import Endpoint
from lbclient.resolver import ResolverState
from lbclient.resolver._worker import Worker

STATE = ResolverState(endpoints=(Endpoint("127.0.0.1:1"),))


def test_wait_returns_early_on_wake_and_stop() -> None:
    rec = Recorder()
    woke: list[bool] = []
    started = threading.Event()

    def body(w: Worker) -> None:
        started.set()
        while not w.stopped:
            woke.append(w.wait(30))

    worker = Worker("t", rec, body)
    worker.start()
    assert started.wait(5)
    time.sleep(0.05)
    t0 = time.monotonic()
    worker.wake()
    deadline = time.monotonic() + 5
    while not woke and time.monotonic() < deadline:
        time.sleep(0.005)
    worker.stop()
    assert time.monotonic() - t0 < 2
    assert woke[0] is True and woke[-1] is False      # woken, then stopped


def test_nothing_is_delivered_after_stop() -> None:
    rec = Recorder()
    go = threading.Event()
    results: list[bool] = []

    def body(w: Worker) -> None:
        go.wait(5)
        results.append(w.deliver(STATE))
        results.append(w.fail(RuntimeError("late")))

    worker = Worker("t", rec, body, join_timeout=0.1)
    worker.start()
    worker.stop()                      # before the body delivers
    go.set()
    time.sleep(0.1)
    assert results in ([], [False, False])
    assert rec.states == [] and rec.errors == []


def test_stop_waits_for_a_delivery_in_progress() -> None:
    entered, release = threading.Event(), threading.Event()

    class Slow(Recorder):
        def on_resolved(self, state: ResolverState) -> None:
            entered.set()
            release.wait(5)
            super().on_resolved(state)

    rec = Slow()
    worker = Worker("t", rec, lambda w: (w.deliver(STATE), w.wait(30)))
    worker.start()
    assert entered.wait(5)
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    time.sleep(0.1)
    assert stopper.is_alive()          # blocked until the delivery returns
    release.set()
    stopper.join(5)
    assert not stopper.is_alive() and len(rec.states) == 1


def test_stop_from_inside_a_delivery_does_not_deadlock() -> None:
    holder: list[Worker] = []

    class Closing(Recorder):
        def on_resolved(self, state: ResolverState) -> None:
            holder[0].stop()           # e.g. the channel closed from a callback
            super().on_resolved(state)

    rec = Closing()
    worker = Worker("t", rec, lambda w: (w.deliver(STATE), w.deliver(STATE)))
    holder.append(worker)
    worker.start()
    rec.wait_for(lambda r: len(r.states) >= 1, 5)
    time.sleep(0.05)
    assert len(rec.states) == 1 and worker.stopped


def test_stop_hooks_run_and_join_is_bounded() -> None:
    rec = Recorder()
    unblock = threading.Event()
    hooks: list[str] = []
    worker = Worker("t", rec, lambda w: unblock.wait(10), join_timeout=0.2)
    worker.on_stop.append(lambda: hooks.append("cancel"))
    worker.on_stop.append(lambda: 1 / 0)              # a failing hook is only logged
    worker.start()
    t0 = time.monotonic()
    worker.stop()                                       # body ignores stop: join gives up
    assert time.monotonic() - t0 < 2 and hooks == ["cancel"]
    worker.stop()                                       # idempotent
    unblock.set()


def test_a_crashing_body_is_logged(caplog: object) -> None:
    import logging

    rec = Recorder()
    with caplog.at_level(logging.ERROR, logger="lbclient"):  # type: ignore[attr-defined]
        worker = Worker("crashy", rec, lambda w: 1 / 0)
        worker.start()
        worker.stop()
    assert "crashy: resolver thread failed" in caplog.text  # type: ignore[attr-defined]
