"""The channel behaves like a plain grpc channel for every RPC kind (real backends).

Each test runs twice: on the channel itself and under grpc.intercept_channel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from helpers import wait_ready, wait_until

import lbclient
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc


class _CountingInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                           grpc.StreamUnaryClientInterceptor,
                           grpc.StreamStreamClientInterceptor):
    """Adds a metadata entry to every call and counts calls (proves interception)."""

    def __init__(self) -> None:
        self.calls = 0

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        self.calls += 1
        metadata = list(details.metadata or []) + [("x-echo-intercepted", "yes")]
        return details._replace(metadata=metadata)  # type: ignore[attr-defined]

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, it):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), it)

    def intercept_stream_stream(self, continuation, details, it):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), it)


class _Details(grpc.ClientCallDetails):
    pass


@pytest.fixture(scope="module")
def fleet3() -> Iterator[Fleet]:
    with Fleet(3) as fleet:
        yield fleet


@pytest.fixture(params=["plain", "intercepted"])
def setup(request: pytest.FixtureRequest, fleet3: Fleet) -> Iterator[tuple]:
    channel = lbclient.insecure_channel(fleet3.target)
    wait_ready(channel, 3)
    interceptor = None
    used: grpc.Channel = channel
    if request.param == "intercepted":
        interceptor = _CountingInterceptor()
        used = grpc.intercept_channel(channel, interceptor)
    try:
        yield echo_pb2_grpc.EchoStub(used), channel, interceptor, fleet3
    finally:
        channel.close()


def _req(msg: str = "hi", **kw: object) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(message=msg, **kw)  # type: ignore[arg-type]


def test_unary_reaches_every_backend(setup: tuple) -> None:
    stub, channel, interceptor, fleet = setup
    seen = {stub.Unary(_req(), timeout=5).address for _ in range(6)}
    assert seen == set(fleet.addresses)
    if interceptor is not None:
        assert interceptor.calls == 6


def test_with_call_and_metadata_both_ways(setup: tuple) -> None:
    stub, _, interceptor, _ = setup
    reply, call = stub.Unary.with_call(_req("m"), timeout=5,
                                       metadata=[("x-echo-token", "abc")])
    assert reply.message == "m"
    assert call.code() is grpc.StatusCode.OK
    initial = dict(call.initial_metadata())
    assert initial["x-backend"] == reply.backend
    trailing = dict(call.trailing_metadata())
    assert trailing["x-echo-token"] == "abc"
    if interceptor is not None:
        assert trailing["x-echo-intercepted"] == "yes"


def test_future(setup: tuple) -> None:
    stub, channel, _, _ = setup
    futures = [stub.Unary.future(_req(str(i)), timeout=5) for i in range(9)]
    replies = [f.result(timeout=5) for f in futures]
    assert [r.message for r in replies] == [str(i) for i in range(9)]
    assert all(f.code() is grpc.StatusCode.OK for f in futures)
    wait_until(lambda: all(e.in_flight == 0 for e in channel.endpoints()), 5,
               message="in-flight back to 0")


def test_server_streaming(setup: tuple) -> None:
    stub, channel, _, _ = setup
    call = stub.ServerStream(_req("s", count=5), timeout=5)
    replies = list(call)
    assert [r.index for r in replies] == [0, 1, 2, 3, 4]
    assert len({r.backend for r in replies}) == 1
    assert call.code() is grpc.StatusCode.OK
    # the attempt ends on grpc's callback thread, a moment after the last message
    wait_until(lambda: all(e.in_flight == 0 for e in channel.endpoints()), 5,
               message="in-flight back to 0")


def test_client_streaming(setup: tuple) -> None:
    stub, _, _, _ = setup
    reply = stub.ClientStream(iter([_req("a"), _req("b"), _req("c")]), timeout=5)
    assert reply.index == 3 and reply.message == "a,b,c"
    reply, call = stub.ClientStream.with_call(iter([_req("x")]), timeout=5)
    assert reply.message == "x" and call.code() is grpc.StatusCode.OK
    fut = stub.ClientStream.future(iter([_req("y"), _req("z")]), timeout=5)
    assert fut.result(timeout=5).message == "y,z"


def test_bidi_streaming(setup: tuple) -> None:
    stub, channel, _, _ = setup
    replies = list(stub.Bidi(iter([_req(str(i)) for i in range(4)]), timeout=5))
    assert [r.message for r in replies] == ["0", "1", "2", "3"]
    assert [r.index for r in replies] == [0, 1, 2, 3]
    wait_until(lambda: all(e.in_flight == 0 for e in channel.endpoints()), 5,
               message="in-flight back to 0")


def test_status_code_and_details_pass_through(setup: tuple) -> None:
    stub, _, _, _ = setup
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(_req(fail_code=grpc.StatusCode.NOT_FOUND.value[0],
                        fail_details="no such thing"), timeout=5)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "no such thing"
    stream = stub.ServerStream(_req(count=2, fail_code=grpc.StatusCode.ABORTED.value[0],
                                    fail_details="stream says no"), timeout=5)
    with pytest.raises(grpc.RpcError) as info2:
        list(stream)
    assert info2.value.code() is grpc.StatusCode.ABORTED
    assert info2.value.details() == "stream says no"


def test_deadline_exceeded(setup: tuple) -> None:
    stub, channel, _, _ = setup
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(_req(sleep_ms=2000), timeout=0.2)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 1.5
    fut = stub.Unary.future(_req(sleep_ms=2000), timeout=0.2)
    assert fut.exception(timeout=5).code() is grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: all(e.in_flight == 0 for e in channel.endpoints()), 5,
               message="in-flight back to 0")


def test_cancellation(setup: tuple) -> None:
    stub, channel, _, _ = setup
    fut = stub.Unary.future(_req(sleep_ms=3000), timeout=10)
    time.sleep(0.1)
    assert fut.cancel()
    assert fut.cancelled()
    stream = stub.ServerStream(_req(count=100, sleep_ms=50), timeout=10)
    first = next(stream)
    assert first.index == 0
    stream.cancel()
    with pytest.raises(grpc.RpcError) as info:
        for _ in stream:
            pass
    assert info.value.code() is grpc.StatusCode.CANCELLED
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(e.in_flight for e in channel.endpoints()):
        time.sleep(0.01)
    assert all(e.in_flight == 0 for e in channel.endpoints())


def test_compression_and_wait_for_ready_accepted(setup: tuple) -> None:
    stub, _, _, _ = setup
    reply = stub.Unary(_req("z" * 1000), timeout=5, compression=grpc.Compression.Gzip,
                       wait_for_ready=True)
    assert reply.message == "z" * 1000


def test_in_flight_returns_to_zero_after_abandoned_stream(setup: tuple) -> None:
    stub, channel, _, _ = setup
    stream = stub.ServerStream(_req(count=50, sleep_ms=20), timeout=10)
    next(stream)
    del stream  # grpc cancels an abandoned stream when it is collected
    import gc

    gc.collect()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(e.in_flight for e in channel.endpoints()):
        time.sleep(0.01)
    assert all(e.in_flight == 0 for e in channel.endpoints())


def test_threaded_futures_and_streams_mix(setup: tuple) -> None:
    stub, channel, _, _ = setup
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                stub.Unary.future(_req(), timeout=5).result(timeout=5)
                assert len(list(stub.ServerStream(_req(count=2), timeout=5))) == 2
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    wait_until(lambda: all(e.in_flight == 0 for e in channel.endpoints()), 5,
               message="in-flight back to 0")
