"""Chaos under load (issue 10): everything around the channel breaks while it serves.

Eight client threads make steady Echo.Unary calls (blocking calls and futures, 5 s
deadline) through one lbclient channel with a ``retryPolicy`` (UNAVAILABLE, maxAttempts
5), active health checking and outlier detection, while a seeded driver keeps breaking
and repairing things (at most one fault per backend, at most 3 of the 5 at once):

* **kill** - a graceful restart, as a deploy does it: the backend turns NOT_SERVING
  (drain), 0.2 s later ``stop(grace=0.3)`` (in-flight calls finish, then GOAWAY), and it
  starts again on the same port a moment later;
* **crash** - a backend in a child process (``python -m lbclient.testing serve``) is
  SIGKILLed: its connections reset and in-flight calls end UNAVAILABLE; discovery drops
  its address shortly after, and a new process (new port) is added once it serves;
* **unhealthy** - a backend's grpc.health.v1 status goes NOT_SERVING, then SERVING;
* **errors** - one backend answers UNAVAILABLE to every call for a while;
* **remove** - a backend leaves the endpoint set (the file, or etcd) and comes back.

What a user should expect, and why the kill drains first: a grpc-core server (Python,
C++...) that stops, even with a grace period, cancels the calls that reached it but were
not yet handed to the application, and the client sees **CANCELLED**, which is not
retryable by default (a plain ``Backend.stop()`` without grace cancels in-flight calls
too). Draining through health checking first avoids that; a crash, by contrast, resets
the connection and its calls end UNAVAILABLE, which the retryPolicy covers. The main
variants set ``panicThreshold: 0``: panic mode (Envoy's rule, default 50%) deliberately
sends calls to unhealthy - here, draining - endpoints when too few are fit, which defeats
the drain; the ``file-intense-panic50`` run of the long form (4 of 5 backends faulty at
once, faults every 0.05-0.15 s, default threshold) shows what that costs.

The driver never takes the last healthy backend: a fault starts only if another of the
five in-process backends is fault-free *and* the channel sees it READY, healthy and not
ejected. So every call must succeed; each is counted exactly once (futures: their
done-callback runs once). An endpoint removed from the set may still get calls that
picked it before the update was applied (the race window); ``window`` (0.5 s) after the
channel dropped it, it must get none, checked with the backend's own call counter and
with the channel's per-attempt listener (attempt start = end - latency). Reported: calls,
failures, the longest gap without a successful call, attempts per call.

Run: ``.venv/bin/python -m benchmarks.bench_chaos [--quick]`` (quick: 15 s, file
resolver; full: 40 s each with the file resolver, etcd, and the file resolver with the
default panic threshold). The test suite runs a short form (``tests/test_chaos.py``).
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import pathlib
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import grpc

import lbclient
import lbclient.etcd
from benchmarks._common import BackendProcess, Section, Table, standalone_main
from lbclient.testing import Backend, Fleet, echo_pb2, echo_pb2_grpc

SCENARIO = 10
TITLE = "Chaos: kills, crashes, health flips, an erroring backend, endpoint changes"
SERVICE = "lbclient.testing.echo.v1.Echo"
REQ = echo_pb2.EchoRequest(message="chaos")
CONFIG = {
    "loadBalancingConfig": [{"outlier_detection": {
        "interval": "0.5s", "baseEjectionTime": "1s", "maxEjectionPercent": 50,
        "consecutiveFailures": 5,
        "failurePercentageEjection": {"threshold": 50, "minimumHosts": 3, "requestVolume": 20},
        "childPolicy": [{"round_robin": {}}]}}],
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": {
        "maxAttempts": 5, "initialBackoff": "0.02s", "maxBackoff": "0.2s",
        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}],
}
# Reconnect soon after a restart (grpc's default backoff starts at 1 s and grows to 120 s).
OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)]
KINDS = ("kill", "unhealthy", "errors", "remove", "crash")


class Variant(NamedTuple):
    """One run: its name, the resolver ("file" or "etcd"), the panic threshold, and
    ``intense``: up to 4 of 5 backends faulty, a new fault every 0.05-0.15 s. The long
    form's intense run with the default threshold is informational: panic mode then
    sends calls to draining backends (see the module docstring)."""

    name: str
    resolver: str
    panic_threshold: int = 0
    intense: bool = False


@dataclass(frozen=True)
class Settings:
    duration: float = 40.0            # seconds of chaos per variant
    variants: tuple[Variant, ...] = (
        Variant("file", "file"), Variant("etcd", "etcd"),
        Variant("file-intense-panic50", "file", panic_threshold=50, intense=True))
    threads: int = 8
    pause: float = 0.002              # between one thread's calls
    step: tuple[float, float] = (0.15, 0.35)   # between two new faults
    fault: tuple[float, float] = (0.4, 1.2)    # how long a fault lasts
    max_faults: int = 3               # in-process backends faulty at once (of 5)
    crash: bool = True
    drain: float = 0.2                # kill: NOT_SERVING this long before stopping
    grace: float = 0.3                # kill: in-flight calls get this long to finish
    window: float = 0.5               # removed endpoints: calls allowed this long after
    seed: int = 1


FULL = Settings()
QUICK = replace(FULL, duration=15.0, variants=(Variant("file", "file"),))
SMOKE = replace(FULL, duration=3.0, variants=(Variant("file", "file"),), crash=False)


@dataclass
class Report:
    """What one run saw. ``failures`` maps (code, details) to a count."""

    name: str
    resolver: str
    panic_threshold: int = 0
    seconds: float = 0.0
    calls: int = 0
    ok: int = 0
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    other_errors: Counter[str] = field(default_factory=Counter)  # not grpc.RpcError: a bug
    callbacks_wrong: int = 0          # futures whose done-callback did not run exactly once
    longest_gap: float = 0.0          # seconds without a successful call
    attempts: int = 0                 # attempts placed on an endpoint (call listener)
    attempt_codes: Counter[str] = field(default_factory=Counter)  # how attempts ended
    crash_attempts: int = 0           # attempts placed on the child-process backend
    actions: Counter[str] = field(default_factory=Counter)
    removals_checked: int = 0
    in_window: int = 0                # backend-counted calls within the window (allowed)
    late_server: int = 0              # backend-counted calls after the window (must be 0)
    late_client: int = 0              # attempts placed on it after the window (must be 0)
    unexpected_healthless: int = 0    # times the driver found no visibly healthy backend

    @property
    def failed(self) -> int:
        return sum(self.failures.values()) + sum(self.other_errors.values())


class _Endpoints:
    """The endpoint set as the resolver sees it: a JSON file (atomic rename) or etcd keys."""

    def __init__(self, kind: str, workdir: str) -> None:
        self.current: list[str] = []
        self.path = os.path.join(workdir, "endpoints.json")
        self.etcd: Any = None
        if kind == "etcd":
            from lbclient.testing.etcd import EtcdCluster
            self.etcd = EtcdCluster(pathlib.Path(workdir) / "etcd", 1)

    @property
    def target(self) -> str:
        return (self.etcd.target("services/chaos") if self.etcd is not None
                else f"file://{self.path}")

    def set(self, addresses: list[str]) -> None:
        if self.etcd is not None:
            for a in set(self.current) - set(addresses):
                lbclient.etcd.remove_endpoint(self.etcd.endpoints, "services/chaos", a)
            for a in [a for a in addresses if a not in self.current]:
                lbclient.etcd.add_endpoint(self.etcd.endpoints, "services/chaos", a)
        else:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"endpoints": [{"address": a} for a in addresses]}, f)
            os.replace(tmp, self.path)
        self.current = list(addresses)

    def close(self) -> None:
        if self.etcd is not None:
            self.etcd.close()


class _Load:
    """``threads`` callers; every call ends exactly once, as a success or a status."""

    def __init__(self, stub: Any, s: Settings) -> None:
        self.stub, self.s = stub, s
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.successes: list[list[float]] = [[] for _ in range(s.threads)]
        self.failures: Counter[tuple[str, str]] = Counter()
        self.other: Counter[str] = Counter()
        self.calls = [0] * s.threads
        self.callbacks: dict[tuple[int, int], int] = {}
        self.threads = [threading.Thread(target=self._run, args=(t,), daemon=True,
                                         name=f"chaos-load-{t}") for t in range(s.threads)]

    def _run(self, t: int) -> None:
        ok = self.successes[t]
        for i in itertools.count():
            if self.stop.is_set():
                return
            self.calls[t] += 1
            try:
                if i % 2:
                    fut = self.stub.Unary.future(REQ, timeout=5)
                    fut.add_done_callback(lambda _f, k=(t, i): self._called_back(k))
                    fut.result()
                else:
                    self.stub.Unary(REQ, timeout=5)
                ok.append(time.monotonic())
            except grpc.RpcError as exc:
                code = exc.code().name if isinstance(exc, grpc.Call) else "?"
                details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
                with self.lock:
                    self.failures[(code, details or "")] += 1
            except Exception as exc:   # never expected: counted and reported
                with self.lock:
                    self.other[repr(exc)[:200]] += 1
            time.sleep(self.s.pause)

    def _called_back(self, key: tuple[int, int]) -> None:
        with self.lock:
            self.callbacks[key] = self.callbacks.get(key, 0) + 1


class Chaos:
    """One run of one variant. ``run()`` returns the :class:`Report`."""

    def __init__(self, s: Settings, variant: Variant) -> None:
        self.s = replace(s, max_faults=4, step=(0.05, 0.15)) if variant.intense else s
        self.rng = random.Random(s.seed)
        self.report = Report(variant.name, variant.resolver, variant.panic_threshold)
        self.busy: set[str] = set()            # addresses with a fault in progress
        self.due: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.removed: dict[str, float] = {}    # address -> when the channel dropped it
        self.marks: dict[str, list[int]] = {}  # address -> its calls then, and after window
        self.late_lock = threading.Lock()
        self.crashed: BackendProcess | None = None
        self.spawning: threading.Thread | None = None
        self.spawned: BackendProcess | None = None
        self.closing = False                   # repair at once, measure nothing more
        self.adding: set[str] = set()          # re-added, until the channel has it again
        self.added: set[str] = set()           # "added" events seen (resolver thread)

    # ----------------------------------------------------------------- plumbing
    def later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.due, (time.monotonic() + delay, next(self.seq), fn))

    def run_due(self, everything: bool = False) -> None:
        while self.due and (everything or self.due[0][0] <= time.monotonic()):
            heapq.heappop(self.due)[2]()

    def on_event(self, event: lbclient.EndpointEvent) -> None:
        """On the resolver's thread, right after the channel dropped the endpoint (its
        new picker is already published)."""
        if event.kind == "removed" and event.address in self.removed:
            self.marks[event.address] = [self.fleet.by_address(event.address).calls]
            self.removed[event.address] = time.monotonic()
        elif event.kind == "added":
            self.added.add(event.address)

    def on_attempt(self, address: str, outcome: lbclient.CallOutcome) -> None:
        placed = time.monotonic() - outcome.latency
        with self.late_lock:
            self.report.attempts += 1
            self.report.attempt_codes[outcome.code] += 1
            if self.crashed is not None and address in self.crashed.addresses:
                self.report.crash_attempts += 1
            since = self.removed.get(address)
            if since and placed > since + self.s.window:
                self.report.late_client += 1

    def visibly_healthy(self, exclude: str) -> int:
        info = {e.address: e for e in self.channel.endpoints()}
        n = 0
        for b in self.fleet:
            e = info.get(b.address)
            if (b.address != exclude and b.address not in self.busy and e is not None
                    and e.connectivity == "READY" and e.health == "healthy" and not e.ejected):
                n += 1
        return n

    def members(self) -> list[str]:
        out = [b.address for b in self.fleet if b.address not in self.removed]
        if self.crashed is not None:
            out += self.crashed.addresses
        return out

    # ----------------------------------------------------------------- faults
    def fault(self, kind: str, b: Backend) -> None:
        a, hold = b.address, self.rng.uniform(*self.s.fault)
        self.busy.add(a)
        self.report.actions[kind] += 1
        if kind == "kill":   # drain (NOT_SERVING), then a graceful stop; restart later
            b.set_health(False)

            def shutdown() -> None:
                time.sleep(self.s.drain)
                b.stop(self.s.grace)
            t = threading.Thread(target=shutdown, daemon=True)
            t.start()

            def restart() -> None:
                t.join(30)
                b.set_health(True)          # a new server starts SERVING
                b.start()
                self.busy.discard(a)
            self.later(max(hold, self.s.drain + self.s.grace), restart)
        elif kind == "unhealthy":
            b.set_health(False)
            self.later(hold, lambda: (b.set_health(True), self.busy.discard(a)))
        elif kind == "errors":
            b.set_error_rate(1.0, grpc.StatusCode.UNAVAILABLE, "chaos: injected failure")
            self.later(hold, lambda: (b.set_error_rate(0.0), self.busy.discard(a)))
        elif kind == "remove":
            with self.late_lock:
                self.removed[a] = 0.0                   # set by the "removed" event
            self.endpoints.set(self.members())
            self.later(hold, lambda: self.readd(b))

    def readd(self, b: Backend) -> None:
        """Put a removed backend back, once its window has been measured: the calls it
        counted within the window, and after it (must be none)."""
        mark = self.marks.pop(b.address, None)
        if (mark is None or len(mark) < 2) and not self.closing:
            if mark is not None:
                self.marks[b.address] = mark
            self.later(0.05, lambda: self.readd(b))     # update not applied yet: wait
            return
        with self.late_lock:
            del self.removed[b.address]
        if mark is not None and len(mark) == 2:
            self.report.in_window += mark[1] - mark[0]
            self.report.late_server += b.calls - mark[1]
            self.report.removals_checked += 1
        self.added.discard(b.address)
        self.adding.add(b.address)   # busy until applied: a resolver polling a file may
        self.endpoints.set(self.members())   # never see a version that is soon replaced

    def mark_removed(self) -> None:
        """Note a removed backend's counter once the window after its removal ends."""
        now = time.monotonic()
        for address, mark in list(self.marks.items()):
            if len(mark) == 1 and now >= self.removed[address] + self.s.window:
                mark.append(self.fleet.by_address(address).calls)

    def crash(self) -> None:
        proc = self.crashed
        if proc is None or self.spawning is not None or proc.pid is None:
            return
        self.report.actions["crash"] += 1
        os.kill(proc.pid, signal.SIGKILL)

        def respawn() -> None:
            self.crashed = None
            self.endpoints.set(self.members())          # discovery notices the dead one
            proc.close()
            self.spawning = threading.Thread(target=self._spawn, daemon=True)
            self.spawning.start()
        self.later(self.rng.uniform(0.2, 0.6), respawn)

    def _spawn(self) -> None:
        try:
            self.spawned = BackendProcess(1, ["--max-workers", "8"]).__enter__()
        except Exception:
            self.spawned = None

    def adopt_spawned(self) -> None:
        if self.spawning is not None and not self.spawning.is_alive():
            self.spawning = None
            self.crashed, self.spawned = self.spawned, None
            self.endpoints.set(self.members())

    def step(self, kinds: list[str]) -> None:
        kind = kinds.pop(0)
        if kind == "crash":
            if self.s.crash:
                self.crash()
            return
        free = [b for b in self.fleet if b.address not in self.busy]
        if len(self.busy) >= self.s.max_faults or not free:
            return
        if kind == "errors" and any(b.error_rate for b in self.fleet):
            return                                      # one erroring backend at a time
        b = self.rng.choice(free)
        if self.visibly_healthy(exclude=b.address) < 1:
            self.report.unexpected_healthless += 1
            return
        self.fault(kind, b)

    # ----------------------------------------------------------------- the run
    def run(self) -> Report:
        s = self.s
        with tempfile.TemporaryDirectory(prefix="lbclient-chaos-") as workdir, \
                Fleet(5, names=[f"b{i}" for i in range(5)], max_workers=16) as fleet:
            self.fleet = fleet
            self.endpoints = _Endpoints(self.report.resolver, workdir)
            try:
                if s.crash:
                    self.crashed = BackendProcess(1, ["--max-workers", "8"]).__enter__()
                self.endpoints.set(self.members())
                self._run_with_channel()
            finally:
                self.closing = True
                self.run_due(everything=True)
                for proc in (self.crashed, self.spawned):
                    if proc is not None:
                        proc.close()
                if self.spawning is not None:
                    self.spawning.join(60)
                    if self.spawned is not None:
                        self.spawned.close()
                self.endpoints.close()
        return self.report

    def _run_with_channel(self) -> None:
        s = self.s
        options = {"poll_interval": 0.05} if self.endpoints.etcd is None else {}
        config = {**CONFIG, "lbclient": {"panicThreshold": self.report.panic_threshold}}
        with lbclient.insecure_channel(self.endpoints.target, service_config=config,
                                       options=OPTIONS, resolver_options=options) as ch:
            self.channel = ch
            ch.add_event_listener(self.on_event)
            ch.add_call_listener(self.on_attempt)
            stub = echo_pb2_grpc.EchoStub(ch)
            stub.Unary(REQ, timeout=10, wait_for_ready=True)
            t_end = time.monotonic() + 10
            while self.visibly_healthy("") < 5 and time.monotonic() < t_end:
                time.sleep(0.05)
            load = _Load(stub, s)
            start = time.monotonic()
            for t in load.threads:
                t.start()
            try:
                self._drive(start)
                time.sleep(0.5)         # the load goes on a moment on the repaired fleet
            finally:
                load.stop.set()
                for t in load.threads:
                    t.join(30)
            self.report.seconds = time.monotonic() - start
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and len(load.callbacks) < sum(
                    c // 2 for c in load.calls):
                time.sleep(0.01)
            self._summarize(load, start)

    def _drive(self, start: float) -> None:
        """Faults for ``duration`` seconds, then repair everything (bounded)."""
        kinds: list[str] = []
        next_fault = start + 0.5
        while time.monotonic() < start + self.s.duration:
            self.tick()
            if time.monotonic() >= next_fault:
                if not kinds:
                    kinds = self.rng.sample(KINDS, len(KINDS))
                self.step(kinds)
                next_fault = time.monotonic() + self.rng.uniform(*self.s.step)
            time.sleep(0.01)
        give_up = time.monotonic() + 60
        while self.due or self.spawning is not None or self.adding:
            if time.monotonic() > give_up:
                raise RuntimeError(
                    f"chaos: could not repair within 60 s: removed {self.removed}, marks "
                    f"{self.marks}, endpoints {[e.address for e in self.channel.endpoints()]},"
                    f" file {self.endpoints.current}")
            self.tick()
            time.sleep(0.01)

    def tick(self) -> None:
        for address in [a for a in self.adding if a in self.added or self.closing]:
            self.adding.discard(address)
            self.busy.discard(address)
        self.run_due()
        self.mark_removed()
        self.adopt_spawned()

    def _summarize(self, load: _Load, start: float) -> None:
        r = self.report
        r.calls = sum(load.calls)
        r.ok = sum(len(x) for x in load.successes)
        r.failures, r.other_errors = load.failures, load.other
        futures = sum(c // 2 for c in load.calls)
        r.callbacks_wrong = futures - sum(1 for v in load.callbacks.values() if v == 1)
        times = sorted([start, *itertools.chain.from_iterable(load.successes)])
        r.longest_gap = max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def run_chaos(s: Settings) -> list[Report]:
    """Every variant of ``s`` in turn."""
    return [Chaos(s, variant).run() for variant in s.variants]


def _section(s: Settings, reports: list[Report]) -> Section:
    table = Table(["variant", "seconds", "calls", "failed", "longest gap ms",
                   "attempts/call", " / ".join(KINDS),
                   "removals checked", "calls in window / after"],
                  caption=f"{s.threads} threads, 5 in-process backends + 1 crashing "
                          f"child process, a fault every {s.step[0]}-{s.step[1]} s, up to "
                          f"{s.max_faults} at once (intense: 0.05-0.15 s, up to 4)")
    section = Section(TITLE, [table])
    for r in reports:
        acts = " / ".join(str(r.actions[k]) for k in KINDS)
        table.rows.append([r.name, f"{r.seconds:.1f}", str(r.calls), str(r.failed),
                           f"{r.longest_gap * 1000:.0f}",
                           f"{r.attempts / max(r.ok, 1):.3f}", acts,
                           str(r.removals_checked),
                           f"{r.in_window} / {r.late_server + r.late_client}"])
        m = section.metrics
        for key, value in (("calls", r.calls), ("failed", r.failed),
                           ("longest_gap_ms", r.longest_gap * 1000),
                           ("late_calls", r.late_server + r.late_client),
                           ("callbacks_wrong", r.callbacks_wrong)):
            m[f"{r.name}.{key}"] = float(value)
        for (code, details), n in r.failures.most_common(5):
            section.notes.append(f"{r.name}: {n} x {code}: {details[:160]}")
        for text, n in r.other_errors.most_common(5):
            section.notes.append(f"{r.name}: {n} x non-grpc error {text}")
    section.notes += [
        "Kills drain (NOT_SERVING 0.2 s) then stop(grace=0.3) and restart on the same "
        "port; crashes SIGKILL a child-process backend (new port after). Variants other "
        "than *-panic50 use panicThreshold 0: panic mode picks draining backends, whose "
        "shutdown cancels the calls that just reached them (CANCELLED, not retried).",
        "Calls in window: counted by a removed backend within 0.5 s of the channel "
        "dropping it (calls that picked it just before); after the window: must be 0.",
        "Attempts/call counts every attempt placed on an endpoint (retries included).",
    ]
    return section


def run(quick: bool) -> Section:
    s = QUICK if quick else FULL
    return _section(s, run_chaos(s))


def run_smoke() -> Section:
    return _section(SMOKE, run_chaos(SMOKE))


def main(argv: list[str] | None = None) -> int:
    return standalone_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
