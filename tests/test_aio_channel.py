"""lbclient.aio behaves like a plain grpc.aio channel (the foundation's transparency
tests, async): every RPC kind, metadata, status, deadlines, cancellation, interceptors,
1,000 concurrent calls. Each test runs against sync grpc servers and grpc.aio servers
(``Fleet(aio=True)``), and the call tests also with grpc.aio interceptors on the channel.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

import lbclient.aio
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")


def _req(msg: str = "hi", **kw: Any) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(message=msg, **kw)


def run(coro_fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
    """Run a test coroutine in a fresh loop (bounded). Blocking on the loop is
    test_aio_loop's subject (debug mode makes every call far slower)."""
    async def main() -> Any:
        return await asyncio.wait_for(coro_fn(*args), 60)
    return asyncio.run(main())


async def ready(ch: lbclient.aio.LoadBalancedChannel, n: int) -> None:
    for _ in range(2000):
        if sum(e.connectivity == "READY" for e in ch.endpoints()) >= n:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{n} endpoints not READY")


async def idle(ch: lbclient.aio.LoadBalancedChannel) -> None:
    """Wait (bounded) until nothing is in flight, then assert it."""
    for _ in range(500):
        if all(e.in_flight == 0 for e in ch.endpoints()):
            return
        await asyncio.sleep(0.01)
    assert all(e.in_flight == 0 for e in ch.endpoints()), ch.endpoints()


