"""Retry budgets vs gRFC A6 retry throttling (issue 18): a retry storm, and one backend of
three failing.

Four retry gates, each on a fresh channel, interleaved over repetitions (A B C D, B C D A,
...) against the same in-process fleet of three fake backends; every method has the same
``retryPolicy`` (UNAVAILABLE, maxAttempts 5, backoff 10-100 ms):

* **no gate** (the baseline);
* **A6** ``retryThrottling`` ``{"maxTokens": 10, "tokenRatio": 0.1}`` (gRFC A6's example);
* **Envoy** ``"lbclient": {"retryBudget": {"budgetPercent": 20, "minRetryConcurrency": 3}}``
  (retries in flight <= max(3, 20 % of the attempts in flight));
* **Finagle** ``{"ttl": "10s", "minRetriesPerSec": 10, "percentCanRetry": 0.2}`` (retries
  over the last 10 s <= 10/s * 10 s + 20 % of the calls).

**(a) Retry storm.** Every backend answers UNAVAILABLE; ``storm_threads`` callers call
back to back for ``storm_seconds``. Reported: attempts per call (what the backends
received / user calls), the retries the gate granted and refused, and the bound each gate
promises, checked:

* no gate: ``maxAttempts`` = 5;
* A6: ``1 + 4 / N`` - with no success the bucket only drains, and retries go while it is
  above half: ``maxTokens / 2 - 1`` = 4 retries in all, whatever the load;
* Envoy: ``1 + L / (C - L)`` with ``L = max(minRetryConcurrency, floor(budgetPercent % *
  C))`` for ``C`` callers: at most ``L`` callers are in a retry at any moment (attempts in
  flight <= C), and a retry (backoff + attempt) lasts at least as long as a first attempt,
  so by Little's law retries / first attempts <= L / (C - L). Also checked directly: the
  largest count of retries in flight sampled during the run (every 2 ms) <= L;
* Finagle: ``1 + percentCanRetry + minRetriesPerSec * ttl / N`` = ``1.2 + 100 / N`` (the
  run is shorter than 0.9 * ttl, so no deposit or withdrawal has expired yet).

**(b) One backend of three failing.** Backend 1 starts answering UNAVAILABLE to every call
(its process up, its health SERVING - a bad deploy or a broken dependency) while
``threads`` callers run, and ``outlier_detection`` (round_robin child, interval 1 s,
baseEjectionTime 30 s, failurePercentageEjection threshold 50 / minimumHosts 3 /
requestVolume 10) ejects it; until then about a third of the first attempts fail and
need a retry. This is the case budgets exist for - a partial outage that retries should
hide - rather than a killed backend, whose connections reset once and which the channel
stops picking at once (``tests/test_retry_budget_channel.py`` covers that one with real
channels). Two detectors: with ``consecutiveFailures`` 5 (ejects within a few calls, the
production shape of the README) and with the interval-based algorithm alone (the failing
backend is picked for up to a second: a third of the traffic retried for that long, more
than a 20 % budget). Reported: user-visible failures (goal 0), attempts per call,
retries granted / refused, time from the fault to the ejection.

Backends run in this process (``lbclient.testing.Fleet``: the faults are switched at run
time); they share the client's cores, so rates move with the machine's load, and so do
Envoy's and Finagle's figures, which depend on the concurrency and the call count.

Run: ``.venv/bin/python -m benchmarks.bench_retry_budget [--quick]``; also a scenario of
``python -m benchmarks.run``.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import grpc

import lbclient
from benchmarks._common import Section, Table, fmt_summary, interleave, standalone_main, summarize
from lbclient._core.budget import ConcurrencyRetryBudget
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

TITLE = "Retry budgets vs A6 throttling: a retry storm; one of 3 backends failing"
SERVICE = "lbclient.testing.echo.v1.Echo"
REQ = echo_pb2.EchoRequest(message="r")
MAX_ATTEMPTS = 5
RETRY = {"methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": {
    "maxAttempts": MAX_ATTEMPTS, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}

A6_MAX_TOKENS = 10
ENVOY_PERCENT, ENVOY_MIN = 20, 3
FINAGLE_TTL, FINAGLE_PER_SEC, FINAGLE_SHARE = 10.0, 10, 0.2
A6 = {"maxTokens": A6_MAX_TOKENS, "tokenRatio": 0.1}
ENVOY = {"budgetPercent": ENVOY_PERCENT, "minRetryConcurrency": ENVOY_MIN}
FINAGLE = {"ttl": f"{FINAGLE_TTL:g}s", "minRetriesPerSec": FINAGLE_PER_SEC,
           "percentCanRetry": FINAGLE_SHARE}
GATES: dict[str, dict[str, Any]] = {
    "no gate": {},
    "A6 retryThrottling (10, 0.1)": {"retryThrottling": A6},
    "Envoy retryBudget (20 %, min 3)": {"lbclient": {"retryBudget": ENVOY}},
    "Finagle retryBudget (10 s, 10/s, 0.2)": {"lbclient": {"retryBudget": FINAGLE}},
}
KEYS = {"no gate": "none", "A6 retryThrottling (10, 0.1)": "a6",
        "Envoy retryBudget (20 %, min 3)": "envoy",
        "Finagle retryBudget (10 s, 10/s, 0.2)": "finagle"}


def _detector(consecutive: bool) -> dict[str, Any]:
    od: dict[str, Any] = {
        "interval": "1s", "baseEjectionTime": "30s", "maxEjectionPercent": 50,
        "failurePercentageEjection": {"threshold": 50, "minimumHosts": 3,
                                      "requestVolume": 10},
        "childPolicy": [{"round_robin": {}}]}
    if consecutive:
        od["consecutiveFailures"] = 5
    return {"loadBalancingConfig": [{"outlier_detection": od}]}


DETECTORS = {"consecutiveFailures 5": True, "interval 1 s only": False}


@dataclass(frozen=True)
class Settings:
    storm_threads: int = 20
    storm_seconds: float = 4.0
    threads: int = 8            # part (b)
    latency: float = 0.005      # part (b): the backends' answer time
    warmup: float = 0.3         # part (b): load before the fault
    window: float = 3.0         # part (b): load after the fault
    reps: int = 3


FULL = Settings()
QUICK = replace(FULL, storm_seconds=2.0, window=2.0, reps=1)
SMOKE = replace(QUICK, storm_threads=6, storm_seconds=0.2, threads=3, warmup=0.05,
                window=0.25)


@dataclass
class Cell:
    calls: int
    failures: int
    attempts: int
    granted: int
    refused: int
    max_held: int = 0               # Envoy: most retries in flight seen
    eject_ms: float = math.nan      # part (b): fault -> ejection

    @property
    def per_call(self) -> float:
        return self.attempts / max(self.calls, 1)


def _wait_ready(ch: lbclient.LoadBalancedChannel, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(e.connectivity == "READY" for e in ch.endpoints()) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} endpoints not READY after {timeout}s")
        time.sleep(0.01)


def _load(stub: Any, threads: int, body: Callable[[], None]) -> Counter[str]:
    """``threads`` callers calling back to back while ``body()`` runs; status counts."""
    stop = threading.Event()
    lock = threading.Lock()
    codes: Counter[str] = Counter()

    def caller() -> None:
        while not stop.is_set():
            try:
                stub.Unary(REQ, timeout=5)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            with lock:
                codes[code] += 1

    workers = [threading.Thread(target=caller, name=f"bench-caller-{i}")
               for i in range(threads)]
    for t in workers:
        t.start()
    try:
        body()
    finally:
        stop.set()
        for t in workers:
            t.join(30)
    return codes


def storm(gate: dict[str, Any], fleet: Fleet, s: Settings) -> Cell:
    for b in fleet:
        b.set_error_rate(1.0)
    with lbclient.insecure_channel(fleet.target, service_config={**RETRY, **gate}) as ch:
        _wait_ready(ch, len(fleet))
        stub = echo_pb2_grpc.EchoStub(ch)
        budget = ch._ctx.throttle
        held = [0]

        def body() -> None:
            end = time.monotonic() + s.storm_seconds
            while time.monotonic() < end:
                if isinstance(budget, ConcurrencyRetryBudget):
                    held[0] = max(held[0], budget.in_flight)
                time.sleep(0.002)

        fleet.reset_counters()
        codes = _load(stub, s.storm_threads, body)
        calls = sum(codes.values())
        return Cell(calls, calls - codes["OK"], sum(fleet.calls().values()),
                    ch.retries_granted, ch.retries_refused, held[0])


def one_failing(gate: dict[str, Any], consecutive: bool, fleet: Fleet, s: Settings) -> Cell:
    victim = fleet[1]
    for b in fleet:
        b.set_error_rate(0.0)
    config = {**_detector(consecutive), **RETRY, **gate}
    ejected: list[float] = []
    with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
        ch.add_event_listener(lambda e: ejected.append(time.monotonic())
                              if e.kind == "ejected" else None)
        _wait_ready(ch, len(fleet))
        stub = echo_pb2_grpc.EchoStub(ch)
        fault = [0.0]

        def body() -> None:
            time.sleep(s.warmup)
            fault[0] = time.monotonic()
            victim.set_error_rate(1.0)
            time.sleep(s.window)

        fleet.reset_counters()
        try:
            codes = _load(stub, s.threads, body)
        finally:
            victim.set_error_rate(0.0)
        calls = sum(codes.values())
        eject = (ejected[0] - fault[0]) * 1000 if ejected else math.nan
        return Cell(calls, calls - codes["OK"], sum(fleet.calls().values()),
                    ch.retries_granted, ch.retries_refused, eject_ms=eject)


# ----------------------------------------------------------------------------- bounds
def envoy_limit(callers: int) -> int:
    return max(ENVOY_MIN, int(ENVOY_PERCENT / 100 * callers))


def storm_bound(key: str, cell: Cell, s: Settings) -> float:
    """The most attempts per call the gate allows in the storm (see the docstring)."""
    if key == "none":
        return float(MAX_ATTEMPTS)
    n = max(cell.calls, 1)
    if key == "a6":
        return 1 + (A6_MAX_TOKENS // 2 - 1) / n
    if key == "envoy":
        limit = envoy_limit(s.storm_threads)
        return 1 + limit / (s.storm_threads - limit)
    assert s.storm_seconds < 0.9 * FINAGLE_TTL   # nothing expired from Finagle's window
    return 1 + FINAGLE_SHARE + FINAGLE_PER_SEC * FINAGLE_TTL / n


def _fmt(values: list[float], fmt: str) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "-"
    text = fmt_summary(summarize(finite), fmt)
    return text if len(finite) == len(values) else f"{text}, {len(values) - len(finite)} none"


def _run(s: Settings) -> Section:
    section = Section(TITLE)
    events = logging.getLogger("lbclient.events")   # one "ejected" warning per cell
    level = events.level
    events.setLevel(logging.ERROR)
    try:
        with Fleet(3, latency=s.latency) as fleet:
            storms, parts = _measure(fleet, s)
    finally:
        events.setLevel(level)
    _report(section, storms, parts, s)
    return section


def _measure(fleet: Fleet, s: Settings
             ) -> tuple[dict[str, list[Cell]], dict[str, dict[str, list[Cell]]]]:
    storms = interleave({name: partial(storm, g, fleet, s) for name, g in GATES.items()},
                        s.reps)
    parts: dict[str, dict[str, list[Cell]]] = {}
    for label, consecutive in DETECTORS.items():
        parts[label] = interleave({name: partial(one_failing, g, consecutive, fleet, s)
                                   for name, g in GATES.items()}, s.reps)
    return storms, parts


def _report(section: Section, storms: dict[str, list[Cell]],
            parts: dict[str, dict[str, list[Cell]]], s: Settings) -> None:
    limit = envoy_limit(s.storm_threads)
    table = Table(["gate", "calls", "attempts / call", "bound", "within", "retries granted",
                   "retries refused", "most retries in flight"],
                  caption=f"(a) retry storm: every backend answers UNAVAILABLE, maxAttempts "
                          f"{MAX_ATTEMPTS}, {s.storm_threads} callers for "
                          f"{s.storm_seconds:g} s; {s.reps} repetition(s): median (min–max)")
    for name, cells in storms.items():
        key = KEYS[name]
        bounds = [storm_bound(key, c, s) for c in cells]
        within = [c.per_call <= b + 1e-9 for c, b in zip(cells, bounds, strict=True)]
        if key == "envoy":
            within = [w and c.max_held <= limit for w, c in zip(within, cells, strict=True)]
        table.rows.append([
            name,
            _fmt([float(c.calls) for c in cells], "{:.0f}"),
            _fmt([c.per_call for c in cells], "{:.3f}"),
            _fmt(bounds, "{:.3f}"),
            f"{sum(within)}/{len(within)}",
            _fmt([float(c.granted) for c in cells], "{:.0f}"),
            _fmt([float(c.refused) for c in cells], "{:.0f}"),
            f"{max(c.max_held for c in cells)} (limit {limit})" if key == "envoy" else "",
        ])
        section.metrics[f"storm.{key}.attempts_per_call"] = statistics.median(
            c.per_call for c in cells)
        section.metrics[f"storm.{key}.bound"] = statistics.median(bounds)
        section.metrics[f"storm.{key}.within_bound"] = float(all(within))
    section.tables.append(table)

    for label, results in parts.items():
        slug = "consecutive" if DETECTORS[label] else "interval"
        table = Table(["gate", "calls", "user-visible failures (goal 0)", "attempts / call",
                       "retries granted", "retries refused", "ejected after ms"],
                      caption=f"(b) backend 1 of 3 answers UNAVAILABLE after "
                              f"{s.warmup:g} s, outlier_detection ({label}) ejects it; "
                              f"{s.threads} callers, {s.window:g} s observed after the "
                              f"fault, backends answer in {s.latency * 1000:g} ms; "
                              f"{s.reps} repetition(s): median (min–max)")
        for name, cells in results.items():
            key = KEYS[name]
            table.rows.append([
                name,
                _fmt([float(c.calls) for c in cells], "{:.0f}"),
                _fmt([float(c.failures) for c in cells], "{:.0f}"),
                _fmt([c.per_call for c in cells], "{:.3f}"),
                _fmt([float(c.granted) for c in cells], "{:.0f}"),
                _fmt([float(c.refused) for c in cells], "{:.0f}"),
                _fmt([c.eject_ms for c in cells], "{:.0f}"),
            ])
            section.metrics[f"one_failing.{slug}.{key}.failures"] = float(
                statistics.median(c.failures for c in cells))
            section.metrics[f"one_failing.{slug}.{key}.failures_max"] = float(
                max(c.failures for c in cells))
        section.tables.append(table)

    section.notes += [
        "Each cell is a fresh channel (a fresh gate and outlier detector) on the same three "
        "in-process backends; the gates run interleaved, repetition by repetition.",
        "Attempts / call = Echo calls the backends received / user calls; retries granted "
        "and refused are the channel's own counts (`channel.retries_granted`, "
        "`retries_refused`).",
        "Storm bounds (see the module docstring): A6 `1 + 4/N`; Envoy `1 + L/(C - L)`, "
        f"L = max(3, ⌊20 % × C⌋) = {limit} for C = {s.storm_threads} callers, and at most "
        "L retries in flight (sampled); Finagle `1.2 + 100/N` (reserve 10/s × 10 s, plus 20 % "
        "of N calls). Envoy's and Finagle's bounds depend on the concurrency and on N, "
        "which the machine's load moves.",
        "Part (b) is a partial outage that retries should hide (a backend erroring while "
        "the detector catches up), not a killed backend: a kill resets the connections "
        "once and the channel stops picking the address at once, which every gate "
        "covers (tests/test_retry_budget_channel.py).",
    ]


def run(quick: bool) -> Section:
    return _run(QUICK if quick else FULL)


def run_smoke() -> Section:
    return _run(SMOKE)


def main(argv: list[str] | None = None) -> int:
    return standalone_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
