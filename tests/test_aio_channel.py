"""lbclient.aio against real grpc.aio servers: transparency, balancing, failures."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator

import grpc
import grpc.aio
import pytest

import lbclient.aio
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")


@pytest.fixture(scope="module")
def fleet3() -> Iterator[Fleet]:
    with Fleet(3) as fleet:
        yield fleet


def run(coro_fn, *args):  # type: ignore[no-untyped-def]
    """Run a test coroutine in a fresh loop in debug mode (slow callbacks are logged)."""
    async def main():  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        loop.slow_callback_duration = 0.25
        return await asyncio.wait_for(coro_fn(*args), 60)
    return asyncio.run(main(), debug=True)


async def _ready(ch: lbclient.aio.LoadBalancedChannel, n: int) -> None:
    for _ in range(1000):
        if sum(e.connectivity == "READY" for e in ch.endpoints()) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{n} endpoints not READY")


class _Interceptor(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self) -> None:
        self.calls = 0

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        self.calls += 1
        md = grpc.aio.Metadata(*(details.metadata or ()), ("x-echo-aio", "1"))
        return await continuation(details._replace(metadata=md), request)


def test_all_rpc_kinds_and_metadata(fleet3: Fleet) -> None:
    async def body() -> None:
        async with lbclient.aio.insecure_channel(fleet3.target) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            await ch.channel_ready()
            await _ready(ch, 3)
            seen = {(await stub.Unary(REQ, timeout=5)).address for _ in range(6)}
            assert seen == set(fleet3.addresses)
            call = stub.Unary(REQ, timeout=5, metadata=(("x-echo-k", "v"),))
            reply = await call
            assert (await call.code()) is grpc.StatusCode.OK
            assert dict(await call.trailing_metadata())["x-echo-k"] == "v"
            assert dict(await call.initial_metadata())["x-backend"] == reply.backend
            items = [r.index async for r in stub.ServerStream(
                echo_pb2.EchoRequest(count=4), timeout=5)]
            assert items == [0, 1, 2, 3]
            stream = stub.ServerStream(echo_pb2.EchoRequest(count=2), timeout=5)
            assert (await stream.read()).index == 0
            assert (await stream.read()).index == 1
            assert await stream.read() is grpc.aio.EOF
            reply = await stub.ClientStream(iter([echo_pb2.EchoRequest(message=m)
                                                  for m in "abc"]), timeout=5)
            assert reply.message == "a,b,c"
            cs = stub.ClientStream(timeout=5)
            await cs.write(echo_pb2.EchoRequest(message="p"))
            await cs.write(echo_pb2.EchoRequest(message="q"))
            await cs.done_writing()
            assert (await cs).message == "p,q"
            bidi = stub.Bidi(timeout=5)
            for i in range(3):
                await bidi.write(echo_pb2.EchoRequest(message=str(i)))
                assert (await bidi.read()).message == str(i)
            await bidi.done_writing()
            assert await bidi.read() is grpc.aio.EOF
            await asyncio.sleep(0.05)
            assert all(e.in_flight == 0 for e in ch.endpoints())
    run(body)


def test_status_deadline_cancel(fleet3: Fleet) -> None:
    async def body() -> None:
        async with lbclient.aio.insecure_channel(fleet3.target) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            await _ready(ch, 3)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Unary(echo_pb2.EchoRequest(fail_code=5, fail_details="nope"))
            assert info.value.code() is grpc.StatusCode.NOT_FOUND
            assert info.value.details() == "nope"
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Unary(echo_pb2.EchoRequest(sleep_ms=3000), timeout=0.2)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - t0 < 1.5
            call = stub.Unary(echo_pb2.EchoRequest(sleep_ms=3000), timeout=10)
            await asyncio.sleep(0.1)
            assert call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            for _ in range(200):
                if all(e.in_flight == 0 for e in ch.endpoints()):
                    break
                await asyncio.sleep(0.01)
            assert all(e.in_flight == 0 for e in ch.endpoints())
    run(body)


def test_interceptors_run_on_every_call(fleet3: Fleet) -> None:
    async def body() -> None:
        icpt = _Interceptor()
        async with lbclient.aio.insecure_channel(fleet3.target, interceptors=[icpt]) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            await _ready(ch, 3)
            call = stub.Unary(REQ, timeout=5)
            await call
            assert dict(await call.trailing_metadata())["x-echo-aio"] == "1"
            assert icpt.calls == 1
    run(body)


def test_round_robin_even_and_1000_concurrent(fleet3: Fleet) -> None:
    async def body() -> None:
        async with lbclient.aio.insecure_channel(fleet3.target) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            await _ready(ch, 3)
            counts = collections.Counter()
            for _ in range(300):
                counts[(await stub.Unary(REQ, timeout=5)).address] += 1
            assert sorted(counts.values()) == [100, 100, 100]
            replies = await asyncio.gather(*[stub.Unary(REQ, timeout=30) for _ in range(1000)])
            assert len(replies) == 1000
            by_backend = collections.Counter(r.address for r in replies)
            assert all(abs(n - 333) <= 2 for n in by_backend.values()), by_backend
            await asyncio.sleep(0.05)
            assert all(e.in_flight == 0 for e in ch.endpoints())
            assert sum(e.calls for e in ch.endpoints()) == 1300
    run(body)


def test_no_ready_endpoint_and_wait_for_ready() -> None:
    async def body(fleet: Fleet) -> None:
        fleet[0].stop()
        async with lbclient.aio.insecure_channel(
                fleet.target, options=[("grpc.initial_reconnect_backoff_ms", 100),
                                       ("grpc.max_reconnect_backoff_ms", 200)]) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            for _ in range(500):
                if ch.endpoints() and ch.endpoints()[0].connectivity == "TRANSIENT_FAILURE":
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Unary(REQ, timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "no ready endpoints" in info.value.details()
            call = stub.Unary(REQ, timeout=0.3, wait_for_ready=True)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert (await call.code()) is grpc.StatusCode.DEADLINE_EXCEEDED
            asyncio.get_running_loop().call_later(0.3, fleet[0].restart)
            reply = await stub.Unary(REQ, timeout=15, wait_for_ready=True)
            assert reply.address == fleet[0].address
            assert ch.get_state() is grpc.ChannelConnectivity.READY
        assert ch.get_state() is grpc.ChannelConnectivity.SHUTDOWN
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Unary(REQ, timeout=1)
        assert info.value.code() is grpc.StatusCode.CANCELLED

    with Fleet(1) as fleet:
        run(body, fleet)


def test_stopped_backend_not_picked(fleet_factory) -> None:  # type: ignore[no-untyped-def]
    fleet = fleet_factory(3)

    async def body() -> None:
        async with lbclient.aio.insecure_channel(fleet.target) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            await _ready(ch, 3)
            fleet[2].stop()
            for _ in range(1000):
                if ch.endpoints()[2].connectivity != "READY":
                    break
                await asyncio.sleep(0.01)
            seen = collections.Counter(
                [(await stub.Unary(REQ, timeout=5)).address for _ in range(60)])
            assert fleet[2].address not in seen and sum(seen.values()) == 60
    run(body)
