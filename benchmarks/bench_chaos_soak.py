"""Chaos soak (issue 18, item 7): >= 100,000 calls while everything around the channel
breaks - abandoned streams, frozen (SIGSTOP) and crashed (SIGKILL) backends, an address
that accepts TCP but never speaks HTTP/2, etcd losing its quorum - with every call
accounted for and the memory watched.

**Traffic** (``benchmarks/_soak.py``): ``threads`` callers through one channel, each call
drawn (seeded) from: ``unary`` (35 %: ``stub.Unary(req, timeout=5)``), ``future`` (15 %:
``.future()``, a done-callback, ``result()``), ``stream`` (20 %: 5 server-streamed
replies read to the end, timeout 10 s), ``drop`` (15 %: a stream of 20 replies 5 ms
apart, 1-3 read, then the iterator dropped) and ``cancel`` (15 %: the same, then
``cancel()``).

**Channel** (:data:`CONFIG`): endpoints from a 3-member etcd; ``least_request`` under
``outlier_detection`` (local-origin failures split out), active health checks,
``panicThreshold: 0``, a ``retryPolicy`` on UNAVAILABLE (5 attempts) with
``perAttemptRecvTimeout: 1s``; the etcd resolver retries with backoff up to 2 s.

**Faults** (seeded; a new one every 0.3-0.8 s, at most ``max_faults`` of the real
backends faulty at once, never one that would leave fewer than ``min_fit`` others
visibly READY, healthy and not ejected):

* ``kill``: an in-process backend drains (NOT_SERVING 0.2 s), stops with a 0.3 s grace and
  restarts on its port;
* ``unhealthy``: an in-process backend's health goes NOT_SERVING, then SERVING;
* ``errors``: an in-process backend answers UNAVAILABLE to every call for a while;
* ``crash``: a child-process backend is SIGKILLed; its address leaves etcd 0.2-0.6 s
  later and a new process (new port) joins once it serves;
* ``freeze``: a child-process backend is SIGSTOPped for 1.5-4 s, then SIGCONTed;
* ``silent``: a new address that accepts TCP but never speaks HTTP/2
  (:class:`lbclient.testing.SilentServer`) is in etcd for 1-3 s (one more such address is
  there for the whole run);
* ``quorum``: at fixed times 2 of the 3 etcd members are killed for ``quorum_loss`` s and
  restarted; meanwhile the channel must keep its endpoints (any endpoint change it sees
  is counted), and afterwards follow a change (a canary address) made once the quorum is
  back. Other faults go on meanwhile (those that need an etcd write wait for it).

**How each call ends** (exactly once):

* ``ok``: a unary reply, or a stream that delivered exactly its replies, in order;
* ``abandoned``: a drop/cancel stream that delivered the 1-3 replies read, in order,
  before the caller dropped or cancelled it (the caller's choice, not a failure);
* an **expected** failure - one gRPC cannot hide, that the caller must handle:
  ``stream-cut-by-crash`` / ``stream-cut-by-kill``: a response stream that had already
  received a reply from backend A (committed: gRPC never retries it) failed, and A was
  SIGKILLed / stopped during the call; ``deadline-on-frozen``: a stream that had received
  a reply from A ended DEADLINE_EXCEEDED while A was frozen (with freezes <= 4 s and
  stream deadlines of 10 s this should not happen: a stream that waits out a freeze is
  merely late). The brief's "deadline expired while every endpoint it could use was
  frozen" cannot happen here: the driver never freezes the last fit backends;
* an **unexpected** failure: everything else - any failed unary call or future (the
  retries, the per-attempt timeout and the drain must rescue them all), any stream that
  fails before its first reply (not committed: retryable), a stream whose replies are
  missing, duplicated or out of order, an exception that is not a ``grpc.RpcError``, a
  call ending more than 1 s after its deadline; a future whose done-callback did not run
  exactly once counts too.

**Lost calls**: calls started but not ended (per thread and kind), plus attempts the
channel or an in-process backend still counts in flight once the load stopped (after a
``gc.collect()``). Threads: the client's thread count (the harness's and the in-process
backends' threads aside) after the load must not exceed its count before it, nor, after
``close()``, its count before the channel.

**Memory**: RSS (``/proc/self/statm``, the whole process: client, in-process backends and
grpc's C core) and ``tracemalloc`` (started with the load) sampled every
``sample_every`` s after ``warmup`` s, each right after a ``gc.collect()`` (live memory,
not garbage waiting for a collection); the harness keeps nothing per call and, per
fault, only its history entry. Reported: samples, the least-squares slopes, the
growth from the first quarter's mean to the last quarter's, and the files whose traced
memory grew most. Flat: RSS growth <= 5 % and traced growth <= max(2 MiB, 5 %).

Run: ``.venv/bin/python -m benchmarks.bench_chaos_soak [--quick]`` (quick: 25 s of chaos,
one 4 s quorum loss; full: 10 s quorum losses at 20, 80 and 140 s, and on until 100,000
calls - about 10 minutes on the shared 2-core machine, where tracemalloc alone costs a
third of the rate). ``tests/test_chaos_faults.py`` runs each new fault briefly against
real backends, and this module's smoke form. Figures: docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import heapq
import itertools
import math
import pathlib
import random
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import grpc

import lbclient
from benchmarks._common import Section, Table, standalone_main
from benchmarks._soak import (
    CALL_KINDS,
    EXPECTED,
    FAULTS,
    MIB,
    TIMEOUT,
    UNARY,
    EtcdEndpoints,
    Hist,
    Load,
    Report,
    Sample,
    classify,
    client_threads,
    growth,
    memory_flat,
    names_diff,
    rss,
    slope,
    top_growth,
    traced_by_file,
)
from lbclient.testing import Fleet, ProcessBackend, SilentServer, echo_pb2_grpc

SCENARIO = 18
TITLE = ("Chaos soak: abandoned streams, frozen and silent backends, etcd quorum loss "
         "(>= 100,000 calls)")
SERVICE = "lbclient.testing.echo.v1.Echo"
PREFIX = "services/soak"
CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"outlier_detection": {
        "interval": "0.5s", "baseEjectionTime": "2s", "maxEjectionTime": "10s",
        "maxEjectionPercent": 50,
        "consecutiveFailures": 5, "splitExternalLocalOriginErrors": True,
        "consecutiveLocalOriginFailure": 5,
        "failurePercentageEjection": {"threshold": 50, "minimumHosts": 3, "requestVolume": 20},
        "childPolicy": [{"least_request": {}}]}}],
    "healthCheckConfig": {"serviceName": ""},
    "lbclient": {"panicThreshold": 0},
    "methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": {
        "maxAttempts": 5, "initialBackoff": "0.02s", "maxBackoff": "0.2s",
        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"],
        "perAttemptRecvTimeout": "1s"}}],
}
# Reconnect soon after a restart (grpc's default backoff starts at 1 s and grows to 120 s).
OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)]
RESOLVER = {"backoff_initial": 0.1, "backoff_max": 2.0, "dial_timeout": 2.0}
INPROC_FAULTS = ("kill", "unhealthy", "errors")


@dataclass(frozen=True)
class Settings:
    min_calls: int = 100_000          # chaos goes on past ``duration`` until this many calls
    duration: float = 160.0           # seconds of chaos at least
    max_duration: float = 900.0       # ... and at most
    threads: int = 8
    inproc: int = 3                   # in-process backends (kill, unhealthy, errors)
    children: int = 4                 # child-process backends (crash, freeze)
    step: tuple[float, float] = (0.3, 0.8)     # between two new faults
    fault: tuple[float, float] = (0.5, 1.5)    # kill / unhealthy / errors length
    freeze: tuple[float, float] = (1.5, 4.0)   # SIGSTOP length
    quorum_at: tuple[float, ...] = (20.0, 80.0, 140.0)   # seconds into the chaos
    quorum_loss: float = 10.0
    max_faults: int = 3               # real backends faulty at once
    min_fit: int = 2                  # others visibly fit when a fault starts
    warmup: float = 15.0              # seconds of load before memory samples count
    sample_every: float = 2.0
    seed: int = 18


FULL = Settings()
QUICK = replace(FULL, min_calls=0, duration=25.0, quorum_at=(6.0,), quorum_loss=4.0,
                warmup=5.0, sample_every=1.0)
SMOKE = replace(QUICK, duration=12.0, quorum_at=(3.0,), quorum_loss=2.0, threads=6,
                warmup=3.0, sample_every=0.5)


# ----------------------------------------------------------------------------- the run


class Soak:
    """One run; ``run()`` returns the :class:`Report`. The driver (the caller's thread)
    starts faults and ends them through a heap of due actions; helper threads
    (``chaos-*``) do what blocks: graceful stops, child spawns, the quorum loss."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.rng = random.Random(s.seed)
        self.report = Report()
        self.history: dict[str, list[list[Any]]] = {}   # address -> [[fault, t0, t1]]
        self.fault_of: dict[str, str] = {}              # address -> its fault right now
        self.due: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.lock = threading.Lock()
        self.seen_added: dict[str, float] = {}
        self.outage = False
        self.children: list[ProcessBackend | None] = []
        self.slot_busy: set[int] = set()
        self.born: dict[int, float] = {}                 # slot -> its new child's spawn
        self.spawns: list[threading.Thread] = []
        self.silents: list[SilentServer] = []
        self.quorum: threading.Thread | None = None
        self.failed_helpers: list[str] = []

    # ----------------------------------------------------------------- plumbing
    def later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.due, (time.monotonic() + delay, next(self.seq), fn))

    def helper(self, name: str, fn: Callable[[], None]) -> threading.Thread:
        def body() -> None:
            try:
                fn()
            except Exception as exc:   # noqa: BLE001 - reported: the run then fails
                self.failed_helpers.append(f"{name}: {exc!r}"[:300])
        t = threading.Thread(target=body, daemon=True, name=f"chaos-{name}")
        t.start()
        return t

    def begin(self, address: str, kind: str) -> None:
        self.history.setdefault(address, []).append([kind, time.monotonic(), None])
        self.fault_of[address] = kind
        self.report.faults[kind] += 1

    def end(self, address: str) -> None:
        entry = self.history[address][-1]
        entry[2] = time.monotonic()
        self.report.fault_seconds[entry[0]] += entry[2] - entry[1]
        self.fault_of.pop(address, None)

    def on_attempt(self, address: str, outcome: lbclient.CallOutcome) -> None:
        key = (self.fault_of.get(address, "none"), outcome.code)
        with self.lock:
            self.report.attempts[key] += 1

    def on_event(self, event: lbclient.EndpointEvent) -> None:
        if event.kind in ("added", "removed"):
            if self.outage:
                self.report.outage_changes += 1
            if event.kind == "added":
                self.seen_added[event.address] = time.monotonic()
        elif event.kind == "ejected":
            self.report.ejections[self.fault_of.get(event.address, "none")] += 1

    def channel_addresses(self) -> set[str]:
        return {e.address for e in self.channel.endpoints()}

    def real(self) -> list[str]:
        """The real backends' addresses: in-process, then live children."""
        return [b.address for b in self.fleet] + [
            c.address for c in self.children if c is not None]

    def fit(self, exclude: str) -> int:
        info = {e.address: e for e in self.channel.endpoints()}
        n = 0
        for a in self.real():
            e = info.get(a)
            if (a != exclude and a not in self.fault_of and e is not None
                    and e.connectivity == "READY" and e.health == "healthy"
                    and not e.ejected):
                n += 1
        return n

    def tick(self) -> None:
        """Run the due actions; free a crashed slot once its replacement joined."""
        while self.due and self.due[0][0] <= time.monotonic():
            heapq.heappop(self.due)[2]()
        joining = [slot for slot in self.slot_busy if slot in self.born]
        if joining:
            ready = {e.address for e in self.channel.endpoints() if e.connectivity == "READY"}
            for slot in joining:
                c = self.children[slot]
                if c is not None and c.address in ready and c.address not in self.fault_of:
                    self.slot_busy.discard(slot)
                    del self.born[slot]
        if self.quorum is not None and not self.quorum.is_alive():
            self.quorum = None
        self.spawns = [t for t in self.spawns if t.is_alive()]
        if self.failed_helpers:
            raise RuntimeError(f"chaos soak: {self.failed_helpers}")

    # ----------------------------------------------------------------- faults
    def step(self, kind: str) -> None:
        s = self.s
        if kind == "silent":
            if self.endpoints.paused:
                self.report.skipped[kind] += 1
            else:
                self.silent()
            return
        faulty = sum(b.address in self.fault_of for b in self.fleet) + len(self.slot_busy)
        if kind in INPROC_FAULTS:
            free = [b.address for b in self.fleet if b.address not in self.fault_of]
            if kind == "errors" and any(b.error_rate for b in self.fleet):
                free = []                               # one erroring backend at a time
        else:
            free = [c.address for i, c in enumerate(self.children)
                    if c is not None and i not in self.slot_busy]
        target = self.rng.choice(free) if free else ""
        if faulty >= s.max_faults or not free or self.fit(exclude=target) < s.min_fit:
            self.report.skipped[kind] += 1
        elif kind in INPROC_FAULTS:
            self.inproc(kind, self.fleet.by_address(target))
        else:
            slot = [c.address if c else "" for c in self.children].index(target)
            (self.crash if kind == "crash" else self.freeze)(slot)

    def inproc(self, kind: str, b: Any) -> None:
        a, hold = b.address, self.rng.uniform(*self.s.fault)
        self.begin(a, kind)
        if kind == "kill":          # drain, then a graceful stop; restart later
            b.set_health(False)

            def shutdown() -> None:
                time.sleep(0.2)
                self.history[a][-1][1] = time.monotonic()   # the stop, not the drain
                b.stop(0.3)
            t = self.helper("stop", shutdown)

            def restart() -> None:
                t.join(30)
                b.set_health(True)
                b.start()
                self.end(a)
            self.later(max(hold, 0.6), restart)
        elif kind == "unhealthy":
            b.set_health(False)

            def healthy() -> None:
                b.set_health(True)
                self.end(a)
            self.later(hold, healthy)
        else:
            b.set_error_rate(1.0, grpc.StatusCode.UNAVAILABLE, "chaos: injected failure")

            def correct() -> None:
                b.set_error_rate(0.0)
                self.end(a)
            self.later(hold, correct)

    def crash(self, slot: int) -> None:
        proc = self.children[slot]
        assert proc is not None
        self.slot_busy.add(slot)
        self.begin(proc.address, "crash")
        proc.crash()

        def respawn() -> None:
            self.endpoints.discard(proc.address)      # discovery notices, a bit later
            proc.close()
            self.children[slot] = None

            def spawn() -> None:
                child = ProcessBackend(1, ["--max-workers", "8"])
                self.born[slot] = time.monotonic()
                self.children[slot] = child
                self.endpoints.add(child.address)
                self.later(0.0, lambda: self.joined(proc.address, slot))
            self.spawns.append(self.helper("spawn", spawn))
        self.later(self.rng.uniform(0.2, 0.6), respawn)

    def joined(self, old: str, slot: int) -> None:
        """A crash ends when the channel has its replacement READY (a dead process is
        never READY, even when the new one got its port; tick frees the slot then)."""
        if slot not in self.slot_busy:
            self.end(old)
        else:
            self.later(0.02, lambda: self.joined(old, slot))

    def freeze(self, slot: int) -> None:
        proc = self.children[slot]
        assert proc is not None
        self.slot_busy.add(slot)
        self.begin(proc.address, "freeze")
        proc.freeze()

        def thaw() -> None:
            proc.thaw()
            self.end(proc.address)
            self.slot_busy.discard(slot)
        self.later(self.rng.uniform(*self.s.freeze), thaw)

    def silent(self) -> None:
        server = SilentServer()
        self.silents.append(server)
        self.begin(server.address, "silent")
        self.endpoints.add(server.address)

        def remove() -> None:
            self.endpoints.discard(server.address)
            self.end(server.address)  # (its port may serve a new child later)
            server.close()            # (the harness keeps nothing per fault but history)
            self.silents.remove(server)
            self.report.silent_connections += server.connections
        self.later(self.rng.uniform(*self.s.fault) * 2, remove)

    def lose_quorum(self, index: int) -> None:
        """Kill 2 of the 3 etcd members for ``quorum_loss`` s, then restart them; then
        time how long a change made afterwards takes to reach the channel."""
        rng = random.Random(self.s.seed * 7919 + index)
        deadline = time.monotonic() + 30
        self.endpoints.pause(30)      # (a crash may still change ``want`` meanwhile)
        while self.channel_addresses() != self.endpoints.in_etcd():
            if time.monotonic() > deadline:
                raise RuntimeError("the channel did not converge before the quorum loss")
            time.sleep(0.05)
        before = self.channel_addresses()
        victims = rng.sample(range(3), 2)
        self.outage = True
        t0 = time.monotonic()
        self.report.faults["quorum"] += 1
        for i in victims:
            self.etcd.kill(i)
        time.sleep(self.s.quorum_loss)
        for i in victims:
            self.etcd.restart(i)       # returns once the members serve (a leader again)
        back = time.monotonic()
        self.outage = False
        if self.channel_addresses() != before:
            self.report.outage_changes += 1
        self.report.fault_seconds["quorum"] += back - t0
        self.endpoints.resume()
        canary = self.canary.address
        self.endpoints.add(canary)
        while self.seen_added.get(canary, 0.0) < back:
            if time.monotonic() > back + 60:
                raise RuntimeError("the resolver did not recover within 60 s")
            time.sleep(0.01)
        self.report.quorum_outages.append((back - t0, self.seen_added[canary] - back))
        self.endpoints.discard(canary)

    # ----------------------------------------------------------------- the run
    def run(self) -> Report:
        from lbclient.testing.etcd import EtcdCluster
        s = self.s
        with contextlib.ExitStack() as stack:
            workdir = pathlib.Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="lbclient-soak-")))
            self.etcd = stack.enter_context(EtcdCluster(workdir / "etcd", 3))
            self.fleet = stack.enter_context(Fleet(
                s.inproc, names=[f"b{i}" for i in range(s.inproc)], max_workers=16))
            stack.callback(self._close_children)
            spawners = [self.helper("spawn", lambda: self.children.append(
                ProcessBackend(1, ["--max-workers", "8"]))) for _ in range(s.children)]
            for t in spawners:
                t.join(120)
            if len(self.children) != s.children:
                raise RuntimeError(f"child backends did not start: {self.failed_helpers}")
            self.permanent = stack.enter_context(SilentServer())
            self.canary = stack.enter_context(SilentServer())
            self.fault_of[self.permanent.address] = "silent"
            self.fault_of[self.canary.address] = "silent"
            self.endpoints = EtcdEndpoints(self.etcd, PREFIX)
            stack.callback(self.endpoints.close)
            for a in [*self.real(), self.permanent.address]:
                self.endpoints.add(a)
            self._with_channel()
            self.report.silent_connections += sum(
                x.connections for x in [self.permanent, self.canary, *self.silents])
            self.report.etcd_write_errors = self.endpoints.errors
        return self.report

    def _close_children(self) -> None:
        for t in self.spawns:
            t.join(60)
        for c in self.children:
            if c is not None:
                c.close()
        for x in self.silents:
            x.close()

    def _with_channel(self) -> None:
        s, r = self.s, self.report
        r.threads_pre_channel = len(client_threads())
        with lbclient.insecure_channel(self.etcd.target(PREFIX), service_config=CONFIG,
                                       options=OPTIONS, resolver_options=RESOLVER) as ch:
            self.channel = ch
            ch.add_event_listener(self.on_event)
            ch.add_call_listener(self.on_attempt)
            stub = echo_pb2_grpc.EchoStub(ch)
            stub.Unary(UNARY, timeout=30, wait_for_ready=True)
            _wait(lambda: self.fit("") == len(self.real()), 30, "every backend fit")
            base = client_threads()
            load = Load(stub, s.threads, s.seed)
            tracing = not tracemalloc.is_tracing()
            if tracing:
                tracemalloc.start()
            start = time.monotonic()
            load.start()
            try:
                self._drive(load, start)
            finally:
                r.stuck_threads = load.join(max(TIMEOUT.values()) + 10)
                r.seconds = time.monotonic() - start
                if tracing:
                    tracemalloc.stop()
            self._summarize(load)
            self._settle()
            r.threads_base, r.threads_end = len(base), len(client_threads())
            r.thread_diff = names_diff(base, client_threads())
        deadline = time.monotonic() + 10
        while len(client_threads()) > r.threads_pre_channel and time.monotonic() < deadline:
            time.sleep(0.05)
        r.threads_closed = len(client_threads())

    def _drive(self, load: Load, start: float) -> None:
        s = self.s
        kinds: list[str] = []
        quorum_at = [start + t for t in s.quorum_at]
        next_fault, next_sample = start + 0.5, start + s.warmup
        baseline: dict[str, int] | None = None
        while True:
            now = time.monotonic()
            if now >= start + s.max_duration or (
                    now >= start + s.duration and load.calls >= s.min_calls
                    and not quorum_at):
                break
            self.tick()
            if quorum_at and now >= quorum_at[0] and self.quorum is None:
                quorum_at.pop(0)
                index = len(s.quorum_at) - len(quorum_at)
                self.quorum = self.helper("quorum", functools.partial(self.lose_quorum, index))
            if now >= next_fault:
                if not kinds:
                    kinds = self.rng.sample(FAULTS[:-1], len(FAULTS) - 1)
                self.step(kinds.pop(0))
                next_fault = time.monotonic() + self.rng.uniform(*s.step)
            if baseline is None and now >= start + 2.0:
                baseline = traced_by_file()
            if now >= next_sample:
                self._sample(load, start)
                next_sample += s.sample_every
            time.sleep(0.01)
        self._sample(load, start)
        if baseline is not None:
            self.report.top_growth = top_growth(baseline, traced_by_file())
        self._repair()
        time.sleep(1.0)               # the load goes on a moment on the repaired fleet

    def _repair(self) -> None:
        """Let every fault end, then wait until the channel has every backend fit."""
        deadline = time.monotonic() + 90
        while self.due or self.quorum is not None or any(t.is_alive() for t in self.spawns):
            if time.monotonic() > deadline:
                raise RuntimeError("chaos soak: faults not repaired within 90 s")
            self.tick()
            time.sleep(0.01)
        def repaired() -> bool:
            self.tick()
            return (self.endpoints.synced() and not self.slot_busy
                    and self.channel_addresses() == self.endpoints.wanted()
                    and self.fit("") == len(self.real()))
        try:
            _wait(repaired, 60, "the repaired fleet")
        except RuntimeError:          # reported (the goal is then not met); figures kept
            self.report.repair_problem = self.diagnose()

    def diagnose(self) -> str:
        """Why the fleet is not repaired: what differs, and each unfit backend."""
        want, have = self.endpoints.wanted(), self.channel_addresses()
        parts = [f"etcd synced {self.endpoints.synced()}", f"busy slots {sorted(self.slot_busy)}"]
        if want != have:
            parts.append(f"channel lacks {sorted(want - have)}, has extra {sorted(have - want)}")
        info = {e.address: e for e in self.channel.endpoints()}
        for a in self.real():
            e = info.get(a)
            if e is None:
                continue
            if e.connectivity != "READY" or e.health != "healthy" or e.ejected:
                parts.append(f"{a}: {e.connectivity}, {e.health} {e.health_reason}, ejected "
                             f"{e.ejected} {e.eject_reason} (x{e.ejections}), fault "
                             f"{self.fault_of.get(a)}")
        return "; ".join(parts)

    def _sample(self, load: Load, start: float) -> None:
        gc.collect()                  # live memory, not garbage awaiting a collection
        traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
        self.report.samples.append(Sample(time.monotonic() - start, load.calls, rss(),
                                          traced, threading.active_count()))

    def _settle(self) -> None:
        """In-flight counts back to 0 (bounded: what is left is reported as lost)."""
        r = self.report
        deadline = time.monotonic() + 15
        while True:
            gc.collect()
            r.in_flight_end = sum(e.in_flight for e in self.channel.endpoints())
            r.backend_in_flight_end = sum(b.in_flight for b in self.fleet)
            if (r.in_flight_end == 0 and r.backend_in_flight_end == 0) or \
                    time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def _summarize(self, load: Load) -> None:
        r = self.report
        hist = {k: Hist() for k in CALL_KINDS}
        for st in load.stats:
            r.started.update(st.started)
            r.ended.update(st.ended)
            r.ok.update(st.ok)
            r.abandoned.update(st.abandoned)
            r.replies += st.replies
            if st.overflow:
                r.unexpected[("?", "overflow", "more than 1,000 failures")] += st.overflow
            for k in CALL_KINDS:
                hist[k].merge(st.hist[k])
            for f in st.failures:
                cls = classify(f, self.history)
                r.classes[(f.kind, cls)] += 1
                if cls == "unexpected":
                    r.unexpected[(f.kind, f.code, f.details[:160])] += 1
        r.calls = sum(r.ended.values())
        r.latency = {k: (h.quantile(0.5), h.quantile(0.99), h.max) for k, h in hist.items()}
        deadline = time.monotonic() + 5          # done-callbacks may run just after
        while load.callbacks_once < load.futures and time.monotonic() < deadline:
            time.sleep(0.01)
        r.futures, r.callbacks_once = load.futures, load.callbacks_once
        r.callbacks_extra = load.callbacks_extra


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"chaos soak: timed out waiting for {what}")
        time.sleep(0.02)


