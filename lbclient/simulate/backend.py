"""Simulated backends and the fakes the real balancer talks to (no grpc, no threads).

* :class:`SimCall`: one call as the engine places it and a backend serves it.
* :class:`SimBackend`: one server: ``capacity`` calls in service at once, the rest wait
  in a FIFO queue; its fault windows (down, errors, NOT_SERVING health, slow).
* :class:`SimConnection`: the balancer's ``SubchannelHandle``. It reports connectivity on
  the virtual clock: CONNECTING, then READY after ``connectTime`` if the backend is up,
  else TRANSIENT_FAILURE and another attempt after gRPC's connection backoff (the SDK's
  :class:`~lbclient.health.tracker.Backoff`: 1 s, x1.6, at most 120 s, +-20%).
* :class:`SimHealthFactory` / :class:`SimChecker`: the balancer's ``HealthCheckerFactory``.
  Watch mode sends the backend's serving status at once and on every change; poll mode
  probes at once and then every ``interval`` +-``jitter`` (the formula of
  ``lbclient.health.prober``); while an endpoint is ejected in watch mode, Check probes
  run every ``min(interval, 1 s)`` as the real prober's do. Reports are always delivered
  from a loop event, never from inside ``start``/``set_probing``/``stop``.

The thresholds, states and decisions stay in the SDK's own code (HealthTracker, the
balancer, the outlier detector): these fakes only say what each backend would answer.
Everything runs on the simulation's :class:`~lbclient.simulate.clock.EventLoop`. With
several clients (``"clients": K``) a backend has one connection (and health checker) per
client that connects to it; each client's connections and checkers may run their timers
through a :class:`~lbclient.simulate.fleet.BatchedTimers` of that client instead of the
loop itself (``scheduler=``), so the events one client's endpoints raise at the same
virtual time reach its balancer in one batch.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ..balancer.picker import PickInfo, PickResult
from ..connectivity import Connectivity
from ..endpoint import Endpoint
from ..health.tracker import Backoff, HealthReport
from .clock import EventLoop, Timer
from .scenario import BackendSpec, Fault

READMIT_PROBE_INTERVAL = 1.0   # lbclient.health.prober's value (that module imports grpc)
PENDING, QUEUED, SERVING, DONE = 0, 1, 2, 3     # SimCall.state


class SimCall:
    """One call: created by the engine (``PENDING`` until picked), placed on a backend
    (``QUEUED`` or ``SERVING``), and ``DONE`` once finished, whatever ended it.
    ``client`` is the index of the client channel that sends it."""

    __slots__ = ("seq", "arrival", "duration", "key", "info", "deadline", "result",
                 "backend", "t_admit", "t_placed", "timer", "state", "client")

    def __init__(self, seq: int, arrival: float, duration: float, key: str | None,
                 info: PickInfo, client: int = 0) -> None:
        self.seq = seq
        self.arrival = arrival
        self.duration = duration
        self.key = key
        self.info = info
        self.deadline: Timer | None = None
        self.result: PickResult | None = None
        self.backend: SimBackend | None = None
        self.t_admit = arrival
        self.t_placed = arrival
        self.timer: Timer | None = None
        self.state = PENDING
        self.client = client


class SimHost(Protocol):
    """What a backend needs from the simulation it belongs to
    (:class:`~lbclient.simulate.engine.Simulation` is one)."""

    @property
    def loop(self) -> EventLoop: ...

    def finish(self, call: SimCall, code: str) -> None:
        """End ``call`` with the status ``code`` (the channel's completion steps)."""


class Scheduler(Protocol):
    """What connections and checkers schedule on: the loop, or a client's
    :class:`~lbclient.simulate.fleet.BatchedTimers`."""

    @property
    def now(self) -> float: ...

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer: ...

    def call_soon(self, fn: Callable[[], None]) -> Timer: ...


class SimBackend:
    """One simulated server. ``n`` is the clients' in-flight count on it (queued + in
    service), integrated over time for the mean concurrency. ``conns``: one connection
    per client that connects to it (``conn``: the latest, the only one with one client)."""

    def __init__(self, spec: BackendSpec, index: int, sim: SimHost,
                 service_rng: random.Random, error_rng: random.Random) -> None:
        self.spec = spec
        self.name = spec.name
        self.index = index
        self.sim = sim
        self.loop: EventLoop = sim.loop
        self._service_rng = service_rng
        self._error_rng = error_rng
        self._capacity = spec.capacity
        self.up = True
        self._down = 0
        self._not_serving = 0
        self._errors: list[Fault] = []
        self._slow = 1.0
        self.conns: list[SimConnection] = []
        self.checkers: list[SimChecker] = []
        self.active = 0
        self.serving: set[SimCall] = set()
        self.queue: deque[SimCall] = deque()
        # figures for the report
        self.n = 0
        self.peak = 0
        self.area = 0.0
        self.last = 0.0
        self.placed = 0
        self.ok = 0
        self.failed = 0
        self.queue_wait_total = 0.0
        self.queue_wait_max = 0.0
        self.queued_calls = 0
        self.probes: list[tuple[float, bool]] = []     # health Check answers (time, serving)
        self.fit = False                               # as of the last balancer change
        self.eligible = False
        self.transitions: list[tuple[float, bool, str]] = []

    @property
    def conn(self) -> SimConnection | None:
        return self.conns[-1] if self.conns else None

    @conn.setter
    def conn(self, conn: SimConnection | None) -> None:
        """Attach a connection (tests building one by hand use this)."""
        if conn is not None and conn not in self.conns:
            self.conns.append(conn)

    def connections(self) -> int:
        """Connections open to it now (one per client that holds it)."""
        return sum(1 for c in self.conns if not c.closed)

    # ------------------------------------------------------------------ health status
    def health_serving(self) -> bool:
        return self.up and self._not_serving == 0

    # ------------------------------------------------------------------ calls
    def _count(self, delta: int) -> None:
        now = self.loop.now
        self.area += self.n * (now - self.last)
        self.last = now
        self.n += delta
        if self.n > self.peak:
            self.peak = self.n

    def admit(self, call: SimCall) -> None:
        """A call placed on this backend by the picker (may finish it at once)."""
        self.placed += 1
        self._count(1)
        call.t_admit = self.loop.now
        for fault in self._errors:
            if fault.rate >= 1.0 or self._error_rng.random() < fault.rate:
                self.sim.finish(call, fault.code)
                return
        if self._capacity is None or self.active < self._capacity:
            self._start(call)
        else:
            call.state = QUEUED
            self.queue.append(call)

    def _start(self, call: SimCall) -> None:
        now = self.loop.now
        wait = now - call.t_admit
        if wait > 0:
            self.queued_calls += 1
            self.queue_wait_total += wait
            if wait > self.queue_wait_max:
                self.queue_wait_max = wait
        self.active += 1
        call.state = SERVING
        self.serving.add(call)
        service = call.duration * self.spec.slowdown
        service += self.spec.service_time.sample(self._service_rng)
        service *= self._slow
        call.timer = self.loop.call_at(now + service, self._complete, call)

    def _complete(self, call: SimCall) -> None:
        self.active -= 1
        self.serving.discard(call)
        self.sim.finish(call, "OK")
        self._next()

    def _next(self) -> None:
        queue = self.queue
        while queue and (self._capacity is None or self.active < self._capacity):
            call = queue.popleft()
            if call.state == QUEUED:
                self._start(call)

    def ended(self, call: SimCall, ok: bool) -> None:
        """Bookkeeping when ``call`` (placed here) finishes, whatever ended it."""
        self._count(-1)
        if ok:
            self.ok += 1
        else:
            self.failed += 1

    def cancel(self, call: SimCall) -> None:
        """The client gave up on ``call`` (deadline): free its slot or queue place."""
        if call.state == SERVING:
            if call.timer is not None:
                call.timer.cancel()
            self.serving.discard(call)
            self.active -= 1
            call.state = DONE
            self._next()
        elif call.state == QUEUED:
            call.state = DONE          # skipped when it reaches the head of the queue

    # ------------------------------------------------------------------ faults
    def fault_begin(self, fault: Fault) -> None:
        if fault.kind == "down":
            self._down += 1
            if self._down == 1:
                self.up = False
                self._drop_all()
                for conn in list(self.conns):
                    conn.lost()
        elif fault.kind == "errors":
            self._errors.append(fault)
        elif fault.kind == "notServing":
            self._not_serving += 1
            if self._not_serving == 1:
                self._health_changed()
        else:
            self._slow *= fault.factor

    def fault_end(self, fault: Fault) -> None:
        if fault.kind == "down":
            self._down -= 1
            self.up = self._down == 0      # the connection notices at its next attempt
        elif fault.kind == "errors":
            self._errors.remove(fault)
        elif fault.kind == "notServing":
            self._not_serving -= 1
            if self._not_serving == 0:
                self._health_changed()
        else:
            self._slow /= fault.factor

    def _drop_all(self) -> None:
        """The process died: every call in service or queued fails UNAVAILABLE."""
        calls = [*self.serving, *(c for c in self.queue if c.state == QUEUED)]
        calls.sort(key=lambda c: c.seq)
        for call in calls:
            if call.timer is not None:
                call.timer.cancel()
            call.state = DONE
        self.serving.clear()
        self.queue.clear()
        self.active = 0
        for call in calls:
            self.sim.finish(call, "UNAVAILABLE")

    def _health_changed(self) -> None:
        for checker in list(self.checkers):
            checker.serving_changed()


class SimConnection:
    """The ``SubchannelHandle`` of one endpoint (see the module docstring)."""

    def __init__(self, backend: SimBackend, on_state: Callable[[Connectivity], None],
                 rng: random.Random, scheduler: Scheduler | None = None) -> None:
        self.backend = backend
        self.address = backend.name
        self._on_state = on_state
        self._loop: Scheduler = scheduler if scheduler is not None else backend.loop
        self._backoff = Backoff(rng)
        self._timer: Timer | None = None
        self.state = Connectivity.IDLE
        self.closed = False

    def _set(self, state: Connectivity) -> None:
        if self.closed or state is self.state:
            return
        self.state = state
        self._on_state(state)

    def _after(self, delay: float, fn: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, fn)

    def request_connection(self) -> None:
        if not self.closed and self.state is Connectivity.IDLE and self._timer is None:
            self._after(0.0, self._connect)

    def _connect(self) -> None:
        self._timer = None
        if self.closed:
            return
        self._set(Connectivity.CONNECTING)
        self._after(self.backend.spec.connect_time, self._attempt)

    def _attempt(self) -> None:
        self._timer = None
        if self.closed:
            return
        if self.backend.up:
            self._backoff.reset()
            self._set(Connectivity.READY)
        else:
            self._set(Connectivity.TRANSIENT_FAILURE)
            self._after(self._backoff.next_delay(), self._connect)

    def lost(self) -> None:
        """The backend went down: the connection fails, and retries after a backoff."""
        if self.closed or self.state is Connectivity.TRANSIENT_FAILURE:
            return
        self._set(Connectivity.TRANSIENT_FAILURE)
        self._after(self._backoff.next_delay(), self._connect)

    def poll(self) -> bool:
        """Connectivity changes are pushed on the loop: nothing to re-read."""
        return False

    def connection_error(self) -> str | None:
        if self.state is Connectivity.TRANSIENT_FAILURE:
            return "connection refused (the simulated backend is down)"
        return None

    def shutdown(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class SimConnectionFactory:
    """The balancer's ``SubchannelFactory``: connects at once (on the next loop event)."""

    def __init__(self, backends: dict[str, SimBackend], rng: random.Random,
                 scheduler: Scheduler | None = None) -> None:
        self._backends = backends
        self._rng = rng
        self._scheduler = scheduler

    def set_batcher(self, batch: Callable[[], Any]) -> None:
        """Each connectivity change is its own loop event: nothing to batch."""

    def create(self, endpoint: Endpoint,
               on_state: Callable[[Connectivity], None]) -> SimConnection:
        backend = self._backends[endpoint.address]
        conn = SimConnection(backend, on_state, self._rng, self._scheduler)
        backend.conns.append(conn)
        conn.request_connection()
        return conn


class SimChecker:
    """One endpoint's health checker (see the module docstring)."""

    def __init__(self, backend: SimBackend, config: Any, report: Callable[[HealthReport], None],
                 rng: random.Random, scheduler: Scheduler | None = None) -> None:
        self._backend = backend
        self._config = config
        self._report = report
        self._rng = rng
        self._loop: Scheduler = scheduler if scheduler is not None else backend.loop
        self._stopped = False
        self._poll: Timer | None = None
        self._poll_interval: float | None = None
        self._implemented = backend.spec.health_service
        backend.checkers.append(self)
        if not self._implemented:
            self._loop.call_soon(self._unimplemented)
        elif config.mode == "poll":
            self._start_polling(config.interval)
        else:
            self._loop.call_soon(self._watch)

    def _send(self, report: HealthReport) -> None:
        if not self._stopped:
            self._report(report)

    def _unimplemented(self) -> None:
        self._send(HealthReport("unimplemented", True,
                                "health service UNIMPLEMENTED: treated as healthy"))

    def _watch(self) -> None:
        serving = self._backend.health_serving()
        self._send(HealthReport("watch", serving, "SERVING" if serving else "NOT_SERVING"))

    def serving_changed(self) -> None:
        """The backend's health status changed: a Watch stream gets a message now."""
        if self._implemented and self._config.mode != "poll" and not self._stopped:
            self._loop.call_soon(self._watch)

    def _start_polling(self, interval: float) -> None:
        self._poll_interval = interval
        self._poll = self._loop.call_soon(self._probe)

    def _probe(self) -> None:
        if self._stopped or self._poll_interval is None:
            return
        self._poll = None                  # this timer has fired
        serving = self._backend.health_serving()
        self._backend.probes.append((self._loop.now, serving))
        self._send(HealthReport("probe", serving, "SERVING" if serving else "NOT_SERVING"))
        # The report may have readmitted the endpoint (set_probing(False)) or restarted
        # probing; only an undisturbed poller schedules its next probe.
        if self._stopped or self._poll_interval is None or self._poll is not None:
            return
        jitter = self._config.jitter
        delay = self._poll_interval * (1.0 + self._rng.uniform(-jitter, jitter))
        self._poll = self._loop.call_later(delay, self._probe)

    def _stop_polling(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
        self._poll, self._poll_interval = None, None

    @property
    def probing(self) -> bool:
        """Whether Check probes are scheduled (poll mode, or ejected in watch mode)."""
        return self._poll_interval is not None

    def set_probing(self, on: bool) -> None:
        if self._stopped or not self._implemented or self._config.mode == "poll":
            return
        if on and self._poll_interval is None:
            self._start_polling(min(self._config.interval, READMIT_PROBE_INTERVAL))
        elif not on:
            self._stop_polling()

    def join(self, timeout: float) -> None:
        """No thread to wait for: everything runs on the simulation's loop."""

    def stop(self) -> None:
        self._stopped = True
        self._stop_polling()
        if self in self._backend.checkers:
            self._backend.checkers.remove(self)


class SimHealthFactory:
    """The balancer's ``HealthCheckerFactory`` (``handle`` is a :class:`SimConnection`)."""

    def __init__(self, rng: random.Random, scheduler: Scheduler | None = None) -> None:
        self._rng = rng
        self._scheduler = scheduler

    def start(self, handle: Any, config: Any,
              report: Callable[[HealthReport], None]) -> SimChecker:
        return SimChecker(handle.backend, config, report, self._rng, self._scheduler)
