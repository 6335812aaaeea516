"""Steady demo traffic and what it measured.

:class:`Traffic` runs ``threads`` caller threads that together send about ``rate`` unary
Echo calls per second through the channel (each with a ``x-demo-user`` key, for hashing
and sticky policies) until stopped. :class:`Recorder` is the channel's call listener: it
keeps per-endpoint counts by status code and a bounded latency sample, and the callers'
own end-to-end measurements (including calls that failed before reaching any endpoint).

Threading: the recorder is updated from caller threads and grpc callback threads under
one lock; readers take copies.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from ..testing import echo_pb2, echo_pb2_grpc
from ._demo_policies import KEY_HEADER

SAMPLE = 20_000        # latencies kept per endpoint (and overall); random replacement after


@dataclass
class EndpointCalls:
    codes: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seen: int = 0

    @property
    def calls(self) -> int:
        return sum(self.codes.values())

    @property
    def errors(self) -> int:
        return self.calls - self.codes.get("OK", 0)


def _sample(values: list[float], seen: int, value: float, rng: random.Random) -> None:
    if len(values) < SAMPLE:
        values.append(value)
    else:
        k = rng.randrange(seen)
        if k < SAMPLE:
            values[k] = value


class Recorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(1)
        self.endpoints: dict[str, EndpointCalls] = {}
        self.client = EndpointCalls()   # end to end, as the callers saw it

    def on_call(self, address: str, outcome: Any) -> None:
        """The channel's call listener: one finished attempt."""
        with self._lock:
            ep = self.endpoints.setdefault(address, EndpointCalls())
            ep.codes[outcome.code] = ep.codes.get(outcome.code, 0) + 1
            ep.seen += 1
            _sample(ep.latencies, ep.seen, outcome.latency, self._rng)

    def on_client(self, code: str, latency: float) -> None:
        with self._lock:
            c = self.client
            c.codes[code] = c.codes.get(code, 0) + 1
            c.seen += 1
            _sample(c.latencies, c.seen, latency, self._rng)

    def copy(self) -> tuple[dict[str, EndpointCalls], EndpointCalls]:
        with self._lock:
            eps = {a: EndpointCalls(dict(e.codes), sorted(e.latencies), e.seen)
                   for a, e in self.endpoints.items()}
            c = self.client
            return eps, EndpointCalls(dict(c.codes), sorted(c.latencies), c.seen)


class Traffic:
    def __init__(self, channel: Any, recorder: Recorder, *, threads: int = 4,
                 rate: float = 200.0, timeout: float = 1.0, seed: int = 3) -> None:
        self._stub = echo_pb2_grpc.EchoStub(channel)
        self._recorder = recorder
        self._interval = threads / rate if rate > 0 else 0.0
        self._timeout = timeout
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(seed + i,),
                                          name=f"lbclient-demo-traffic-{i}", daemon=True)
                         for i in range(threads)]

    def start(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        request = echo_pb2.EchoRequest(message="demo")
        next_at = time.monotonic()
        while not self._stop.is_set():
            metadata = ((KEY_HEADER, f"user-{rng.randrange(64)}"),)
            t0 = time.perf_counter()
            try:
                self._stub.Unary(request, timeout=self._timeout, metadata=metadata)
                code = "OK"
            except grpc.RpcError as exc:
                call: Any = exc     # the grpc stubs type every RpcError as a Call
                code = call.code().name if isinstance(call, grpc.Call) else "UNKNOWN"
            except ValueError:      # the channel was closed under us (Ctrl-C)
                return
            self._recorder.on_client(code, time.perf_counter() - t0)
            next_at = max(next_at + self._interval, time.monotonic() - 1.0)
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the callers and wait (bounded: each call has its own deadline)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