# ----------------------------------------------------------------------------- output


def _mib(n: float) -> str:
    return f"{n / MIB:.1f}"


def goal_met(r: Report, s: Settings) -> tuple[bool, list[str]]:
    """Whether the run met the goal, and what it missed."""
    rss_flat, traced_flat = memory_flat(r)
    missed = []
    if r.calls < s.min_calls:
        missed.append(f"{r.calls:,} calls < {s.min_calls:,}")
    if r.unexpected_total:
        missed.append(f"{r.unexpected_total} unexpected failures")
    if r.lost:
        missed.append(f"{r.lost} lost calls")
    if r.threads_end > r.threads_base or r.threads_closed > r.threads_pre_channel:
        missed.append(f"threads {r.threads_base} -> {r.threads_end} (open), "
                      f"{r.threads_pre_channel} -> {r.threads_closed} (closed)")
    if not (rss_flat and traced_flat):
        missed.append("memory grew")
    if r.repair_problem:
        missed.append(f"fleet not repaired within 60 s: {r.repair_problem}")
    if r.outage_changes:
        missed.append(f"{r.outage_changes} endpoint changes during quorum loss")
    absent = [k for k in FAULTS if not r.faults[k]]
    if absent:
        missed.append(f"faults never run: {', '.join(absent)}")
    return not missed, missed


