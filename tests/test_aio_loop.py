"""No blocking call on the event loop: lbclient.aio under a mixed workload (every RPC
kind, retries, hedging, health checking in both modes, outlier detection, metrics, host
name and file targets, endpoint updates, a backend stopped and restarted, channels closed
with calls in flight) in asyncio debug mode with ``slow_callback_duration`` set.

The machine running the tests is often heavily loaded, so raw time proves nothing: a
callback is slow when the thread is descheduled too. Slowness is attributed by
sampling the loop thread every few ms: a sample "blocks in lbclient" when the innermost
frame of this repository on the loop thread's stack is lbclient code (not
``lbclient/testing``) while the thread is *sleeping* in the kernel (state S or D in
/proc): a blocking call (sleep, lock, join, socket, lookup), not CPU work and not
waiting to be scheduled (state R). The asyncio logger's "Executing ... took" warnings
are collected and each is checked against those samples.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import grpc.aio
import pytest
from retry_servers import SERVICE

import lbclient.aio
import lbclient.metrics
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
LBCLIENT = str(REPO / "lbclient") + os.sep
TESTING = str(REPO / "lbclient" / "testing") + os.sep
SLOW = 0.05          # loop.slow_callback_duration
BLOCKED = 0.02       # a blocking call this long in lbclient frames fails the test
_TOOK = re.compile(r"^Executing (.*) took ([0-9.]+) seconds$", re.S)
_LIBRARIES = ("<", *{os.path.realpath(p) + os.sep for k, p in sysconfig.get_paths().items()
                     if k in ("stdlib", "platstdlib", "purelib", "platlib")},
              *{p + os.sep for k, p in sysconfig.get_paths().items()
                if k in ("stdlib", "platstdlib", "purelib", "platlib")})


def _state(native_id: int) -> str:
    try:
        with open(f"/proc/self/task/{native_id}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


@dataclass
class LoopWatch:
    """Samples one thread's stack and scheduler state; keeps asyncio's slow-callback
    warnings. ``inside``/``outside``: path prefixes of the code under watch."""

    inside: str = LBCLIENT
    outside: str = TESTING
    interval: float = 0.002
    samples: list[tuple[float, str | None, str]] = field(default_factory=list)
    slow: list[tuple[float, float, str]] = field(default_factory=list)  # start, end, handle

    def _where(self, frame: FrameType | None) -> str | None:
        """The innermost application frame (not the standard library or an installed
        package), if it is the watched code."""
        while frame is not None:
            path = frame.f_code.co_filename
            if not path.startswith(_LIBRARIES):
                if path.startswith(self.inside) and not path.startswith(self.outside):
                    return f"{path}:{frame.f_lineno} {frame.f_code.co_name}"
                return None
            frame = frame.f_back
        return None

    def __enter__(self) -> LoopWatch:
        self._ident = threading.get_ident()
        self._native = threading.get_native_id()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        self._handler = _Collect(self)
        logging.getLogger("asyncio").addHandler(self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sampler.join(5)
        logging.getLogger("asyncio").removeHandler(self._handler)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            frame = sys._current_frames().get(self._ident)
            where = self._where(frame)
            del frame
            self.samples.append((time.monotonic(), where, _state(self._native)))

    def blocked_runs(self, at_least: int = 3) -> list[tuple[float, float, str]]:
        """(start, end, where) of runs of consecutive samples sleeping in the same
        watched frame (``at_least`` samples: one odd sample is a race between reading
        the stack and the state)."""
        runs: list[tuple[float, float, str]] = []
        start = last = 0.0
        where: str | None = None
        count = 0
        for t, w, state in [*self.samples, (0.0, None, "R")]:
            if w is not None and state in "SD" and w == where:
                count += 1
                last = t
                continue
            if where is not None and count >= at_least:
                runs.append((start, last + self.interval, where))
            where, start, last, count = (w, t, t, 1) if w is not None and state in "SD" \
                else (None, 0.0, 0.0, 0)
        return runs

    def verdict(self) -> list[str]:
        """Blocking calls in watched frames of at least BLOCKED seconds, each with the
        slow callbacks (asyncio's warnings) it made slow."""
        problems = []
        for start, end, where in self.blocked_runs():
            if end - start < BLOCKED:
                continue
            during = [h for s, e, h in self.slow if s <= end and start <= e]
            problems.append(f"blocked {end - start:.3f}s at {where}; slow callbacks: "
                            f"{[h[:120] for h in during]}")
        return problems


class _Collect(logging.Handler):
    def __init__(self, watch: LoopWatch) -> None:
        super().__init__(logging.WARNING)
        self.watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        match = _TOOK.match(record.getMessage())
        if match:
            end = time.monotonic()
            self.watch.slow.append((end - float(match.group(2)), end, match.group(1)))


def run_watched(coro_fn: Any, watch: LoopWatch) -> Any:
    async def main() -> Any:
        asyncio.get_running_loop().slow_callback_duration = SLOW
        with watch:
            return await asyncio.wait_for(coro_fn(), 120)
    return asyncio.run(main(), debug=True)


# ------------------------------------------------------------------ the detector works
WATCHED = """
import time

def blocking_callback():
    time.sleep(0.15)            # a blocking call in watched code

def busy():
    end = time.monotonic() + 0.1
    while time.monotonic() < end:   # CPU work: slow, but not a blocking call
        pass
"""


@pytest.fixture
def watched(tmp_path: Path) -> Any:
    """A module of its own holding the "watched" code of the detector's self-tests."""
    (tmp_path / "watched_code.py").write_text(WATCHED)
    sys.path.insert(0, str(tmp_path))
    try:
        import watched_code
        yield watched_code
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("watched_code", None)


def test_the_watch_catches_a_blocking_call_and_ignores_awaiting(watched: Any) -> None:
    watch = LoopWatch(inside=watched.__file__, outside="\0")

    async def body() -> None:
        await asyncio.sleep(0.15)   # awaiting: not blocking
        asyncio.get_running_loop().call_soon(watched.blocking_callback)
        await asyncio.sleep(0.2)

    run_watched(body, watch)
    problems = watch.verdict()
    assert len(problems) == 1 and "blocking_callback" in problems[0], problems
    assert any("blocking_callback" in h for _, _, h in watch.slow), watch.slow


def test_the_watch_attributes_by_frame_not_time(watched: Any) -> None:
    """CPU work in watched code makes callbacks slow but is not a blocking call."""
    watch = LoopWatch(inside=watched.__file__, outside="\0")

    async def body() -> None:
        for _ in range(2):
            asyncio.get_running_loop().call_soon(watched.busy)
            await asyncio.sleep(0.05)

    run_watched(body, watch)
    assert watch.verdict() == []
    assert any("busy" in h for _, _, h in watch.slow)


# ------------------------------------------------------------------ lbclient.aio
def _config() -> dict[str, Any]:
    return {
        "loadBalancingConfig": [{"outlier_detection": {
            "interval": "0.1s", "baseEjectionTime": "0.2s", "consecutiveFailures": 5,
            "maxEjectionPercent": 50, "childPolicy": [{"round_robin": {}}]}}],
        "healthCheckConfig": {"serviceName": ""},
        "methodConfig": [
            {"name": [{"service": SERVICE, "method": "Unary"}],
             "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.02s",
                               "nonFatalStatusCodes": ["UNAVAILABLE"]}},
            {"name": [{"service": SERVICE}],
             "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.01s",
                             "maxBackoff": "0.05s", "backoffMultiplier": 2,
                             "retryableStatusCodes": ["UNAVAILABLE"]}}],
        "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.5},
        "lbclient": {"slowStartConfig": {"slowStartWindow": "0.2s"}},
    }