class Counting:
    """grpc.aio interceptors for the four kinds (grpc.aio files an interceptor under its
    first matching kind only, so one object each) that add ``x-echo-intercepted: yes``
    to every call and count the calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.interceptors = [cls(self) for cls in (_UU, _US, _SU, _SS)]

    def details(self, details: Any) -> Any:
        self.calls += 1
        md = grpc.aio.Metadata(*(details.metadata or ()), ("x-echo-intercepted", "yes"))
        return details._replace(metadata=md)


class _Kind:
    def __init__(self, counter: Counting) -> None:
        self.counter = counter


class _UU(_Kind, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self.counter.details(details), request)


class _US(_Kind, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self.counter.details(details), request)


class _SU(_Kind, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, it):  # type: ignore[no-untyped-def]
        return await continuation(self.counter.details(details), it)


class _SS(_Kind, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, it):  # type: ignore[no-untyped-def]
        return await continuation(self.counter.details(details), it)


@pytest.fixture(scope="module", params=["sync_servers", "aio_servers"])
def fleet3(request: pytest.FixtureRequest) -> Iterator[Fleet]:
    with Fleet(3, aio=request.param == "aio_servers") as fleet:
        yield fleet


@pytest.fixture(params=["plain", "intercepted"])
def interceptor(request: pytest.FixtureRequest) -> Counting | None:
    return Counting() if request.param == "intercepted" else None


Body = Callable[[Any, lbclient.aio.LoadBalancedChannel, Fleet, "Counting | None"],
                Coroutine[Any, Any, None]]


def on_channel(fleet: Fleet, interceptor: Counting | None, body: Body) -> None:
    async def main() -> None:
        kwargs = {"interceptors": interceptor.interceptors} if interceptor is not None else {}
        async with lbclient.aio.insecure_channel(fleet.target, **kwargs) as ch:
            await ready(ch, len(fleet))
            await body(echo_pb2_grpc.EchoStub(ch), ch, fleet, interceptor)
            await idle(ch)
    run(main)


# ------------------------------------------------------------------ every RPC kind
def test_unary_reaches_every_backend_with_metadata_both_ways(fleet3: Fleet,
                                                             interceptor: Counting | None) -> None:
    async def body(stub: Any, ch: Any, fleet: Fleet, icpt: Counting | None) -> None:
        seen = {(await stub.Unary(_req(), timeout=5)).address for _ in range(6)}
        assert seen == set(fleet.addresses)
        call = stub.Unary(_req("m"), timeout=5, metadata=(("x-echo-token", "abc"),))
        reply = await call
        assert reply.message == "m" and (await call.code()) is grpc.StatusCode.OK
        assert dict(await call.initial_metadata())["x-backend"] == reply.backend
        trailing = dict(await call.trailing_metadata())
        assert trailing["x-echo-token"] == "abc" and "grpc-previous-rpc-attempts" not in trailing
        assert call.done() and not call.cancelled()
        if icpt is not None:
            assert trailing["x-echo-intercepted"] == "yes" and icpt.calls == 7
    on_channel(fleet3, interceptor, body)


def test_concurrent_unary_calls(fleet3: Fleet, interceptor: Counting | None) -> None:
    async def body(stub: Any, ch: Any, fleet: Fleet, icpt: Counting | None) -> None:
        calls = [stub.Unary(_req(str(i)), timeout=5) for i in range(9)]
        replies = await asyncio.gather(*calls)
        assert [r.message for r in replies] == [str(i) for i in range(9)]
        codes = [await c.code() for c in calls]
        assert codes == [grpc.StatusCode.OK] * 9
    on_channel(fleet3, interceptor, body)


def test_server_streaming(fleet3: Fleet, interceptor: Counting | None) -> None:
    async def body(stub: Any, ch: Any, fleet: Fleet, icpt: Counting | None) -> None:
        call = stub.ServerStream(_req("s", count=5), timeout=5)
        replies = [r async for r in call]
        assert [r.index for r in replies] == [0, 1, 2, 3, 4]
        assert len({r.backend for r in replies}) == 1
        assert (await call.code()) is grpc.StatusCode.OK
        stream = stub.ServerStream(_req(count=2), timeout=5)
        assert [(await stream.read()).index, (await stream.read()).index] == [0, 1]
        assert await stream.read() is grpc.aio.EOF
    on_channel(fleet3, interceptor, body)


def test_client_streaming(fleet3: Fleet, interceptor: Counting | None) -> None:
    async def body(stub: Any, ch: Any, fleet: Fleet, icpt: Counting | None) -> None:
        reply = await stub.ClientStream(iter([_req("a"), _req("b"), _req("c")]), timeout=5)
        assert reply.index == 3 and reply.message == "a,b,c"

        async def gen() -> AsyncIterator[echo_pb2.EchoRequest]:
            for m in "yz":
                yield _req(m)

        assert (await stub.ClientStream(gen(), timeout=5)).message == "y,z"
        call = stub.ClientStream(timeout=5)
        await call.write(_req("p"))
        await call.write(_req("q"))
        await call.done_writing()
        assert (await call).message == "p,q" and (await call.code()) is grpc.StatusCode.OK
    on_channel(fleet3, interceptor, body)


def test_bidi_streaming(fleet3: Fleet, interceptor: Counting | None) -> None:
    async def body(stub: Any, ch: Any, fleet: Fleet, icpt: Counting | None) -> None:
        replies = [r async for r in stub.Bidi(iter([_req(str(i)) for i in range(4)]),
                                              timeout=5)]
        assert [(r.message, r.index) for r in replies] == [(str(i), i) for i in range(4)]
        bidi = stub.Bidi(timeout=5)
        for i in range(3):
            await bidi.write(_req(str(i)))
            assert (await bidi.read()).message == str(i)
        await bidi.done_writing()
        assert await bidi.read() is grpc.aio.EOF
        assert (await bidi.code()) is grpc.StatusCode.OK
        if icpt is not None:
            assert icpt.calls == 2
    on_channel(fleet3, interceptor, body)


# ------------------------------------------------------------------ status, deadline, cancel
def test_status_code_and_details_pass_through(fleet3: Fleet,
                                              interceptor: Counting | None) -> None:
    async def body(stub: Any, ch: Any, fleet: Fleet, icpt: Counting | None) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Unary(_req(fail_code=5, fail_details="no such thing"), timeout=5)
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
        assert info.value.details() == "no such thing"
        stream = stub.ServerStream(_req(count=2, fail_code=10, fail_details="stream says no"),
                                   timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            [r async for r in stream]
        assert info.value.code() is grpc.StatusCode.ABORTED
        assert (await stream.details()) == "stream says no"
    on_channel(fleet3, interceptor, body)


def test_deadline_exceeded(fleet3: Fleet, interceptor: Counting | None) -> None:
    async def body(stub: Any, ch: Any, fleet: Fleet, icpt: Counting | None) -> None:
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Unary(_req(sleep_ms=2000), timeout=0.2)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 1.5
        call = stub.ServerStream(_req(count=3, sleep_ms=2000), timeout=0.2)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    on_channel(fleet3, interceptor, body)


def test_cancellation(fleet3: Fleet, interceptor: Counting | None) -> None:
    async def body(stub: Any, ch: Any, fleet: Fleet, icpt: Counting | None) -> None:
        call = stub.Unary(_req(sleep_ms=3000), timeout=10)
        await asyncio.sleep(0.1)
        assert call.cancel() and call.cancelled()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert (await call.code()) is grpc.StatusCode.CANCELLED
        stream = stub.ServerStream(_req(count=100, sleep_ms=50), timeout=10)
        assert (await stream.read()).index == 0
        assert stream.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stream.read()
        task = asyncio.ensure_future(stub.Unary(_req(sleep_ms=3000), timeout=10))
        await asyncio.sleep(0.1)
        task.cancel()            # cancelling the awaiting task cancels the RPC
        with pytest.raises(asyncio.CancelledError):
            await task
    on_channel(fleet3, interceptor, body)


def test_compression_and_wait_for_ready_accepted(fleet3: Fleet,
                                                 interceptor: Counting | None) -> None:
    async def body(stub: Any, ch: Any, fleet: Fleet, icpt: Counting | None) -> None:
        reply = await stub.Unary(_req("z" * 1000), timeout=5, wait_for_ready=True,
                                 compression=grpc.Compression.Gzip)
        assert reply.message == "z" * 1000
    on_channel(fleet3, interceptor, body)


def test_abandoned_stream_and_mixed_tasks_leave_nothing_in_flight(
        fleet3: Fleet, interceptor: Counting | None) -> None:
    async def body(stub: Any, ch: Any, fleet: Fleet, icpt: Counting | None) -> None:
        stream = stub.ServerStream(_req(count=50, sleep_ms=20), timeout=10)
        await stream.read()
        # grpc.aio's own tasks keep a running stream referenced, so dropping it does not
        # cancel it (also without lbclient): abandoning means cancelling.
        stream.cancel()
        del stream
        gc.collect()

        async def work() -> None:
            for _ in range(10):
                await stub.Unary(_req(), timeout=5)
                assert len([r async for r in stub.ServerStream(_req(count=2), timeout=5)]) == 2

        await asyncio.gather(*(work() for _ in range(4)))
    on_channel(fleet3, interceptor, body)


# ------------------------------------------------------------------ the channel
def test_1000_concurrent_calls_no_error_and_in_flight_back_to_zero(fleet3: Fleet) -> None:
    async def body() -> None:
        async with lbclient.aio.insecure_channel(fleet3.target) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            await ready(ch, 3)
            counts = collections.Counter([(await stub.Unary(REQ, timeout=5)).address
                                          for _ in range(30)])
            assert sorted(counts.values()) == [10, 10, 10]
            replies = await asyncio.gather(*[stub.Unary(REQ, timeout=30) for _ in range(1000)],
                                           return_exceptions=True)
            errors = [r for r in replies if isinstance(r, BaseException)]
            assert errors == []
            by_backend = collections.Counter(r.address for r in replies)  # type: ignore[union-attr]
            assert all(abs(n - 333) <= 2 for n in by_backend.values()), by_backend
            await idle(ch)
            assert sum(e.calls for e in ch.endpoints()) == 1030
    run(body)


def test_state_ready_close_and_later_calls(fleet3: Fleet) -> None:
    async def body() -> None:
        ch = lbclient.aio.insecure_channel(fleet3.target)
        assert ch.get_state() is not grpc.ChannelConnectivity.READY
        await asyncio.wait_for(ch.channel_ready(), 10)
        assert ch.get_state(try_to_connect=True) is grpc.ChannelConnectivity.READY
        stub = echo_pb2_grpc.EchoStub(ch)
        changed = asyncio.ensure_future(ch.wait_for_state_change(
            grpc.ChannelConnectivity.READY))
        await asyncio.sleep(0.05)
        assert not changed.done()
        await ch.close()
        await ch.close()                     # idempotent
        await asyncio.wait_for(changed, 5)
        assert ch.get_state() is grpc.ChannelConnectivity.SHUTDOWN
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Unary(REQ, timeout=1)
        assert info.value.code() is grpc.StatusCode.CANCELLED
        assert "closed" in (info.value.details() or "")
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
            assert call.done()
            stream = stub.ServerStream(REQ, timeout=1)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stream.read()
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            asyncio.get_running_loop().call_later(0.3, fleet[0].restart)
            reply = await stub.Unary(REQ, timeout=15, wait_for_ready=True)
            assert reply.address == fleet[0].address
            assert ch.get_state() is grpc.ChannelConnectivity.READY

    with Fleet(1) as fleet:
        run(body, fleet)


def test_stopped_backend_not_picked(fleet_factory: Any) -> None:
    fleet = fleet_factory(3, aio=True)

    async def body() -> None:
        async with lbclient.aio.insecure_channel(fleet.target) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            await ready(ch, 3)
            await asyncio.to_thread(fleet[2].stop)
            for _ in range(1000):
                if ch.endpoints()[2].connectivity != "READY":
                    break
                await asyncio.sleep(0.01)
            seen = collections.Counter(
                [(await stub.Unary(REQ, timeout=5)).address for _ in range(60)])
            assert fleet[2].address not in seen and sum(seen.values()) == 60
    run(body)


def test_finished_calls_are_read_from_grpc_aio_directly_with_a_fallback(fleet3: Fleet) -> None:
    """A finished call's status comes from grpc.aio's C-layer call when it can (a grpc
    upgrade that changes it must show up here) and from the coroutine getters otherwise;
    done callbacks fire once."""
    from lbclient._async.status import _c_call, status_now, when_done

    async def body() -> None:
        async with lbclient.aio.insecure_channel(fleet3.target) as ch:
            await ready(ch, 3)
            stub = echo_pb2_grpc.EchoStub(ch)
            call = stub.Unary(REQ, timeout=5, metadata=(("x-echo-a", "1"),))
            await call
            assert _c_call(call) is not None
            status = status_now(call)
            assert status is not None and status.code == "OK" and status.error() is None
            assert ("x-echo-a", "1") in status.trailing and dict(status.initial)["x-backend"]
            failed = stub.Unary(_req(fail_code=5, fail_details="nope"), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError):
                await failed

            class Wrapped:          # no C-layer call: the coroutine getters are used
                def __init__(self, inner: Any) -> None:
                    self._inner = inner

                def __getattr__(self, name: str) -> Any:
                    if name == "_cython_call":
                        raise AttributeError(name)
                    return getattr(self._inner, name)

            assert _c_call(Wrapped(failed)) is None
            seen: list[Any] = []
            when_done(failed, seen.append)
            when_done(Wrapped(failed), seen.append)
            await asyncio.sleep(0)
            assert [(s.code, s.details) for s in seen] == [("NOT_FOUND", "nope")] * 2
            error = seen[0].error()
            assert error.code() is grpc.StatusCode.NOT_FOUND and error.details() == "nope"
    run(body)


def test_unavailable_names_grpcs_connection_error_on_aio_too() -> None:
    """A call that fails because every endpoint failed says why, with grpc's own account
    of the connection error (the sync channel does the same: one rule in _core)."""
    import socket

    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()                                     # nothing listens: refused

    async def body() -> str:
        async with lbclient.aio.insecure_channel(f"ipv4:127.0.0.1:{port}") as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            details = ""
            for _ in range(100):                           # bounded: ~10 s
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Unary(echo_pb2.EchoRequest(message="x"), timeout=2)
                assert info.value.code() is grpc.StatusCode.UNAVAILABLE
                details = info.value.details() or ""
                if "last connection error" in details:
                    break
                await asyncio.sleep(0.1)
            return details

    details = asyncio.run(asyncio.wait_for(body(), 30))
    assert "no ready endpoints: 1 failed; last connection error:" in details, details
    assert "Connection refused" in details or "connect" in details, details
