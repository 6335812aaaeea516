"""Shared machinery of the conformance suite: the channel variants and their service
configs, bounded case runners (a hang fails its case within CASE_TIMEOUT and dumps every
thread's stack), a queue-fed request iterator, and per-module channel caches.

Contracts:
  * every RPC a case makes has a deadline (RPC_TIMEOUT unless the case is about deadlines);
  * ``run_sync_case`` runs a case body in a daemon thread and ``AioLoop.run_case`` runs it
    as a task on a loop thread; either fails after CASE_TIMEOUT naming the case and
    variant, with the stacks of all threads (and of the task, for asyncio);
  * after a hang the variant's channel is replaced (``poison``) so one hang does not turn
    every later case of that variant into a hang too; closing is bounded as well.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import queue
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

import lbclient
import lbclient.aio
from lbclient.testing.interop import SERVICE

T = TypeVar("T")
CASE_TIMEOUT = 15.0   # a case body that runs longer than this is a hang
RPC_TIMEOUT = 20.0    # every RPC's deadline (not about deadlines): past CASE_TIMEOUT, so a hang
                      # shows as one, with stacks; the deadline ends what it left behind
READY_TIMEOUT = 10.0  # how long a new channel may take to become READY
CLOSE_TIMEOUT = 5.0   # bound on closing a channel

ROUND_ROBIN: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
PRODUCTION: dict[str, Any] = {
    "loadBalancingConfig": [{"outlier_detection": {
        "consecutiveFailures": 5,
        "failurePercentageEjection": {"threshold": 50, "minimumHosts": 3, "requestVolume": 20},
        "childPolicy": [{"round_robin": {}}]}}],
    "healthCheckConfig": {"serviceName": SERVICE},
    "methodConfig": [{
        "name": [{"service": SERVICE}],
        "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}],
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
}
HEDGING: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": SERVICE}],
        "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.05s",
                          "nonFatalStatusCodes": ["UNAVAILABLE"]}}],
}
GRPC_OPTIONS = [("grpc.service_config", json.dumps(ROUND_ROBIN))]

# Keyword arguments only: lbclient's positional order is changing to grpc's.
SYNC_VARIANTS: dict[str, Callable[[str], grpc.Channel]] = {
    "grpc": lambda t: grpc.insecure_channel(t, options=GRPC_OPTIONS),
    "lbclient-rr": lambda t: lbclient.insecure_channel(t, service_config=ROUND_ROBIN),
    "lbclient-production": lambda t: lbclient.insecure_channel(t, service_config=PRODUCTION),
    "lbclient-hedging": lambda t: lbclient.insecure_channel(t, service_config=HEDGING),
}
AIO_VARIANTS: dict[str, Callable[[str], grpc.aio.Channel]] = {
    "grpc.aio": lambda t: grpc.aio.insecure_channel(t, options=GRPC_OPTIONS),
    "lbclient.aio-rr": lambda t: lbclient.aio.insecure_channel(t, service_config=ROUND_ROBIN),
    "lbclient.aio-production": lambda t: lbclient.aio.insecure_channel(
        t, service_config=PRODUCTION),
}


class CaseHang(AssertionError):
    """A case did not finish within its bound."""


def all_stacks(limit: int = 60_000) -> str:
    """The Python stack of every thread, named (at most ``limit`` characters)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        stack = "".join(traceback.format_stack(frame))
        parts.append(f"--- thread {names.get(ident, '?')} ({ident}):\n{stack}")
    text = "\n".join(parts)
    return text if len(text) <= limit else text[:limit] + "\n... (cut)"


