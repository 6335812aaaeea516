"""Scenario 3 — gray failure: one of 3 backends answers UNAVAILABLE to everything.

The backend stays connected and its health service keeps saying SERVING, so only passive
signals can find it. Steady paced traffic (``rate`` calls/s over 4 threads) runs through
a channel; a random time after the channel was created (so the fault lands at a random
phase of the detector's interval timer, the same phase for every variant of a
repetition), one backend starts failing every call. We count:

* **failed calls**: calls that failed from the fault until the end of the observation
  window (``window`` s, far shorter than ``baseEjectionTime`` = 30 s, so an ejected
  backend does not come back inside it): the calls lost before it was out;
* **time to eject**: from the fault to the last failed call (the moment failures stopped;
  this is how the grpcio variant is observed from outside). For lbclient the ejection
  event's own time is reported too.

Variants, each with ``interval`` = 1 s, ``baseEjectionTime`` = 30 s and a round_robin
child, interleaved per repetition:

* grpcio native ``outlier_detection_experimental`` with ``failurePercentageEjection``
  (threshold 85, minimumHosts 3, requestVolume 10), through
  ``grpc.insecure_channel(target, options=[("grpc.service_config", ...)])``;
* lbclient ``outlier_detection`` with the very same config;
* lbclient ``outlier_detection`` with ``consecutiveFailures`` 5 (and no interval-based
  algorithm).

A second table times active health checking (``healthCheckConfig``, Watch): a backend
turns NOT_SERVING and we measure how long calls still land on it, grpcio vs lbclient.

Backends run in this process (``lbclient.testing.Fleet``) because the fault is switched on
at run time; CPU time is not measured here, so sharing the process does not bias it.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from benchmarks._common import Section, Table, fmt_summary, standalone_main, summarize

SCENARIO = 3
TITLE = "Gray failure: one of 3 backends answers UNAVAILABLE"
THREADS = 4


@dataclass(frozen=True)
class Settings:
    reps: int = 5
    rate: float = 200.0          # calls per second, all threads together
    interval: float = 1.0        # the outlier detector's interval
    window: float = 3.0          # observation after the fault
    warmup: float = 0.5          # + a random share of one interval
    request_volume: int = 10


FULL = Settings()
QUICK = Settings(reps=2, window=2.5)
SMOKE = Settings(reps=1, rate=100.0, interval=0.5, window=1.0, warmup=0.3, request_volume=5)


def _od_config(s: Settings, name: str, *, fp: bool = True,
               consecutive: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"interval": f"{s.interval}s", "baseEjectionTime": "30s",
                            "childPolicy": [{"round_robin": {}}]}
    if fp:
        body["failurePercentageEjection"] = {"threshold": 85, "minimumHosts": 3,
                                             "requestVolume": s.request_volume}
    if consecutive is not None:
        body["consecutiveFailures"] = consecutive
    return {"loadBalancingConfig": [{name: body}]}


@dataclass
class Outcome:
    failed: int
    calls: int
    to_eject: float              # seconds from the fault to the last failed call
    event: float | None          # lbclient: seconds from the fault to the ejection event
    rate: float                  # achieved calls per second


def _paced_traffic(call: Callable[[], None], rate: float, stop: threading.Event,
                   record: Callable[[float, bool], None]) -> list[threading.Thread]:
    period = THREADS / rate

    def loop() -> None:
        nxt = time.monotonic()
        while not stop.is_set():
            try:
                call()
                ok = True
            except grpc.RpcError:
                ok = False
            record(time.monotonic(), ok)
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            else:
                nxt = time.monotonic()   # behind: do not burst to catch up

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(THREADS)]
    for t in threads:
        t.start()
    return threads


def _channel(kind: str, target: str, config: dict[str, Any]) -> Any:
    if kind == "native":
        return grpc.insecure_channel(target, options=[("grpc.service_config",
                                                       json.dumps(config))])
    import lbclient

    return lbclient.insecure_channel(target, service_config=config)


def _gray_run(fleet: Any, kind: str, config: dict[str, Any], s: Settings,
              warmup: float) -> Outcome:
    from lbclient.testing import echo_pb2, echo_pb2_grpc

    bad = fleet[0]
    request = echo_pb2.EchoRequest(message="x")
    t_created = time.monotonic()       # ~ when the detector's interval timer starts
    ch = _channel(kind, fleet.target, config)
    ejected_at: list[float] = []
    if kind != "native":
        ch.add_event_listener(lambda e: ejected_at.append(time.monotonic())
                              if e.kind == "ejected" and e.address == bad.address else None)
    stub = echo_pb2_grpc.EchoStub(ch)
    results: list[tuple[float, bool]] = []
    lock = threading.Lock()

    def record(t: float, ok: bool) -> None:
        with lock:
            results.append((t, ok))

    stop = threading.Event()
    try:
        stub.Unary(request, timeout=10, wait_for_ready=True)
        threads = _paced_traffic(lambda: stub.Unary(request, timeout=5), s.rate, stop, record)
        # the fault lands at the same phase of the interval timer for every variant
        time.sleep(max(t_created + warmup - time.monotonic(), 0.2))
        t_fault = time.monotonic()
        bad.set_error_rate(1.0)
        time.sleep(s.window)
        stop.set()
        for t in threads:
            t.join(10)
    finally:
        stop.set()
        bad.set_error_rate(0.0)
        ch.close()
    after = [(t, ok) for t, ok in results if t >= t_fault]
    failed = [t for t, ok in after if not ok]
    return Outcome(
        failed=len(failed), calls=len(after),
        to_eject=(max(failed) - t_fault) if failed else 0.0,
        event=(ejected_at[0] - t_fault) if ejected_at else None,
        rate=len(after) / s.window)


def _watch_run(fleet: Any, kind: str, s: Settings) -> tuple[float, float | None]:
    """Seconds from NOT_SERVING until the last call that still landed on the backend,
    and (lbclient) until the channel's "unhealthy" event."""
    from lbclient.testing import echo_pb2, echo_pb2_grpc

    bad = fleet[1]
    config = {"loadBalancingConfig": [{"round_robin": {}}],
              "healthCheckConfig": {"serviceName": ""}}
    ch = _channel(kind, fleet.target, config)
    unhealthy_at: list[float] = []
    if kind != "native":
        ch.add_event_listener(lambda e: unhealthy_at.append(time.monotonic())
                              if e.kind == "health_changed" and e.healthy is False else None)
    stub = echo_pb2_grpc.EchoStub(ch)
    request = echo_pb2.EchoRequest(message="x")
    landed: list[float] = []
    lock = threading.Lock()

    def call() -> None:
        reply = stub.Unary(request, timeout=5)
        if reply.address == bad.address:
            with lock:
                landed.append(time.monotonic())

    stop = threading.Event()
    try:
        deadline = time.monotonic() + 10
        seen: set[str] = set()
        while seen != set(fleet.addresses) and time.monotonic() < deadline:
            seen.add(stub.Unary(request, timeout=10, wait_for_ready=True).address)
        threads = _paced_traffic(call, s.rate, stop, lambda t, ok: None)
        time.sleep(s.warmup)
        t0 = time.monotonic()
        bad.set_health(False)
        time.sleep(min(s.window, 1.0))
        stop.set()
        for t in threads:
            t.join(10)
    finally:
        stop.set()
        bad.set_health(True)
        ch.close()
    after = [t for t in landed if t >= t0]
    return (max(after) - t0) if after else 0.0, (
        unhealthy_at[0] - t0 if unhealthy_at else None)


