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

Many clients (``"clients": K``): K balancers, each with its own connections and health
checkers to the same backends, its own config (``deterministic_subsetting`` gets
``clientIndex = i``, ``clientCount = K``: :mod:`lbclient.simulate.fleet`) and its own
random streams (client 0 uses the single client's, so ``"clients": 1`` is the plain
simulation). The requests are the fleet's: call ``n`` (in arrival order, over every
stream) is sent by client ``n mod K``. A backend counts as fit while every client that
holds it finds it fit (marked unfit when the first client marks it, readmitted when the
last one readmits it), and as eligible while any client may pick it.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..balancer.balancer import Balancer
from ..balancer.picker import CallOutcome, PickError, PickInfo
from ..config import ServiceConfig
from ..endpoint import Endpoint
from ..health.events import EndpointEvent
from ..health.options import BalancingOptions
from .backend import (
    DONE,
    PENDING,
    SimBackend,
    SimCall,
    SimConnectionFactory,
    SimHealthFactory,
)
from .clock import EventLoop
from .fleet import BatchedTimers, FleetFigures, client_configs, fleet_figures
from .scenario import Scenario, StreamSpec, Variant, parse_variant_config

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


class SimClient:
    """One client channel of the simulation: its balancer and config, the calls waiting
    for its next picker, and what it last reported per endpoint (picked, fit)."""

    def __init__(self, index: int, config: ServiceConfig, options: BalancingOptions,
                 balancer: Balancer) -> None:
        self.index = index
        self.config = config
        self.options = options
        self.balancer = balancer
        self.pending: list[SimCall] = []
        self.retry_scheduled = False
        self.generation = -1
        self.seen: dict[str, tuple[bool, bool]] = {}
        # at the end of the run, before the balancer closes: what it held, per address
        # (in flight, calls ended, failures), in its order
        self.final_stats: dict[str, tuple[int, int, int]] = {}