def _bounded(fn: Callable[[], object], timeout: float) -> bool:
    """Run ``fn`` in a daemon thread; True if it returned (or raised) within ``timeout``."""
    thread = threading.Thread(target=fn, name="interop-bounded", daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive()


class Cleanup:
    """What a case leaves to undo (cancel calls, close request queues), run bounded."""

    def __init__(self) -> None:
        self._fns: list[Callable[[], object]] = []

    def add(self, fn: Callable[[], object]) -> None:
        self._fns.append(fn)

    def run_here(self) -> None:
        """Run every undo step on this thread (asyncio: on the loop), newest first."""
        fns, self._fns = self._fns, []
        for fn in reversed(fns):
            try:
                fn()
            except Exception:
                pass

    def run(self) -> None:
        """``run_here`` in a daemon thread, bounded by CLOSE_TIMEOUT."""
        _bounded(self.run_here, CLOSE_TIMEOUT)


def run_sync_case(label: str, body: Callable[[Cleanup], None],
                  timeout: float = CASE_TIMEOUT) -> None:
    """Run ``body(cleanup)`` in a worker thread, bounded by ``timeout``; then run the
    cleanup (bounded) and re-raise what the body raised."""
    outcome: list[BaseException | None] = []
    cleanup = Cleanup()

    def worker() -> None:
        try:
            body(cleanup)
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=worker, name=f"case {label}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        stacks = all_stacks()
        cleanup.run()
        raise CaseHang(f"{label}: hang: did not finish within {timeout:.0f}s\n{stacks}")
    cleanup.run()
    if outcome[0] is not None:
        raise outcome[0]


class RequestQueue(Generic[T]):
    """A request iterator fed from another thread: ``put`` sends, ``finish`` half-closes,
    ``close`` ends it from anywhere. ``__next__`` blocks, but never longer than
    RPC_TIMEOUT in total (then it half-closes), so no consumer thread is left behind."""

    _END = object()

    def __init__(self) -> None:
        self._queue: queue.Queue[object] = queue.Queue()
        self._closed = threading.Event()
        self._give_up = time.monotonic() + RPC_TIMEOUT

    def put(self, request: T) -> None:
        self._queue.put(request)

    def finish(self) -> None:
        self._queue.put(self._END)

    def close(self) -> None:
        self._closed.set()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        while not self._closed.is_set() and time.monotonic() < self._give_up:
            try:
                item = self._queue.get(timeout=0.02)
            except queue.Empty:
                continue
            if item is self._END:
                break
            return item  # type: ignore[return-value]
        raise StopIteration


# ------------------------------------------------------------------ sync channels

class SyncChannels:
    """One channel per variant for a module, created on first use and waited READY."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._channels: dict[str, grpc.Channel] = {}
        self._retired: list[grpc.Channel] = []

    def get(self, variant: str) -> grpc.Channel:
        channel = self._channels.get(variant)
        if channel is None:
            channel = SYNC_VARIANTS[variant](self._target)
            self._channels[variant] = channel
            try:  # a channel that never gets READY shows in its cases' failures
                grpc.channel_ready_future(channel).result(timeout=READY_TIMEOUT)
            except grpc.FutureTimeoutError:
                pass
        return channel

    def poison(self, variant: str) -> None:
        """Retire ``variant``'s channel after a hang; the next ``get`` makes a new one."""
        channel = self._channels.pop(variant, None)
        if channel is not None:
            self._retired.append(channel)

    def close_all(self) -> None:
        channels = list(self._channels.values()) + self._retired
        self._channels, self._retired = {}, []
        for channel in channels:
            _bounded(channel.close, CLOSE_TIMEOUT)


# ------------------------------------------------------------------ asyncio

class AioLoop:
    """An event loop in a daemon thread, shared by a module's asyncio cases and channels."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.wedged: str | None = None  # the case whose hang blocked the loop itself
        self._thread = threading.Thread(target=self.loop.run_forever, name="interop-aio-loop",
                                        daemon=True)
        self._thread.start()

    def call(self, make: Callable[[], Awaitable[T]], timeout: float = CASE_TIMEOUT) -> T:
        """Run ``make()`` on the loop; wait at most ``timeout``."""
        async def main() -> T:
            return await make()
        return asyncio.run_coroutine_threadsafe(main(), self.loop).result(timeout)

    def run_case(self, label: str, make: Callable[[Cleanup], Awaitable[None]],
                 timeout: float = CASE_TIMEOUT) -> None:
        """Run ``make(cleanup)`` as a task, bounded, then the cleanup (on the loop); a hang
        fails with the task's and every thread's stack."""
        if self.wedged is not None:
            raise CaseHang(f"{label}: not run: the event loop is blocked since {self.wedged}")

        async def guarded() -> None:
            cleanup = Cleanup()
            task = asyncio.ensure_future(make(cleanup))
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if task in done:
                cleanup.run_here()
                return task.result()
            frames = io.StringIO()
            task.print_stack(limit=50, file=frames)
            stacks = all_stacks()
            task.cancel()
            await asyncio.wait({task}, timeout=2)
            cleanup.run_here()
            raise CaseHang(f"{label}: hang: did not finish within {timeout:.0f}s\n"
                           f"--- the case's task:\n{frames.getvalue()}\n{stacks}")

        future = asyncio.run_coroutine_threadsafe(guarded(), self.loop)
        try:
            future.result(timeout + 5)
        except concurrent.futures.TimeoutError:
            self.wedged = label
            raise CaseHang(f"{label}: hang: the event loop itself is blocked (no progress "
                           f"for {timeout + 5:.0f}s)\n{all_stacks()}") from None

    def stop(self) -> None:
        if self.wedged is None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(CLOSE_TIMEOUT)
            if not self._thread.is_alive():
                self.loop.close()


class AioChannels:
    """One grpc.aio channel per variant for a module, made on ``loop`` and waited READY."""

    def __init__(self, loop: AioLoop, target: str) -> None:
        self._loop = loop
        self._target = target
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._retired: list[grpc.aio.Channel] = []

    def get(self, variant: str) -> grpc.aio.Channel:
        channel = self._channels.get(variant)
        if channel is None:
            async def make() -> grpc.aio.Channel:
                made = AIO_VARIANTS[variant](self._target)
                try:
                    await asyncio.wait_for(made.channel_ready(), READY_TIMEOUT)
                except TimeoutError:
                    pass
                return made
            channel = self._loop.call(make, READY_TIMEOUT + 5)
            self._channels[variant] = channel
        return channel

    def poison(self, variant: str) -> None:
        channel = self._channels.pop(variant, None)
        if channel is not None:
            self._retired.append(channel)

    def close_all(self) -> None:
        channels = list(self._channels.values()) + self._retired
        self._channels, self._retired = {}, []
        if self._loop.wedged is not None:
            return  # nothing can run on a blocked loop; its daemon thread dies with us
        for channel in channels:
            async def close(channel: grpc.aio.Channel = channel) -> None:
                await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT)
            try:
                self._loop.call(close, CLOSE_TIMEOUT + 2)
            except Exception:
                pass
