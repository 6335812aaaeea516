"""Scenario 4 — retries and hedging (gRFC A6 methodConfig).

* **Kill and restart.** Four threads call Echo.Unary back to back on three fake backends
  (5 ms latency). After ``pre`` seconds backend 1 is stopped (its in-flight calls are cut
  off), ``down`` seconds later it is restarted on the same port, and the load runs
  ``post`` more seconds. Variants: no retryPolicy, and a retryPolicy on UNAVAILABLE
  (maxAttempts 5, backoff 10-100 ms). Reported: calls, user-visible failures, attempts per
  call (backend-side count / calls) and p99 latency.
* **Hedging with one slow backend.** Backend 0 answers in ``slow`` seconds, the others in
  2 ms; four threads make a fixed number of calls. Variants: no hedging, and a
  hedgingPolicy (maxAttempts 3, hedgingDelay 20 ms). Reported: p50 / p99 / max latency
  and attempts per call (the extra load hedging costs).

The backends run in this process (``lbclient.testing.Fleet``): killing and restarting one
needs ``Backend.stop()``/``start()``, which a child process can't offer. They share the
client's cores, so absolute latencies are noisy; the failure counts are not. Variants are
interleaved over repetitions (A B, B A, ...) and tables show median (min–max).

Run: ``.venv/bin/python -m benchmarks.bench_retries [--quick]``; also a scenario of
``python -m benchmarks.run``.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import grpc

import lbclient
from benchmarks._common import Section, Table, fmt_summary, interleave, standalone_main, summarize
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

SCENARIO = 4
TITLE = "Retries and hedging: a backend killed and restarted under load; one slow backend"
SERVICE = "lbclient.testing.echo.v1.Echo"
REQ = echo_pb2.EchoRequest(message="x")

RETRY = {"methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": {
    "maxAttempts": 5, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}
HEDGE = {"methodConfig": [{"name": [{"service": SERVICE, "method": "Unary"}],
                           "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.02s",
                                             "nonFatalStatusCodes": ["UNAVAILABLE"]}}]}


@dataclass(frozen=True)
class Settings:
    threads: int = 4
    pre: float = 1.0          # load before the kill
    down: float = 1.5         # backend stopped
    post: float = 1.0         # load after the restart
    hedge_calls: int = 600    # calls per hedging variant
    slow: float = 0.1         # the slow backend's latency
    reps: int = 3


FULL = Settings()
QUICK = replace(FULL, pre=0.5, down=1.0, post=0.5, hedge_calls=200, reps=1)
SMOKE = replace(QUICK, pre=0.2, down=0.3, post=0.2, hedge_calls=30, slow=0.05)


@dataclass
class KillResult:
    calls: int
    failures: int
    codes: Counter[str]
    attempts: int
    p99_ms: float


@dataclass
class HedgeResult:
    p50_ms: float
    p99_ms: float
    max_ms: float
    attempts_per_call: float


def _wait_ready(ch: lbclient.LoadBalancedChannel, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(e.connectivity == "READY" for e in ch.endpoints()) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} endpoints not READY after {timeout}s")
        time.sleep(0.01)


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def kill_and_restart(config: dict[str, Any], s: Settings) -> KillResult:
    with Fleet(3, latency=0.005) as fleet, lbclient.insecure_channel(
            fleet.target, service_config=config) as ch:
        _wait_ready(ch, 3)
        stub = echo_pb2_grpc.EchoStub(ch)
        stop = threading.Event()
        lock = threading.Lock()
        latencies: list[float] = []
        codes: Counter[str] = Counter()

        def worker() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    stub.Unary(REQ, timeout=5)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    codes[code] += 1

        fleet.reset_counters()
        threads = [threading.Thread(target=worker) for _ in range(s.threads)]
        for t in threads:
            t.start()
        try:
            time.sleep(s.pre)
            fleet[1].stop()
            time.sleep(s.down)
            fleet[1].start()
            time.sleep(s.post)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        calls = sum(codes.values())
        return KillResult(calls, calls - codes["OK"], codes, sum(fleet.calls().values()),
                          _p(latencies, 0.99) * 1000)


def hedged_tail(config: dict[str, Any], s: Settings) -> HedgeResult:
    with Fleet(3, latency=0.002) as fleet, lbclient.insecure_channel(
            fleet.target, service_config=config) as ch:
        fleet[0].set_latency(s.slow)
        _wait_ready(ch, 3)
        stub = echo_pb2_grpc.EchoStub(ch)
        latencies: list[float] = []
        lock = threading.Lock()
        per_thread = max(s.hedge_calls // s.threads, 1)

        def worker() -> None:
            for _ in range(per_thread):
                t0 = time.perf_counter()
                stub.Unary(REQ, timeout=10)
                with lock:
                    latencies.append(time.perf_counter() - t0)

        fleet.reset_counters()
        threads = [threading.Thread(target=worker) for _ in range(s.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        attempts = sum(fleet.calls().values())
        return HedgeResult(statistics.median(latencies) * 1000, _p(latencies, 0.99) * 1000,
                           max(latencies) * 1000, attempts / max(len(latencies), 1))


def _run(s: Settings) -> Section:
    section = Section(TITLE)
    kill_variants: dict[str, Callable[[], KillResult]] = {
        "no retryPolicy": lambda: kill_and_restart({}, s),
        "retryPolicy UNAVAILABLE": lambda: kill_and_restart(RETRY, s),
    }
    kills = interleave(kill_variants, s.reps)
    table = Table(["variant", "calls", "user-visible failures", "attempts / call",
                   "p99 ms", "failure codes (all reps)"],
                  caption=f"{s.threads} threads; backend 1 of 3 stopped after {s.pre:g} s, "
                          f"restarted {s.down:g} s later, {s.post:g} s more load; "
                          f"{s.reps} repetition(s): median (min–max)")
    for name, results in kills.items():
        codes: Counter[str] = Counter()
        for r in results:
            codes.update({k: v for k, v in r.codes.items() if k != "OK"})
        table.rows.append([
            name,
            fmt_summary(summarize([r.calls for r in results]), "{:.0f}"),
            fmt_summary(summarize([r.failures for r in results]), "{:.0f}"),
            fmt_summary(summarize([r.attempts / max(r.calls, 1) for r in results]), "{:.3f}"),
            fmt_summary(summarize([r.p99_ms for r in results]), "{:.1f}"),
            ", ".join(f"{k} {v}" for k, v in codes.most_common()) or "none",
        ])
        key = "kill.retry" if "retry" in name and "no" not in name else "kill.no_retry"
        section.metrics[f"{key}.failures"] = float(statistics.median(
            r.failures for r in results))
        section.metrics[f"{key}.failures_max"] = float(max(r.failures for r in results))
        section.metrics[f"{key}.calls"] = float(statistics.median(r.calls for r in results))
    section.tables.append(table)

    hedge_variants: dict[str, Callable[[], HedgeResult]] = {
        "no hedging": lambda: hedged_tail({}, s),
        "hedgingPolicy (3 attempts, 20 ms)": lambda: hedged_tail(HEDGE, s),
    }
    hedges = interleave(hedge_variants, s.reps)
    table = Table(["variant", "p50 ms", "p99 ms", "max ms", "attempts / call"],
                  caption=f"backend 0 of 3 answers in {s.slow * 1000:.0f} ms, the others in "
                          f"2 ms; {s.threads} threads, {s.hedge_calls} calls per variant; "
                          f"{s.reps} repetition(s): median (min–max)")
    for name, results in hedges.items():
        table.rows.append([
            name,
            fmt_summary(summarize([r.p50_ms for r in results]), "{:.1f}"),
            fmt_summary(summarize([r.p99_ms for r in results]), "{:.1f}"),
            fmt_summary(summarize([r.max_ms for r in results]), "{:.1f}"),
            fmt_summary(summarize([r.attempts_per_call for r in results]), "{:.2f}"),
        ])
        key = "hedge.on" if name.startswith("hedging") else "hedge.off"
        section.metrics[f"{key}.p99_ms"] = float(statistics.median(r.p99_ms for r in results))
        section.metrics[f"{key}.attempts_per_call"] = float(statistics.median(
            r.attempts_per_call for r in results))
    section.tables.append(table)
    section.notes += [
        "Backends run in the client's process (the kill needs Backend.stop()/start()); "
        "latencies include their CPU use on the same cores.",
        "Attempts / call counts Echo calls the backends received per user call: retries "
        "and hedges show up there, and calls that never reached a backend (failed picks) "
        "lower it.",
        "A retried call reports `grpc-previous-rpc-attempts` in its trailing metadata.",
    ]
    return section


def run(quick: bool) -> Section:
    return _run(QUICK if quick else FULL)


def run_smoke() -> Section:
    return _run(SMOKE)


def main(argv: list[str] | None = None) -> int:
    return standalone_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
