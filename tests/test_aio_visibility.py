"""Visibility on lbclient.aio, as on the sync channel: ``endpoints()``, endpoint event,
call and resolver listeners (delivered on the event loop, also when the resolver calls
from its own thread), and ``lbclient.metrics`` (collector, Prometheus, LBCLIENT_METRICS).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

import grpc
import grpc.aio
import pytest
from prometheus_client import CollectorRegistry
from retry_servers import retry_config

import lbclient
import lbclient.aio
import lbclient.metrics as metrics
from lbclient.metrics import prometheus as lbprom
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")


class ThreadPushResolver(lbclient.Resolver):
    """Delivers what the test pushes, from a thread of its own (``aiopush`` scheme)."""

    last: ThreadPushResolver | None = None

    def __init__(self, target: lbclient.Target, listener: lbclient.ResolverListener,
                 options: Mapping[str, Any]) -> None:
        super().__init__(target, listener, options)
        ThreadPushResolver.last = self

    def start(self) -> None:
        pass

    def _from_thread(self, fn: Any, *args: Any) -> None:
        t = threading.Thread(target=fn, args=args)
        t.start()
        t.join(5)

    def push(self, *addresses: str) -> None:
        state = lbclient.ResolverState(tuple(lbclient.Endpoint(a) for a in addresses))
        self._from_thread(self.listener.on_resolved, state)

    def fail(self, message: str) -> None:
        self._from_thread(self.listener.on_resolver_error, lbclient.ResolverError(message))


lbclient.register_resolver("aiopush", ThreadPushResolver)


def run(fn: Any) -> Any:
    return asyncio.run(asyncio.wait_for(fn(), 60))


async def until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def test_listeners_run_on_the_loop_in_order(fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(3, aio=True)
    fleet[0].set_error_rate(1.0)

    async def body() -> None:
        loop_thread = threading.get_ident()
        events: list[tuple[str, str, int]] = []
        calls: list[tuple[str, str, int]] = []
        resolved: list[tuple[int | None, str | None, int]] = []
        async with lbclient.aio.insecure_channel(
                "aiopush:///svc", service_config=retry_config(attempts=3)) as ch:
            ch.add_event_listener(lambda e: events.append(
                (e.kind, e.address, threading.get_ident())))
            ch.add_call_listener(lambda a, o: calls.append((a, o.code, threading.get_ident())))
            ch.add_resolver_listener(lambda s, e: resolved.append(
                (len(s.endpoints) if s else None, str(e) if e else None,
                 threading.get_ident())))
            resolver = ThreadPushResolver.last
            assert resolver is not None
            resolver.push(*fleet.addresses)
            await until(lambda: sum(e.connectivity == "READY" for e in ch.endpoints()) == 3,
                        "3 READY")
            assert [e.address for e in ch.endpoints()] == fleet.addresses
            assert [(k, a) for k, a, _ in events] == [("added", a) for a in fleet.addresses]
            stub = echo_pb2_grpc.EchoStub(ch)
            for _ in range(6):
                await stub.Unary(REQ, timeout=5)
            await until(lambda: sum(c == "OK" for _, c, _ in calls) == 6, "6 OK attempts")
            failed = [a for a, c, _ in calls if c == "UNAVAILABLE"]
            assert failed and set(failed) == {fleet[0].address}   # retried attempts too
            info = next(e for e in ch.endpoints() if e.address == fleet[0].address)
            assert info.failures == len(failed) and info.calls == len(failed)
            resolver.push(*fleet.addresses[1:])
            await until(lambda: len(ch.endpoints()) == 2, "an endpoint removed")
            assert events[-1][:2] == ("removed", fleet[0].address)
            resolver.fail("registry down")
            await until(lambda: resolved and resolved[-1][1] == "registry down", "the error")
            assert [(n, e) for n, e, _ in resolved] == [(3, None), (2, None),
                                                        (None, "registry down")]
            assert len(ch.endpoints()) == 2               # the last good list is kept
            threads = {t for *_, t in events} | {t for *_, t in calls} | {
                t for *_, t in resolved}
            assert threads == {loop_thread}
            n = len(calls)
            ch.remove_call_listener(calls.append)          # not registered: no-op
            ch.remove_call_listener(ch._call_listeners[0])
            assert ch._ctx.call_listener is None
            await stub.Unary(REQ, timeout=5)
            assert len(calls) == n

    run(body)


def test_metrics_collector_on_an_aio_channel(fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(3, aio=True)

    async def body() -> None:
        async with lbclient.aio.insecure_channel(fleet.target) as ch:
            m = metrics.instrument(ch)
            await ch.channel_ready()
            stub = echo_pb2_grpc.EchoStub(ch)
            await asyncio.gather(*(stub.Unary(REQ, timeout=5) for _ in range(30)))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Unary(echo_pb2.EchoRequest(fail_code=5), timeout=5)
            snap = m.snapshot()
            assert snap.target == fleet.target
            assert snap.calls == {"OK": 30, "NOT_FOUND": 1}
            assert {e.address for e in snap.endpoints} == set(fleet.addresses)
            assert sum(e.latency.count for e in snap.endpoints) == 31
            assert all(e.events.get("added") == 1 and e.in_flight == 0
                       for e in snap.endpoints)
            m.attachment.detach()
            await stub.Unary(REQ, timeout=5)
            assert m.snapshot().calls == {"OK": 30, "NOT_FOUND": 1}

    run(body)


def test_prometheus_export_and_the_environment_switch(fleet_factory: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fleet: Fleet = fleet_factory(2, aio=True)
    registry = CollectorRegistry()

    async def body() -> None:
        async with lbclient.aio.insecure_channel(fleet.target) as ch:
            lbprom.enable(ch, registry)
            await ch.channel_ready()
            stub = echo_pb2_grpc.EchoStub(ch)
            for _ in range(4):
                await stub.Unary(REQ, timeout=5)
            total = sum(registry.get_sample_value(
                "lbclient_calls_total", {"target": fleet.target, "address": a,
                                         "code": "OK"}) or 0 for a in fleet.addresses)
            assert total == 4
            lbprom.disable(ch, registry)
        monkeypatch.setenv("LBCLIENT_METRICS", "prometheus")
        async with lbclient.aio.insecure_channel(fleet.target) as auto:
            assert len(auto._call_listeners) == 1       # instrumented at creation
            lbprom.disable(auto)

    run(body)