def section(s: Settings, r: Report) -> Section:
    met, missed = goal_met(r, s)
    sec = Section(TITLE)
    rss = [float(x.rss) for x in r.samples]
    traced = [float(x.traced) for x in r.samples]
    ts = [x.t / 60 for x in r.samples]
    rss0, rss1 = growth(rss) if rss else (0.0, 0.0)
    tr0, tr1 = growth(traced) if traced else (0.0, 0.0)
    calls_k = [x.calls / 1000 for x in r.samples]
    totals = Table(["calls", "seconds", "calls/s", "unexpected failures",
                    "expected failures", "lost calls", "in-flight at end (channel / "
                    "backends)", "client threads base / end / closed (before channel)",
                    "RSS MiB first-quarter / last-quarter", "traced MiB first / last quarter"],
                   caption=f"{s.threads} threads, {s.inproc} in-process + {s.children} "
                           "child-process backends + a silent address, 3-member etcd")
    totals.rows.append([
        f"{r.calls:,}", f"{r.seconds:.0f}", f"{r.calls / max(r.seconds, 1e-9):.0f}",
        str(r.unexpected_total), str(r.expected), str(r.lost),
        f"{r.in_flight_end} / {r.backend_in_flight_end}",
        f"{r.threads_base} / {r.threads_end} / {r.threads_closed} "
        f"({r.threads_pre_channel})",
        f"{_mib(rss0)} / {_mib(rss1)} ({(rss1 / rss0 - 1) * 100 if rss0 else 0:+.1f} %)",
        f"{_mib(tr0)} / {_mib(tr1)} ({_mib(tr1 - tr0)} MiB)"])
    kinds = Table(["call kind", "started", "ok", "abandoned (by the caller)",
                   "expected failures", "unexpected failures", "p50 ms", "p99 ms",
                   "max ms"])
    for k in CALL_KINDS:
        exp = sum(n for (kind, c), n in r.classes.items() if kind == k and c in EXPECTED)
        unexp = r.classes[(k, "unexpected")]
        p50, p99, mx = r.latency.get(k, (0.0, 0.0, 0.0))
        kinds.rows.append([k, f"{r.started[k]:,}", f"{r.ok[k]:,}", f"{r.abandoned[k]:,}",
                           str(exp), str(unexp), f"{p50 * 1000:.1f}", f"{p99 * 1000:.0f}",
                           f"{mx * 1000:.0f}"])
    codes = ("OK", "UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")
    faults = Table(["fault", "injected", "seconds faulty", "skipped (no safe target)",
                    *[f"attempts on it: {c}" for c in codes], "other", "ejections"])
    for k in [*FAULTS, "none"]:
        att = {c: n for (f, c), n in r.attempts.items() if f == k}
        other = sum(n for c, n in att.items() if c not in codes)
        if k == "quorum":     # no endpoint of its own
            faults.rows.append([k, str(r.faults[k]), f"{r.fault_seconds[k]:.0f}", "0",
                                *["-"] * (len(codes) + 2)])
            continue
        faults.rows.append([k, str(r.faults[k]) if k != "none" else "-",
                            f"{r.fault_seconds[k]:.0f}" if k != "none" else "-",
                            str(r.skipped[k]), *[f"{att.get(c, 0):,}" for c in codes],
                            str(other), str(r.ejections[k])])
    classes = Table(["class", "count", "rule"])
    rules = {
        "ok": "a reply / every stream reply, in order",
        "abandoned": "drop/cancel streams: the 1-3 replies read, in order, then dropped",
        "stream-cut-by-crash": "a stream with >= 1 reply from A, failed; A SIGKILLed "
                               "during the call",
        "stream-cut-by-kill": "the same, A stopped (graceful kill) during the call",
        "deadline-on-frozen": "a stream with >= 1 reply from A, DEADLINE_EXCEEDED while "
                              "A was frozen",
        "unexpected": "everything else (see the notes)"}
    counts = Counter({"ok": sum(r.ok.values()), "abandoned": sum(r.abandoned.values())})
    for (_, c), n in r.classes.items():
        counts[c] += n
    for c, rule in rules.items():
        classes.rows.append([c, f"{counts[c]:,}", rule])
    memory = Table(["t s", "calls", "RSS MiB", "traced MiB", "threads (process)"],
                   caption=f"every {s.sample_every:g} s after {s.warmup:g} s of warm-up "
                           "(up to 12 rows shown); slope: RSS "
                           f"{_mib(slope(ts, rss))} MiB/min, traced "
                           f"{slope(ts, traced) / 1024:.0f} KiB/min = "
                           f"{slope(calls_k, traced):.0f} B per 1,000 calls")
    stride = max(1, math.ceil(len(r.samples) / 12))
    shown = r.samples[::stride] + ([r.samples[-1]] if (len(r.samples) - 1) % stride else [])
    for x in shown:
        memory.rows.append([f"{x.t:.0f}", f"{x.calls:,}", _mib(x.rss), _mib(x.traced),
                            str(x.threads)])
    sec.tables = [totals, kinds, classes, faults, memory]
    outages = "; ".join(f"{down:.1f} s without quorum, a change seen {rec:.2f} s after "
                        "it was back" for down, rec in r.quorum_outages)
    minimum = f">= {s.min_calls:,} calls" if s.min_calls else "no call minimum (short form)"
    cancelled = sum(n for (_, c), n in r.attempts.items() if c == "CANCELLED")
    sec.notes += [
        f"**Goal** ({minimum}, 0 unexpected failures, 0 lost calls, flat memory, every "
        f"fault type): **{'met' if met else 'NOT met'}**"
        + ("" if met else f" ({'; '.join(missed)})") + ".",
        f"etcd quorum loss: {outages or 'none'}; endpoint changes seen by the channel "
        f"while the quorum was lost: {r.outage_changes}; failed etcd writes retried: "
        f"{r.etcd_write_errors}.",
        f"Silent addresses: {r.silent_connections} TCP connections accepted, "
        f"{sum(n for (f, _), n in r.attempts.items() if f == 'silent')} attempts placed.",
        f"Futures: {r.futures:,}, done-callbacks run once {r.callbacks_once:,}, more than "
        f"once {r.callbacks_extra}; load threads still running at the end: "
        f"{r.stuck_threads}; stream replies received: {r.replies:,}.",
        "Attempts on a faulty endpoint: DEADLINE_EXCEEDED on a frozen one are attempts "
        "cut by perAttemptRecvTimeout (then retried elsewhere); UNAVAILABLE ones were "
        "retried. Attempts the channel ended CANCELLED: "
        f"{cancelled:,}, abandoned streams: {sum(r.abandoned.values()):,} (each "
        "abandoned stream's attempt ends CANCELLED, unless the server had already "
        "finished it).",
    ]
    if r.thread_diff:
        sec.notes.append(f"Client threads, end vs base: {', '.join(r.thread_diff)}.")
    if r.top_growth:
        sec.notes.append("Traced memory growth by file (2 s into the load to the end): "
                         + "; ".join(r.top_growth) + ".")
    for (kind, code, details), n in r.unexpected.most_common(10):
        sec.notes.append(f"Unexpected: {n} x {kind} {code}: {details}")
    sec.notes.append("The machine is shared (2 cores, other engineers' runs): rates and "
                     "latencies are noisy; the counts are not.")
    m = sec.metrics
    for key, value in (("calls", r.calls), ("unexpected", r.unexpected_total),
                       ("expected", r.expected), ("lost", r.lost),
                       ("stuck_threads", r.stuck_threads),
                       ("in_flight_end", r.in_flight_end),
                       ("threads_base", r.threads_base), ("threads_end", r.threads_end),
                       ("outage_changes", r.outage_changes),
                       ("rss_growth", rss1 / rss0 - 1 if rss0 else 0.0),
                       ("traced_growth_mib", (tr1 - tr0) / MIB), ("goal_met", float(met))):
        m[key] = float(value)
    for k in FAULTS:
        m[f"faults.{k}"] = float(r.faults[k])
    return sec


def run_soak(s: Settings) -> Report:
    return Soak(s).run()


def run(quick: bool) -> Section:
    s = QUICK if quick else FULL
    return section(s, run_soak(s))


def run_smoke() -> Section:
    return section(SMOKE, run_soak(SMOKE))


def main(argv: list[str] | None = None) -> int:
    return standalone_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
