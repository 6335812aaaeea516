"""One simulated run: the real balancer, policy and health code on a virtual clock.

:class:`Simulation` builds a :class:`~lbclient.balancer.balancer.Balancer` with the
simulator's connection and health-checker factories, the event loop as clock and
scheduler, and seeded randomness; applies the variant's service config the way
``LoadBalancedChannel`` does (options, health check, policy); reports the backends as one
resolver snapshot; then replays the request streams. Every call goes through the same
steps as a call on the channel (``lbclient._invoke``): ``balancer.picker.pick(info)``;
``stats.begin()`` unless the pick counted itself; at the end ``stats.end(outcome,
code in failure_codes)`` and the pick's ``on_done(outcome)``. A pick that raises a
queueing :class:`~lbclient.balancer.picker.PickError` waits for the next picker (within
its deadline), as gRPC queues calls while connecting; any other pick error fails the
call UNAVAILABLE at once.

Randomness comes from ``random.Random(f"{seed}:{purpose}")`` streams: the request
streams draw their arrivals, durations and keys from their own generators, so every
variant of a scenario sees exactly the same requests.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..balancer.balancer import Balancer
from ..balancer.picker import CallOutcome, PickError, PickInfo
from ..endpoint import Endpoint
from ..health.events import EndpointEvent
from .backend import (
    DONE,
    PENDING,
    SimBackend,
    SimCall,
    SimConnectionFactory,
    SimHealthFactory,
)
from .clock import EventLoop
from .scenario import Scenario, StreamSpec, Variant

EXTRA_TIME = 3600.0   # without "until": stop this long after the last arrival at most
# The SDK loggers a simulated balancer writes to; its events are in the report instead.
SDK_LOGGERS = ("lbclient.balancer", "lbclient.health", "lbclient.events")


class _ThisThread(logging.Filter):
    """Drops the records logged by one thread (the simulating one)."""

    def __init__(self) -> None:
        super().__init__()
        self.ident = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.ident


@contextmanager
def quiet_sdk_logs() -> Iterator[None]:
    """While a simulation runs, the SDK's balancer/health/event loggers drop what this
    thread logs (simulated ejections are not the process's own), and only that: real
    channels on other threads still log."""
    filt = _ThisThread()
    loggers = [logging.getLogger(name) for name in SDK_LOGGERS]
    for lg in loggers:
        lg.addFilter(filt)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(filt)


class _Stream:
    __slots__ = ("spec", "rng", "sent", "index")

    def __init__(self, spec: StreamSpec, rng: random.Random, index: int) -> None:
        self.spec = spec
        self.rng = rng
        self.sent = 0
        self.index = index


class Simulation:
    """Runs one variant of a scenario; read the figures from its attributes afterwards
    (:func:`lbclient.simulate.report.build_run_report` does)."""

    def __init__(self, scenario: Scenario, variant: Variant, seed: int) -> None:
        self.scenario = scenario
        self.variant = variant
        self.seed = seed
        self.loop = EventLoop()
        self.backends = [SimBackend(spec, i, self, self.rng(f"service:{spec.name}"),
                                    self.rng(f"errors:{spec.name}"))
                         for i, spec in enumerate(scenario.backends)]
        self.by_name = {b.name: b for b in self.backends}
        self.balancer = Balancer(
            SimConnectionFactory(self.by_name, self.rng("connect")),
            clock=self.loop, rng=self.rng("balancer"), scheduler=self.loop,
            health_factory=SimHealthFactory(self.rng("health")))
        # counters and records
        self.seq = 0
        self.finished = 0
        self.in_flight = 0
        self.codes: dict[str, int] = {}
        self.no_endpoint = 0
        self.latencies: list[float] = []
        self.failures: list[tuple[float, int, str]] = []   # (time, backend index or -1, code)
        self.events: list[dict[str, Any]] = []
        self.keys: dict[str, tuple[list[float], list[int]]] = {}  # key -> (times, backends)
        self.samples: list[tuple[float, tuple[int, ...]]] = []
        self.imbalance_sum = 0.0
        self.imbalance_n = 0
        self.pending: list[SimCall] = []
        self._retry_scheduled = False
        self._streams_open = 0
        self.final_stats: dict[str, tuple[int, int, int]] = {}
        self.first_arrival: float | None = None
        self.last_end = 0.0
        self.stopped_at = 0.0

    def rng(self, purpose: str) -> random.Random:
        return random.Random(f"{self.seed}:{purpose}")

    # ------------------------------------------------------------------ setup and run
    def run(self) -> None:
        """Run to the end (or ``until``); then close the balancer."""
        with quiet_sdk_logs():
            self._run()

    def _run(self) -> None:
        sc, bal, loop = self.scenario, self.balancer, self.loop
        config = self.variant.config
        bal.add_listener(self._on_change)
        bal.add_event_listener(self._on_event)
        # The channel's order (LoadBalancedChannel._apply_config).
        bal.set_options(self.variant.options)
        bal.set_health_check(config.health_check)
        bal.set_policy(config.lb.spec, config.lb.config)
        bal.update_endpoints([Endpoint(b.name, b.spec.weight, b.spec.attributes)
                              for b in self.backends])
        for b in self.backends:
            for fault in b.spec.faults:
                loop.call_at(fault.start, b.fault_begin, fault)
                if fault.end is not None:
                    loop.call_at(fault.end, b.fault_end, fault)
        horizon = 0.0
        for i, spec in enumerate(sc.streams):
            stream = _Stream(spec, self.rng(f"stream:{i}"), i)
            horizon = max(horizon, spec.horizon())
            if spec.count == 0 or (spec.until is not None and spec.until <= spec.start):
                continue
            self._streams_open += 1
            first = spec.start + (stream.rng.expovariate(spec.rate)
                                  if spec.arrivals == "poisson" else 0.0)
            loop.call_at(first, self._arrive, stream)
        interval = sc.sample_interval or max(min(horizon, 1e9) / 1000.0, 0.001)
        loop.call_at(0.0, self._sample, interval)
        until = sc.until if sc.until is not None else horizon + EXTRA_TIME
        if self._streams_open == 0 and sc.until is None:
            until = 0.0
        try:
            loop.run(until)
        finally:
            self.stopped_at = loop.now
            for b in self.backends:
                b._count(0)
            # What the policies saw, per endpoint: (in flight, calls ended, failures).
            self.final_stats = {r.address: (r.stats.in_flight, r.stats.calls, r.stats.failures)
                                for r in bal.records()}
            bal.close()

    # ------------------------------------------------------------------ requests
    def _arrive(self, stream: _Stream) -> None:
        spec, rng, now = stream.spec, stream.rng, self.loop.now
        duration = spec.duration.sample(rng)
        key: str | None = None
        metadata: tuple[tuple[str, str], ...] = ()
        if spec.keys is not None:
            ks = spec.keys
            k = stream.sent % ks.count if ks.order == "sequential" else int(
                rng.random() * ks.count)
            key = f"{ks.prefix}{k}"
            metadata = ((ks.header, key),)
        stream.sent += 1
        # the next arrival
        more = spec.count is None or stream.sent < spec.count
        if more:
            if spec.arrivals == "poisson":
                nxt = now + rng.expovariate(spec.rate)
            else:
                nxt = spec.start + stream.sent / spec.rate
            if spec.until is not None and nxt >= spec.until:
                more = False
            else:
                self.loop.call_at(nxt, self._arrive, stream)
        if not more:
            self._streams_open -= 1
        call = SimCall(self.seq, now, duration, key, PickInfo(spec.method, metadata))
        self.seq += 1
        self.in_flight += 1
        if self.first_arrival is None:
            self.first_arrival = now
        if spec.deadline is not None:
            call.deadline = self.loop.call_at(now + spec.deadline, self._expire, call)
        if not self._pick(call):
            self.pending.append(call)

    def _pick(self, call: SimCall) -> bool:
        """Place ``call`` or fail it; False when it must wait for a new picker (the
        caller keeps it in ``pending``)."""
        try:
            result = self.balancer.picker.pick(call.info)
        except PickError as exc:
            if exc.queue:
                return False
            self.no_endpoint += 1
            self.finish(call, "UNAVAILABLE")
            return True
        call.result = result
        candidate = result.candidate
        if not result.counted:
            candidate.stats.begin()
        backend = self.by_name[candidate.address]
        call.backend = backend
        call.t_placed = self.loop.now
        if call.key is not None:
            self._route(call.key, backend.index)
        backend.admit(call)
        return True

    def _route(self, key: str, index: int) -> None:
        history = self.keys.get(key)
        if history is None:
            self.keys[key] = ([self.loop.now], [index])
        else:
            history[0].append(self.loop.now)
            history[1].append(index)

    def _retry_pending(self) -> None:
        self._retry_scheduled = False
        waiting, self.pending = self.pending, []
        for call in waiting:
            if call.state == PENDING and not self._pick(call):
                self.pending.append(call)

    def _expire(self, call: SimCall) -> None:
        call.deadline = None
        if call.state == DONE:
            return
        if call.backend is None:
            if call in self.pending:
                self.pending.remove(call)
        else:
            call.backend.cancel(call)
        self.finish(call, "DEADLINE_EXCEEDED")

    def finish(self, call: SimCall, code: str) -> None:
        """End ``call`` with ``code``: the channel's Completion steps, then the figures."""
        now = self.loop.now
        call.state = DONE
        if call.deadline is not None:
            call.deadline.cancel()
            call.deadline = None
        backend, result = call.backend, call.result
        ok = code == "OK"
        if result is not None:
            outcome = CallOutcome(code, now - call.t_placed)
            result.candidate.stats.end(outcome, code in self.balancer.failure_codes)
            if result.on_done is not None:
                result.on_done(outcome)
        if backend is not None:
            backend.ended(call, ok)
        self.finished += 1
        self.in_flight -= 1
        self.codes[code] = self.codes.get(code, 0) + 1
        if ok:
            self.latencies.append(now - call.arrival)
        else:
            self.failures.append((now, -1 if backend is None else backend.index, code))
        self.last_end = now
        if self.in_flight == 0 and self._streams_open == 0:
            self.loop.stop()

    # ------------------------------------------------------------------ observation
    def _on_change(self) -> None:
        """After every balancer change: fitness transitions and waiting calls."""
        now = self.loop.now
        bal = self.balancer
        for b in self.backends:
            rec = bal.record(b.name)
            if rec is None:
                continue
            b.eligible = rec.picked
            fit = rec.fit()
            if fit != b.fit:
                b.fit = fit
                b.transitions.append((now, fit, rec.unfit_reason()))
        if self.pending and not self._retry_scheduled:
            self._retry_scheduled = True
            self.loop.call_soon(self._retry_pending)

    def _on_event(self, event: EndpointEvent) -> None:
        self.events.append({"time": round(event.time, 6), "kind": event.kind,
                            "address": event.address, "reason": event.reason,
                            "finished_calls": self.finished})

    def _sample(self, interval: float) -> None:
        counts = tuple(b.n for b in self.backends)
        self.samples.append((self.loop.now, counts))
        weights = [b.spec.weight for b in self.backends if b.eligible]
        loads = [b.n for b in self.backends if b.eligible]
        total = sum(loads)
        if total > 0:
            fair = total / sum(weights)
            self.imbalance_sum += max(n / w for n, w in zip(loads, weights, strict=True)) / fair
            self.imbalance_n += 1
        self.loop.call_at(self.loop.now + interval, self._sample, interval)


def run_variant(scenario: Scenario, variant: Variant, seed: int,
                on_done: Callable[[Simulation], None] | None = None) -> Simulation:
    """Run one variant to the end and return the finished :class:`Simulation`."""
    sim = Simulation(scenario, variant, seed)
    sim.run()
    if on_done is not None:
        on_done(sim)
    return sim
