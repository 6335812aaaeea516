"""A call the caller cancelled or abandoned is never an endpoint failure (passive health,
outlier detection, consecutive failures, latency), and in-flight counts and threads come
back once the calls are gone (issue "Resilience", deliverable 1)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from typing import Any

import grpc
from helpers import wait_ready, wait_until

import lbclient
import lbclient.aio
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

SERVICE = "lbclient.testing.echo.v1.Echo"
PRODUCTION = {
    "loadBalancingConfig": [{"outlier_detection": {
        "interval": "0.2s", "baseEjectionTime": "5s", "maxEjectionPercent": 100,
        "consecutiveFailures": 5,
        "failurePercentageEjection": {"threshold": 20, "minimumHosts": 3, "requestVolume": 5},
        "childPolicy": [{"round_robin": {}}]}}],
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": {
        "maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}],
}
TEN = echo_pb2.EchoRequest(message="s", count=10, sleep_ms=5)


def _client_threads() -> set[str]:
    """This process's threads but the in-process test servers' own workers."""
    return {t.name for t in threading.enumerate() if not t.name.startswith("lbclient-backend")}


def _settled(ch: Any, fleet: Fleet) -> None:
    gc.collect()
    wait_until(lambda: all(e.in_flight == 0 for e in ch.endpoints())
               and all(b.in_flight == 0 for b in fleet), 10,
               message="in-flight back to 0 on both sides")


def _no_failures(ch: Any, events: list[Any]) -> None:
    infos = ch.endpoints()
    assert [e for e in events if e.kind == "ejected"] == [], events
    assert all(e.failures == 0 and e.recent_failures == 0 and not e.ejected
               for e in infos), [(e.address, e.failures, e.ejected) for e in infos]


def test_abandoned_and_cancelled_sync_streams_are_not_endpoint_failures() -> None:
    with Fleet(3) as fleet:
        with lbclient.insecure_channel(fleet.target, service_config=PRODUCTION) as ch:
            events: list[Any] = []
            ch.add_event_listener(events.append)
            wait_ready(ch, 3)
            wait_until(lambda: all(e.health == "healthy" for e in ch.endpoints()), 10)
            stub = echo_pb2_grpc.EchoStub(ch)
            base_threads = _client_threads()
            errors: list[BaseException] = []

            def reader(i: int) -> None:
                try:
                    for n in range(12):
                        stream = stub.ServerStream(TEN, timeout=10)
                        next(stream)
                        next(stream)
                        if (i + n) % 2:
                            stream.cancel()         # cancelled by the caller...
                        del stream                   # ...or just dropped (abandoned)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, errors[:3]
            _settled(ch, fleet)
            time.sleep(0.5)           # outlier intervals pass: nothing to eject
            _no_failures(ch, events)
            wait_until(lambda: _client_threads() <= base_threads, 10,
                       message=f"threads back to their base: {_client_threads() - base_threads}")


def test_abandoned_and_cancelled_aio_streams_are_not_endpoint_failures() -> None:
    async def body(fleet: Fleet) -> None:
        async with lbclient.aio.insecure_channel(fleet.target,
                                                 service_config=PRODUCTION) as ch:
            events: list[Any] = []
            ch.add_event_listener(events.append)
            stub = echo_pb2_grpc.EchoStub(ch)
            await ch.channel_ready()
            for _ in range(40):
                call = stub.ServerStream(TEN, timeout=10)
                await call.read()
                await call.read()
                call.cancel()
            gc.collect()
            loop = asyncio.get_running_loop()
            end = loop.time() + 10
            while loop.time() < end and any(e.in_flight for e in ch.endpoints()):
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
            assert all(e.in_flight == 0 for e in ch.endpoints())
            _no_failures(ch, events)

    with Fleet(3) as fleet:
        asyncio.run(asyncio.wait_for(body(fleet), 60))


def test_a_cancelled_unary_future_is_not_a_failure() -> None:
    with Fleet(2) as fleet:
        for b in fleet:
            b.set_latency(0.2)
        with lbclient.insecure_channel(fleet.target, service_config=PRODUCTION) as ch:
            events: list[Any] = []
            ch.add_event_listener(events.append)
            wait_ready(ch, 2)
            stub = echo_pb2_grpc.EchoStub(ch)
            for _ in range(12):
                f = stub.Unary.future(echo_pb2.EchoRequest(message="c"), timeout=5)
                assert f.cancel()
            with __import__("pytest").raises(grpc.FutureCancelledError):
                f.result()
            _settled(ch, fleet)
            _no_failures(ch, events)


def test_a_cancelled_slow_call_is_no_latency_sample() -> None:
    """A stream the caller cancels after a long wait says nothing about the endpoint's
    latency: neither its latency EWMA nor peak_ewma's estimate moves (before the fix a
    stream cancelled after 1 s raised the peak from 5 ms to 1.2 s)."""
    config = {"loadBalancingConfig": [{"peak_ewma": {}}]}
    slow = echo_pb2.EchoRequest(message="s", count=2, sleep_ms=3000)
    with Fleet(1) as fleet:
        with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
            wait_ready(ch, 1)
            stub = echo_pb2_grpc.EchoStub(ch)
            for _ in range(5):
                stub.Unary(echo_pb2.EchoRequest(message="fast"), timeout=5)
            rec = ch._balancer.records()[0]
            before = (rec.stats.latency_ewma, rec.stats.peak_ewma)
            assert before[0] is not None and before[1] is not None and before[1] < 0.5
            stream = stub.ServerStream(slow, timeout=10)
            time.sleep(0.6)
            stream.cancel()
            _settled(ch, fleet)
            assert (rec.stats.latency_ewma, rec.stats.peak_ewma) == before
            assert ch.endpoints()[0].calls == 6          # counted as a call all the same