class Simulation:
    """Runs one variant of a scenario; read the figures from its attributes afterwards
    (:func:`lbclient.simulate.report.build_run_report` does). ``balancer`` is client
    0's (the only one unless the scenario sets ``clients``)."""

    def __init__(self, scenario: Scenario, variant: Variant, seed: int) -> None:
        self.scenario = scenario
        self.variant = variant
        self.seed = seed
        self.loop = EventLoop()
        self.backends = [SimBackend(spec, i, self, self.rng(f"service:{spec.name}"),
                                    self.rng(f"errors:{spec.name}"))
                         for i, spec in enumerate(scenario.backends)]
        self.by_name = {b.name: b for b in self.backends}
        # per backend: clients holding it / finding it fit / picking it
        self._holders = [0] * len(self.backends)
        self._fit_votes = [0] * len(self.backends)
        self._picked_votes = [0] * len(self.backends)
        self.clients = [self._client(i, config, options) for i, (config, options)
                        in enumerate(self._configs())]
        self.balancer = self.clients[0].balancer
        self.fleet: FleetFigures | None = None
        self.end_connections = [0] * len(self.backends)
        self.end_health_checks = [0] * len(self.backends)
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
        self._streams_open = 0
        self.final_stats: dict[str, tuple[int, int, int]] = {}
        self.first_arrival: float | None = None
        self.last_end = 0.0
        self.stopped_at = 0.0

    def rng(self, purpose: str) -> random.Random:
        return random.Random(f"{self.seed}:{purpose}")

    def _configs(self) -> list[tuple[ServiceConfig, BalancingOptions]]:
        k, variant = self.scenario.clients, self.variant
        if k == 1:
            return [(variant.config, variant.options)]
        if len(variant.client_configs) == k:
            return list(variant.client_configs)
        return list(client_configs(variant.raw, k,
                                   lambda raw: parse_variant_config(raw, variant.label)))

    def _client(self, i: int, config: ServiceConfig, options: BalancingOptions) -> SimClient:
        """Client ``i``: client 0 draws from the single client's random streams; with
        several clients, each one's connections and checkers batch their events."""
        tag = "" if i == 0 else f":{i}"
        timers = BatchedTimers(self.loop) if self.scenario.clients > 1 else None
        bal = Balancer(SimConnectionFactory(self.by_name, self.rng(f"connect{tag}"), timers),
                       clock=self.loop, rng=self.rng(f"balancer{tag}"), scheduler=self.loop,
                       health_factory=SimHealthFactory(self.rng(f"health{tag}"), timers))
        if timers is not None:
            timers.bind(bal.batch)
        return SimClient(i, config, options, bal)

    # ------------------------------------------------------------------ setup and run
    def run(self) -> None:
        """Run to the end (or ``until``); then close the balancer."""
        with quiet_sdk_logs():
            self._run()

    def _run(self) -> None:
        sc, loop = self.scenario, self.loop
        endpoints = [Endpoint(b.name, b.spec.weight, b.spec.attributes)
                     for b in self.backends]
        for client in self.clients:
            bal, config = client.balancer, client.config
            bal.add_listener(functools.partial(self._on_change, client))
            bal.add_event_listener(self._on_event if len(self.clients) == 1 else
                                   functools.partial(self._on_event, client=client.index))
            # The channel's order (LoadBalancedChannel._apply_config).
            bal.set_options(client.options)
            bal.set_health_check(config.health_check)
            bal.set_policy(config.lb.spec, config.lb.config)
            bal.update_endpoints(endpoints)
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
            # What the policies saw, per endpoint: (in flight, calls ended, failures),
            # summed over the clients (zeros for a backend no client holds).
            stats: dict[str, tuple[int, int, int]] = {b.name: (0, 0, 0)
                                                      for b in self.backends}
            for client in self.clients:
                client.final_stats = {r.address: (r.stats.in_flight, r.stats.calls,
                                                  r.stats.failures)
                                      for r in client.balancer.records()}
                for address, (a, c, f) in client.final_stats.items():
                    a0, c0, f0 = stats.get(address, (0, 0, 0))
                    stats[address] = (a0 + a, c0 + c, f0 + f)
            self.final_stats = stats
            # Per backend before the clients close: connections and health checkers.
            self.end_connections = [b.connections() for b in self.backends]
            self.end_health_checks = [len(b.checkers) for b in self.backends]
            self.fleet = fleet_figures(len(self.clients), self.end_connections,
                                       self.end_health_checks,
                                       [b.placed for b in self.backends])
            for client in self.clients:
                client.balancer.close()

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
        call = SimCall(self.seq, now, duration, key, PickInfo(spec.method, metadata),
                       self.seq % len(self.clients))
        self.seq += 1
        self.in_flight += 1
        if self.first_arrival is None:
            self.first_arrival = now
        if spec.deadline is not None:
            call.deadline = self.loop.call_at(now + spec.deadline, self._expire, call)
        if not self._pick(call):
            self.clients[call.client].pending.append(call)

    def _pick(self, call: SimCall) -> bool:
        """Place ``call`` or fail it; False when it must wait for a new picker (the
        caller keeps it in its client's ``pending``)."""
        try:
            result = self.clients[call.client].balancer.picker.pick(call.info)
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

    def _retry_pending(self, client: SimClient) -> None:
        client.retry_scheduled = False
        waiting, client.pending = client.pending, []
        for call in waiting:
            if call.state == PENDING and not self._pick(call):
                client.pending.append(call)

    def _expire(self, call: SimCall) -> None:
        call.deadline = None
        if call.state == DONE:
            return
        if call.backend is None:
            pending = self.clients[call.client].pending
            if call in pending:
                pending.remove(call)
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
            failure_codes = self.clients[call.client].balancer.failure_codes
            result.candidate.stats.end(outcome, code in failure_codes)
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
    def _on_change(self, client: SimClient) -> None:
        """After every change of a client's balancer: fitness transitions (read when it
        published a new picker: every eligibility change rebuilds it) and waiting calls."""
        bal = client.balancer
        if bal.generation != client.generation:
            client.generation = bal.generation
            self._scan(client)
        if client.pending and not client.retry_scheduled:
            client.retry_scheduled = True
            self.loop.call_at(self.loop.now, self._retry_pending, client)

    def _scan(self, client: SimClient) -> None:
        now, seen = self.loop.now, client.seen
        holders, fit_votes, picked_votes = self._holders, self._fit_votes, self._picked_votes
        for rec in client.balancer.records():
            state = (rec.picked, rec.fit())
            before = seen.get(rec.address)
            if before == state:
                continue
            seen[rec.address] = state
            b = self.by_name[rec.address]
            i = b.index
            if before is None:
                holders[i] += 1
                before = (False, False)
            picked_votes[i] += state[0] - before[0]
            fit_votes[i] += state[1] - before[1]
            b.eligible = picked_votes[i] > 0
            fit = fit_votes[i] == holders[i]
            if fit != b.fit:
                b.fit = fit
                b.transitions.append((now, fit, rec.unfit_reason()))

    def _on_event(self, event: EndpointEvent, client: int | None = None) -> None:
        record = {"time": round(event.time, 6), "kind": event.kind,
                  "address": event.address, "reason": event.reason,
                  "finished_calls": self.finished}
        if client is not None:       # several clients: which one saw it
            record["client"] = client
        self.events.append(record)

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
