"""Chaos under load, short form (the long form is ``benchmarks/bench_chaos.py``).

10 s of faults - graceful restarts (drain, then stop with grace), SIGKILLed child-process
backends, health flips, a backend answering UNAVAILABLE, endpoints leaving and rejoining
the endpoints file - while 8 threads call through one channel with a retryPolicy
(UNAVAILABLE, maxAttempts 5), health checking and outlier detection. The driver always
keeps a backend healthy, so no call may fail; removed endpoints get no call once the
race window (0.5 s after the channel dropped them) has passed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import grpc

import lbclient
from benchmarks import bench_chaos
from lbclient.testing import Fleet, echo_pb2_grpc

SHORT = replace(bench_chaos.QUICK, duration=10.0, seed=10)


def test_chaos_short_form_loses_no_call() -> None:
    t0 = time.monotonic()
    [r] = bench_chaos.run_chaos(SHORT)
    print(f"\nchaos: {r.calls} calls, {r.failed} failed, longest gap "
          f"{r.longest_gap * 1000:.0f} ms, attempts {dict(r.attempt_codes)}, "
          f"actions {dict(r.actions)}, removals checked {r.removals_checked}, calls in "
          f"window {r.in_window}, took {time.monotonic() - t0:.1f} s")
    # the chaos happened and was felt
    assert set(r.actions) == set(bench_chaos.KINDS) and min(r.actions.values()) >= 1, r
    assert r.attempt_codes["UNAVAILABLE"] >= 1, "no attempt failed: the faults missed"
    assert r.crash_attempts > 0 and r.removals_checked >= 1
    assert r.calls >= 300, r.calls
    # every call ended exactly once, successfully
    assert not r.other_errors, r.other_errors
    assert r.failed == 0, r.failures.most_common(5)
    assert r.ok == r.calls and r.callbacks_wrong == 0
    # removed endpoints: nothing after the race window (backend counters and attempts)
    assert r.late_server == 0 and r.late_client == 0, (r.late_server, r.late_client)
    assert r.longest_gap < 2.0, r.longest_gap


def test_the_load_counts_failures_and_callbacks(fleet: Fleet) -> None:
    """The counting can fail: on a closed channel every call ends CANCELLED, once."""
    ch = lbclient.insecure_channel(fleet.target)
    ch.close()
    load = bench_chaos._Load(echo_pb2_grpc.EchoStub(ch), replace(SHORT, threads=2))
    for t in load.threads:
        t.start()
    time.sleep(0.2)
    load.stop.set()
    for t in load.threads:
        t.join(5)
    calls = sum(load.calls)
    assert calls >= 4 and not any(load.successes)
    assert sum(load.failures.values()) == calls and not load.other
    [(code, details)] = load.failures
    assert code == grpc.StatusCode.CANCELLED.name and "closed" in details
    futures = sum(c // 2 for c in load.calls)
    deadline = time.monotonic() + 5
    while len(load.callbacks) < futures and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(load.callbacks) == futures and set(load.callbacks.values()) == {1}
    assert not [t for t in threading.enumerate() if t.name.startswith("chaos-load")]