async def _kinds(stub: Any) -> None:
    req = echo_pb2.EchoRequest(message="m")
    await stub.Unary(req, timeout=10)
    assert len([r async for r in stub.ServerStream(echo_pb2.EchoRequest(count=3),
                                                   timeout=10)]) == 3
    assert (await stub.ClientStream(iter([req, req]), timeout=10)).index == 2
    bidi = stub.Bidi(timeout=10)
    await bidi.write(req)
    await bidi.read()
    await bidi.done_writing()
    assert await bidi.read() is grpc.aio.EOF


def test_no_blocking_call_on_the_loop(fleet_factory: Any, tmp_path: Path) -> None:
    fleet: Fleet = fleet_factory(3, aio=True, latency=0.005)
    endpoints_file = tmp_path / "endpoints.json"
    endpoints_file.write_text(json.dumps({"endpoints": [{"address": fleet.addresses[0]}]}))
    watch = LoopWatch()

    async def body() -> None:
        ch = lbclient.aio.insecure_channel(fleet.target, service_config=_config())
        poll = lbclient.aio.insecure_channel(fleet.target, service_config={
            "loadBalancingConfig": [{"ring_hash": {"requestHashHeader": "x-key"}}],
            "healthCheckConfig": {"mode": "poll", "interval": "0.05s"}})
        named = lbclient.aio.insecure_channel(
            "static:///" + ",".join(f"localhost:{b.port}" for b in fleet))
        from_file = lbclient.aio.insecure_channel(
            f"file://{endpoints_file}", resolver_options={"poll_interval": 0.05})
        metrics = lbclient.metrics.instrument(ch)
        stubs = [echo_pb2_grpc.EchoStub(c) for c in (ch, poll, named, from_file)]
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in
                                                (ch, poll, named, from_file))), 20)
        for stub in stubs:
            await _kinds(stub)
        await asyncio.gather(*(stubs[0].Unary(echo_pb2.EchoRequest(), timeout=20)
                               for _ in range(150)))
        await asyncio.gather(*(stubs[1].Unary(echo_pb2.EchoRequest(), timeout=20,
                                              metadata=(("x-key", str(i)),))
                               for i in range(50)))
        fleet[0].set_error_rate(1.0)                    # retries, hedges, ejection
        await asyncio.gather(*(_kinds(stubs[0]) for _ in range(8)))
        fleet[0].set_error_rate(0.0)
        await asyncio.to_thread(fleet[1].set_health, False)
        await asyncio.to_thread(fleet[2].stop)
        await asyncio.gather(*(_kinds(s) for s in stubs[:2] for _ in range(3)))
        await asyncio.to_thread(fleet[2].start)
        await asyncio.to_thread(fleet[1].set_health, True)
        endpoints_file.write_text(json.dumps({"endpoints": [
            {"address": a} for a in fleet.addresses]}))
        for _ in range(400):
            if len(from_file.endpoints()) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(from_file.endpoints()) == 3
        await asyncio.gather(*(stubs[3].Unary(echo_pb2.EchoRequest(), timeout=20)
                               for _ in range(60)))
        pending = [stubs[0].Unary(echo_pb2.EchoRequest(sleep_ms=2000), timeout=20)
                   for _ in range(20)]
        await asyncio.sleep(0.05)
        assert metrics.snapshot().endpoints
        for c in (ch, poll, named, from_file):
            await c.close()
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(r, grpc.aio.AioRpcError) or isinstance(r, BaseException)
                   for r in results)

    run_watched(body, watch)
    assert len(watch.samples) > 100, "the sampler did not run"
    assert watch.verdict() == []