VARIANTS: dict[str, tuple[str, Callable[[Settings], dict[str, Any]]]] = {
    "grpcio native outlier_detection_experimental (failure %)":
        ("native", lambda s: _od_config(s, "outlier_detection_experimental")),
    "lbclient outlier_detection (failure %, same config)":
        ("lbclient", lambda s: _od_config(s, "outlier_detection")),
    "lbclient outlier_detection (consecutiveFailures 5)":
        ("lbclient", lambda s: _od_config(s, "outlier_detection", fp=False, consecutive=5)),
}
KEYS = {name: key for name, key in zip(VARIANTS, ("native_fp", "lbclient_fp",
                                                 "lbclient_consecutive"), strict=True)}


def measure(s: Settings) -> Section:
    from lbclient.testing import Fleet

    section = Section(TITLE)
    rng = random.Random(3)
    outcomes: dict[str, list[Outcome]] = {name: [] for name in VARIANTS}
    watch: dict[str, list[tuple[float, float | None]]] = {"native": [], "lbclient": []}
    with Fleet(3) as fleet:
        names = list(VARIANTS)
        for rep in range(s.reps):
            warmup = s.warmup + rng.uniform(0, s.interval)
            k = rep % len(names)
            for name in names[k:] + names[:k]:
                kind, make = VARIANTS[name]
                outcomes[name].append(_gray_run(fleet, kind, make(s), s, warmup))
            for kind in (("native", "lbclient") if rep % 2 == 0 else ("lbclient", "native")):
                watch[kind].append(_watch_run(fleet, kind, s))

    table = Table(["variant", "failed calls", "time to eject (ms)",
                   "ejection event (ms)", "calls/s"],
                  caption=f"{s.reps} interleaved repetitions, {s.rate:g} calls/s over "
                          f"{THREADS} threads, interval {s.interval:g} s, window "
                          f"{s.window:g} s: median (min–max)")
    for name, runs in outcomes.items():
        failed = summarize([float(o.failed) for o in runs])
        eject = summarize([o.to_eject * 1000 for o in runs])
        events = [o.event * 1000 for o in runs if o.event is not None]
        rate = summarize([o.rate for o in runs])
        table.rows.append([name, fmt_summary(failed, "{:.0f}"), fmt_summary(eject, "{:.0f}"),
                           fmt_summary(summarize(events), "{:.0f}") if events else "–",
                           fmt_summary(rate, "{:.0f}")])
        key = KEYS[name]
        section.metrics[f"{key}.failed"] = failed.median
        section.metrics[f"{key}.time_to_eject_ms"] = eject.median
        section.metrics[f"{key}.never_ejected_runs"] = float(
            sum(1 for o in runs if o.failed and o.to_eject > s.window * 0.9))
    section.tables.append(table)

    wt = Table(["channel", "last call on it after NOT_SERVING (ms)", "unhealthy event (ms)"],
               caption="healthCheckConfig (Watch): time from NOT_SERVING to the last call "
                       "that still reached the backend (0: none did), and to lbclient's "
                       "event: median (min–max)")
    for kind, values in watch.items():
        summary = summarize([v[0] * 1000 for v in values])
        events = [v[1] * 1000 for v in values if v[1] is not None]
        wt.rows.append(["grpcio native round_robin" if kind == "native"
                        else "lbclient round_robin", fmt_summary(summary, "{:.1f}"),
                        fmt_summary(summarize(events), "{:.1f}") if events else "–"])
        section.metrics[f"watch.{kind}.ms"] = summary.median
        if events:
            section.metrics[f"watch.{kind}.event_ms"] = summarize(events).median
    section.tables.append(wt)
    section.notes += [
        "Failed calls count every call that failed between the fault and the end of the "
        "window; with baseEjectionTime 30 s nothing is readmitted inside the window, so "
        "this is what it cost to find the backend.",
        "Failure percentage judges whole intervals: the first sweep whose interval saw more "
        "than 85% failures ejects, so detection takes between 0.85 and 1.85 intervals "
        "depending on where in the interval the fault began (the warm-up length is random "
        "to sample that phase). consecutiveFailures ejects as soon as 5 calls in a row "
        "fail, independent of the interval; calls already in flight on other threads may "
        "fail too.",
        "successRateEjection is not shown: with 3 hosts the mean − 1.9 × stdev threshold is "
        "below 0 when one host fails everything, so it never ejects (gRPC and Envoy alike).",
        "Backends are in-process (the fault is switched at run time); the box is shared, so "
        "absolute times move between runs — compare variants within a repetition.",
    ]
    return section


def run(quick: bool) -> Section:
    return measure(QUICK if quick else FULL)


def run_smoke() -> Section:
    return measure(SMOKE)


def main(argv: list[str] | None = None) -> int:
    return standalone_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
