"""Active grpc.health.v1 probing for the asyncio channel: the same checkers as
``lbclient._sync.health`` (same reports, same thresholds in the balancer's
``HealthTracker``), run as asyncio tasks on the endpoint's grpc.aio connection instead
of threads, so nothing blocks the loop.

Contract (the balancer's ``HealthCheckerFactory``): ``start(handle, config, report)``
returns a checker with ``set_probing(on)``, ``stop()`` and ``join(timeout)``; ``report``
is called on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..health.tracker import READMIT_PROBE_INTERVAL, Backoff, HealthReport
from ..health.tracker import status_detail as _status_detail

log = logging.getLogger("lbclient.health")

Report = Callable[[HealthReport], None]
_SERVING = health_pb2.HealthCheckResponse.SERVING
_UNIMPLEMENTED = HealthReport("unimplemented", True,
                              "health service UNIMPLEMENTED: treated as healthy")


async def _poll(stub: Any, request: Any, config: Any, interval: float, rng: random.Random,
                report: Report) -> None:
    """``Health/Check`` every ``interval`` (+-jitter), each bounded by ``timeout``."""
    while True:
        try:
            reply = await stub.Check(request, timeout=config.timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.UNIMPLEMENTED:
                report(_UNIMPLEMENTED)
                return
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                detail = f"probe timed out after {config.timeout:g}s"
            else:
                detail = f"probe failed: {code.name} {exc.details() or ''}".rstrip()
            report(HealthReport("probe", False, detail))
        else:
            report(HealthReport("probe", reply.status == _SERVING, _status_detail(reply.status)))
        await asyncio.sleep(interval * (1.0 + rng.uniform(-config.jitter, config.jitter)))


async def _watch(stub: Any, request: Any, rng: random.Random, report: Report) -> None:
    """gRFC A17: one Watch stream at a time; reopen after a backoff reset by any message."""
    backoff = Backoff(rng)
    while True:
        got_message = False
        try:
            async for reply in stub.Watch(request, wait_for_ready=True):
                got_message = True
                backoff.reset()
                report(HealthReport("watch", reply.status == _SERVING,
                                    _status_detail(reply.status)))
            detail = "health stream ended by the server"
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                report(_UNIMPLEMENTED)
                return
            detail = f"health stream failed: {exc.code().name}"
        report(HealthReport("stream_error", False, detail))
        await asyncio.sleep(0.0 if got_message else backoff.next_delay())


class AioChecker:
    def __init__(self, channel: grpc.aio.Channel, config: Any, report: Report,
                 rng: random.Random) -> None:
        self._stub: Any = health_pb2_grpc.HealthStub(channel)   # (its stubs declare no methods)
        self._request = health_pb2.HealthCheckRequest(service=config.service_name)
        self._config, self._report, self._rng = config, report, rng
        loop = asyncio.get_running_loop()
        self._main = loop.create_task(
            _poll(self._stub, self._request, config, config.interval, rng, report)
            if config.mode == "poll" else _watch(self._stub, self._request, rng, report))
        self._main.add_done_callback(_retrieve)
        self._probe: asyncio.Task[None] | None = None

    def set_probing(self, on: bool) -> None:
        """Watch mode: while ``on``, also run Check probes (readmission after ejection)."""
        if self._config.mode == "poll":
            return
        if on and self._probe is None and not self._main.done():
            self._probe = asyncio.get_running_loop().create_task(_poll(
                self._stub, self._request, self._config,
                min(self._config.interval, READMIT_PROBE_INTERVAL), self._rng, self._report))
            self._probe.add_done_callback(_retrieve)
        elif not on and self._probe is not None:
            self._probe.cancel()
            self._probe = None

    def stop(self) -> None:
        for task in (self._main, self._probe):
            if task is not None:
                task.cancel()

    def join(self, timeout: float) -> None:
        """Tasks end at their next await after ``stop()``; nothing to join."""


def _retrieve(task: asyncio.Task[None]) -> None:
    """Consume a finished checker task's outcome (a closed connection ends it)."""
    with contextlib.suppress(asyncio.CancelledError):
        exc = task.exception()
        if exc is not None:
            log.debug("health checker ended: %r", exc)


class AioHealthCheckerFactory:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def start(self, handle: Any, config: Any, report: Report) -> AioChecker:
        return AioChecker(handle.raw, config, report, self._rng)
