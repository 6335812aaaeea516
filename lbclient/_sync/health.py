"""Active grpc.health.v1 probing of a sync channel's endpoint connections (the asyncio
twin is ``lbclient._async.health``).

The balancer starts one checker per endpoint each time its connection becomes READY and
stops it when the connection leaves READY, the endpoint is removed or the channel closes.
Checkers only *observe*: each answer becomes a :class:`~.tracker.HealthReport` passed to
``report`` (from a grpc or timer thread); thresholds and state live in the balancer's
:class:`~.tracker.HealthTracker`.

* Watch mode (gRFC A17): a ``Health/Watch`` stream read on one daemon thread per endpoint
  (sync grpc has no per-message callback). A broken stream is re-opened after a backoff
  that is reset by any message; ``UNIMPLEMENTED`` ends checking for this connection.
  While the endpoint is ejected the balancer turns on ``set_probing``: ``Health/Check``
  probes then run every ``min(interval, 1 s)`` so readmission can count good probes.
* Poll mode: ``Health/Check`` every ``interval`` (+-``jitter``), each with ``timeout``,
  driven by the channel's scheduler and grpc futures (no thread of its own).

Probing never blocks calls: it runs on its own stream/thread/timers and reports only.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..health.tracker import READMIT_PROBE_INTERVAL, Backoff, HealthReport
from ..health.tracker import status_detail as _status_detail

log = logging.getLogger("lbclient.health")

Report = Callable[[HealthReport], None]
_SERVING = health_pb2.HealthCheckResponse.SERVING


class _Poller:
    """``Health/Check`` every ``interval`` (+-jitter) on the scheduler."""

    def __init__(self, stub: Any, request: Any, config: Any, scheduler: Any,
                 rng: random.Random, report: Report, interval: float | None = None) -> None:
        self._stub, self._request, self._config = stub, request, config
        self._interval = config.interval if interval is None else interval
        self._scheduler, self._rng, self._report = scheduler, rng, report
        self._lock = threading.Lock()
        self._stopped = False
        self._timer: Any = None
        self._future: Any = None

    def start(self, delay: float = 0.0) -> None:
        self._schedule(delay)

    def _schedule(self, delay: float) -> None:
        with self._lock:
            if not self._stopped:
                self._timer = self._scheduler.call_later(delay, self._probe)

    def _next_delay(self) -> float:
        jitter = self._config.jitter
        return self._interval * (1.0 + self._rng.uniform(-jitter, jitter))

    def _probe(self) -> None:
        with self._lock:
            if self._stopped:
                return
            try:
                fut = self._stub.Check.future(self._request, timeout=self._config.timeout)
            except ValueError:  # the connection was closed meanwhile
                self._stopped = True
                return
            self._future = fut
        fut.add_done_callback(self._done)

    def _done(self, fut: Any) -> None:
        if self._stopped:
            return
        try:
            reply = fut.result()
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            if code is grpc.StatusCode.UNIMPLEMENTED:
                self._report(HealthReport("unimplemented", True,
                                          "health service UNIMPLEMENTED: treated as healthy"))
                return  # A17: do not retry; checking is off for this connection
            if code is grpc.StatusCode.CANCELLED and self._stopped:
                return
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                detail = f"probe timed out after {self._config.timeout:g}s"
            else:
                detail = f"probe failed: {code.name} {exc.details() or ''}".rstrip()
            self._report(HealthReport("probe", False, detail))
        except Exception as exc:  # cancelled future and the like
            if self._stopped:
                return
            self._report(HealthReport("probe", False, f"probe failed: {exc!r}"))
        else:
            ok = reply.status == _SERVING
            self._report(HealthReport("probe", ok, _status_detail(reply.status)))
        self._schedule(self._next_delay())

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            timer, fut = self._timer, self._future
        if timer is not None:
            timer.cancel()
        if fut is not None:
            fut.cancel()


class PollChecker:
    """Poll mode: probes from the start (the first one at once)."""

    def __init__(self, channel: grpc.Channel, config: Any, report: Report, scheduler: Any,
                 rng: random.Random) -> None:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=config.service_name)
        self._poller = _Poller(stub, request, config, scheduler, rng, report)
        self._poller.start(0.0)

    def set_probing(self, on: bool) -> None:
        """Probes always run in poll mode."""

    def stop(self) -> None:
        self._poller.stop()

    def join(self, timeout: float) -> None:
        """Nothing to join: poll mode owns no thread."""


class WatchChecker:
    """Watch mode: one ``Health/Watch`` stream at a time, read on a daemon thread."""

    def __init__(self, channel: grpc.Channel, config: Any, report: Report, scheduler: Any,
                 rng: random.Random, name: str) -> None:
        self._stub: Any = health_pb2_grpc.HealthStub(channel)   # (its stubs declare no methods)
        self._request = health_pb2.HealthCheckRequest(service=config.service_name)
        self._config, self._report = config, report
        self._scheduler, self._rng = scheduler, rng
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self._poller: _Poller | None = None
        self._thread = threading.Thread(target=self._run, name=f"lbclient-health-{name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backoff = Backoff(self._rng)
        while not self._stop.is_set():
            got_message = False
            try:
                with self._lock:
                    if self._stop.is_set():
                        return
                    call = self._stub.Watch(self._request, wait_for_ready=True)
                    self._call = call
                for reply in call:
                    got_message = True
                    backoff.reset()
                    self._report(HealthReport("watch", reply.status == _SERVING,
                                              _status_detail(reply.status)))
                detail = "health stream ended by the server"
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
                if code is grpc.StatusCode.UNIMPLEMENTED:
                    self._report(HealthReport(
                        "unimplemented", True, "health service UNIMPLEMENTED: treated as healthy"))
                    return
                detail = f"health stream failed: {code.name}"
            except ValueError:  # the connection was closed under us
                return
            if self._stop.is_set():
                return
            self._report(HealthReport("stream_error", False, detail))
            # A17: after a message the next attempt is immediate, otherwise back off.
            if self._stop.wait(0.0 if got_message else backoff.next_delay()):
                return

    def set_probing(self, on: bool) -> None:
        """While ``on``, also run Check probes (readmission after an ejection)."""
        with self._lock:
            if self._stop.is_set():
                return
            old, self._poller = self._poller, None
            if on:
                if old is not None:
                    self._poller = old
                    return
                self._poller = _Poller(self._stub, self._request, self._config,
                                       self._scheduler, self._rng, self._report,
                                       min(self._config.interval, READMIT_PROBE_INTERVAL))
                self._poller.start(0.0)
                return
        if old is not None:
            old.stop()

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            call, poller, self._poller = self._call, self._poller, None
        if call is not None:
            call.cancel()
        if poller is not None:
            poller.stop()

    def join(self, timeout: float) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class GrpcHealthCheckerFactory:
    """Starts checkers on ``handle.raw`` (grpc's own channel of the endpoint: the same
    connection as its calls, without the interceptors that wrap calls, so probes make
    no tracing spans)."""

    def __init__(self, scheduler: Any, rng: random.Random | None = None) -> None:
        self._scheduler = scheduler
        self._rng = rng or random.Random()

    def start(self, handle: Any, config: Any, report: Report) -> PollChecker | WatchChecker:
        channel = handle.raw
        if config.mode == "poll":
            return PollChecker(channel, config, report, self._scheduler, self._rng)
        return WatchChecker(channel, config, report, self._scheduler, self._rng,
                            handle.address)
