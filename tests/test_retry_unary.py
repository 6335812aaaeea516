"""Retries of unary and client-streaming calls on real backends: another endpoint each
attempt, only listed codes, one shared deadline, pushback, attempt metadata, futures,
interceptors and request replay."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from helpers import wait_ready, wait_until
from retry_servers import ScriptedServer, retry_config, trailer

import lbclient
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _req(msg: str = "hi", **kw: Any) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(message=msg, **kw)


@pytest.fixture
def channel_for() -> Iterator[Any]:
    """``channel_for(target, config, ready=n)`` -> (channel, stub); closed at teardown."""
    channels: list[lbclient.LoadBalancedChannel] = []

    def make(target: str, config: Any, ready: int = 0) -> tuple[Any, Any]:
        ch = lbclient.insecure_channel(target, service_config=config)
        channels.append(ch)
        if ready:
            wait_ready(ch, ready)
        return ch, echo_pb2_grpc.EchoStub(ch)

    yield make
    for ch in channels:
        ch.close()


def test_failing_backends_are_never_tried_twice_in_one_call(fleet: Fleet,
                                                           channel_for: Any) -> None:
    fleet[0].set_error_rate(1.0)
    fleet[1].set_error_rate(1.0)
    _, stub = channel_for(fleet.target, retry_config(attempts=5), ready=3)
    bad = (fleet[0], fleet[1])
    retried = 0
    for _ in range(24):
        before = [b.calls for b in bad]
        reply, call = stub.Unary.with_call(_req(), timeout=5)
        deltas = [b.calls - n for b, n in zip(bad, before, strict=True)]
        assert reply.address == fleet[2].address
        assert all(d <= 1 for d in deltas), deltas
        previous = trailer(call)
        assert previous == (str(sum(deltas)) if sum(deltas) else None)
        retried += bool(sum(deltas))
    assert fleet[0].calls > 0 and fleet[1].calls > 0   # the failing ones were really tried
    assert retried >= 8


def test_without_a_retry_policy_the_same_failures_reach_the_caller(fleet: Fleet,
                                                                  channel_for: Any) -> None:
    fleet[0].set_error_rate(1.0)
    _, stub = channel_for(fleet.target, {}, ready=3)
    failures = 0
    for _ in range(9):
        try:
            stub.Unary(_req(), timeout=5)
        except grpc.RpcError as exc:
            assert exc.code() is UNAVAILABLE
            failures += 1
    assert failures >= 1


def test_non_retryable_code_is_returned_at_once(fleet: Fleet, channel_for: Any) -> None:
    _, stub = channel_for(fleet.target, retry_config(attempts=5, initial="1s", maximum="1s"),
                          ready=3)
    fleet.reset_counters()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(_req(fail_code=grpc.StatusCode.NOT_FOUND.value[0]), timeout=5)
    assert time.monotonic() - started < 0.9          # no 1 s backoff was slept
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert sum(fleet.calls().values()) == 1
    assert trailer(info.value) is None


def test_listed_non_unavailable_code_is_retried(fleet: Fleet, channel_for: Any) -> None:
    fleet[0].set_error_rate(1.0, grpc.StatusCode.RESOURCE_EXHAUSTED)
    _, stub = channel_for(fleet.target, retry_config(codes=("RESOURCE_EXHAUSTED",)), ready=3)
    for _ in range(6):
        assert stub.Unary(_req(), timeout=5).address != fleet[0].address
    assert fleet[0].calls >= 1


@pytest.mark.parametrize("failure", ["fast", "hang"])
def test_deadline_covers_all_attempts(fleet: Fleet, channel_for: Any, failure: str) -> None:
    for b in fleet:
        if failure == "fast":
            b.set_error_rate(1.0)
        else:
            b.hang()
    config = retry_config(attempts=5, initial="0.2s", maximum="1s",
                          codes=("UNAVAILABLE", "DEADLINE_EXCEEDED"))
    _, stub = channel_for(fleet.target, config, ready=3)
    fleet.reset_counters()
    worst = 0.0
    for _ in range(4):
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(_req(), timeout=0.3)
        worst = max(worst, time.monotonic() - started)
        expected = UNAVAILABLE if failure == "fast" else grpc.StatusCode.DEADLINE_EXCEEDED
        assert info.value.code() is expected
    assert worst < 0.3 + 0.4, worst      # generous: a noisy shared machine
    if failure == "fast":
        assert sum(fleet.calls().values()) >= 5   # retries did happen inside the deadline
    for b in fleet:
        b.hang(False)


def test_method_config_timeout_bounds_retries(fleet: Fleet, channel_for: Any) -> None:
    for b in fleet:
        b.set_error_rate(1.0)
    config = retry_config(attempts=5, initial="0.2s", maximum="1s", timeout="0.3s")
    _, stub = channel_for(fleet.target, config, ready=3)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError):
        stub.Unary(_req())                          # no caller timeout: the config's 0.3 s
    assert time.monotonic() - started < 0.3 + 0.4


def test_attempts_are_reported_both_ways() -> None:
    with ScriptedServer(code=UNAVAILABLE) as server, lbclient.insecure_channel(
            f"ipv4:{server.address}", service_config=retry_config(attempts=3)) as ch:
        wait_ready(ch, 1)
        stub = echo_pb2_grpc.EchoStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(_req(), timeout=5, metadata=(("x-user", "1"),))
        assert info.value.code() is UNAVAILABLE
        assert trailer(info.value) == "2"
        assert trailer(info.value, "x-backend") == "scripted"      # the server's own trailers
        assert info.value.previous_rpc_attempts == 2  # type: ignore[attr-defined]
        seen = [md.get("lbclient-previous-rpc-attempts") for md in server.metadata]
        assert seen == [None, "1", "2"]
        assert all(md.get("x-user") == "1" for md in server.metadata)


@pytest.mark.parametrize("value", ["-1", "not-a-number"])
def test_pushback_saying_no_stops_retries(value: str) -> None:
    with ScriptedServer(code=UNAVAILABLE, pushback=value) as server, lbclient.insecure_channel(
            f"ipv4:{server.address}", service_config=retry_config(attempts=4)) as ch:
        wait_ready(ch, 1)
        with pytest.raises(grpc.RpcError) as info:
            echo_pb2_grpc.EchoStub(ch).Unary(_req(), timeout=5)
        assert info.value.code() is UNAVAILABLE
        assert server.calls == 1


def test_pushback_delay_is_honoured() -> None:
    config = retry_config(attempts=2, initial="0.001s", maximum="0.001s")
    with ScriptedServer(code=UNAVAILABLE, pushback="300") as server, lbclient.insecure_channel(
            f"ipv4:{server.address}", service_config=config) as ch:
        wait_ready(ch, 1)
        stub = echo_pb2_grpc.EchoStub(ch)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError):
            stub.Unary(_req(), timeout=10)
        assert time.monotonic() - started >= 0.29   # not the 1 ms backoff
        assert server.calls == 2
        # A pushback that the deadline can't fit ends the call now, not at the deadline.
        server.pushback = "5000"
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(_req(), timeout=2)
        assert time.monotonic() - started < 1.5
        assert info.value.code() is UNAVAILABLE and server.calls == 3


def test_futures_retry_on_another_endpoint(fleet: Fleet, channel_for: Any) -> None:
    fleet[0].set_error_rate(1.0)
    _, stub = channel_for(fleet.target, retry_config(), ready=3)
    done: list[Any] = []
    futures = [stub.Unary.future(_req(str(i)), timeout=5) for i in range(12)]
    for f in futures:
        f.add_done_callback(done.append)
    replies = [f.result(timeout=10) for f in futures]
    assert [r.message for r in replies] == [str(i) for i in range(12)]
    assert all(r.address != fleet[0].address for r in replies)
    assert all(f.code() is grpc.StatusCode.OK and f.done() and not f.running()
               for f in futures)
    retried = [f for f in futures if trailer(f) == "1"]
    assert len(retried) == fleet[0].calls >= 1
    wait_until(lambda: len(done) == 12, 5)
    assert {id(f) for f in done} == {id(f) for f in futures}


def test_future_failure_and_cancel_during_backoff() -> None:
    config = retry_config(attempts=3, initial="0.001s", maximum="0.001s")
    slow = retry_config(attempts=3, initial="5s", maximum="5s", multiplier=1)
    with ScriptedServer(code=UNAVAILABLE) as server:
        with lbclient.insecure_channel(f"ipv4:{server.address}", service_config=config) as ch:
            wait_ready(ch, 1)
            future = echo_pb2_grpc.EchoStub(ch).Unary.future(_req(), timeout=5)
            exc = future.exception(timeout=5)
            assert exc is future and future.code() is UNAVAILABLE
            with pytest.raises(grpc.RpcError) as info:
                future.result()
            assert info.value is future and trailer(future) == "2"
            assert isinstance(future, grpc.Call | grpc.Future)
        server.metadata.clear()
        server.pushback = "5000"                    # the next retry: exactly 5 s away
        with lbclient.insecure_channel(f"ipv4:{server.address}", service_config=slow) as ch:
            wait_ready(ch, 1)
            future = echo_pb2_grpc.EchoStub(ch).Unary.future(_req(), timeout=30)
            wait_until(lambda: server.calls == 1, 5)
            time.sleep(0.05)                        # the attempt failed; a backoff runs
            assert future.cancel() and future.cancelled()
            with pytest.raises(grpc.FutureCancelledError):
                future.result(timeout=1)
            assert future.code() is grpc.StatusCode.CANCELLED
            time.sleep(0.2)
            assert server.calls == 1


def test_channel_close_ends_a_future_waiting_in_backoff() -> None:
    slow = retry_config(attempts=3, initial="5s", maximum="5s", multiplier=1)
    with ScriptedServer(code=UNAVAILABLE, pushback="5000") as server:
        ch = lbclient.insecure_channel(f"ipv4:{server.address}", service_config=slow)
        try:
            wait_ready(ch, 1)
            future = echo_pb2_grpc.EchoStub(ch).Unary.future(_req())
            wait_until(lambda: server.calls == 1, 5)
            time.sleep(0.05)
        finally:
            ch.close()
        with pytest.raises(grpc.RpcError):
            future.result(timeout=2)
        assert future.code() is grpc.StatusCode.CANCELLED


class _Counting(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    def __init__(self) -> None:
        self.calls = 0

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        self.calls += 1
        return continuation(details, request)

    def intercept_stream_unary(self, continuation, details, it):  # type: ignore[no-untyped-def]
        self.calls += 1
        return continuation(details, it)


def test_retries_work_under_grpc_intercept_channel(fleet: Fleet, channel_for: Any) -> None:
    fleet[0].set_error_rate(1.0)
    ch, _ = channel_for(fleet.target, retry_config(), ready=3)
    interceptor = _Counting()
    stub = echo_pb2_grpc.EchoStub(grpc.intercept_channel(ch, interceptor))
    for i in range(6):
        reply, call = stub.Unary.with_call(_req(str(i)), timeout=5)
        assert reply.message == str(i) and call.code() is grpc.StatusCode.OK
        assert stub.Unary.future(_req(), timeout=5).result().address != fleet[0].address
        assert stub.ClientStream(iter([_req("a"), _req("b")]), timeout=5).message == "a,b"
    assert interceptor.calls == 18               # retries happen below the interceptor
    assert fleet[0].calls >= 3
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(_req(fail_code=grpc.StatusCode.ALREADY_EXISTS.value[0]), timeout=5)
    assert info.value.code() is grpc.StatusCode.ALREADY_EXISTS


def _stream(n: int, size: int = 0) -> Iterator[echo_pb2.EchoRequest]:
    for i in range(n):
        yield echo_pb2.EchoRequest(message=str(i), payload=b"p" * size)


def test_client_streaming_requests_are_replayed(fleet: Fleet, channel_for: Any) -> None:
    fleet[0].set_error_rate(1.0)
    _, stub = channel_for(fleet.target, retry_config(), ready=3)
    for _ in range(6):
        reply, call = stub.ClientStream.with_call(_stream(5, size=100), timeout=5)
        assert reply.message == "0,1,2,3,4" and reply.payload == b"p" * 500
    assert fleet[0].calls >= 1
    futures = [stub.ClientStream.future(_stream(3), timeout=5) for _ in range(6)]
    assert all(f.result(timeout=10).message == "0,1,2" for f in futures)


def test_request_streams_past_the_buffer_are_committed() -> None:
    with ScriptedServer(code=UNAVAILABLE) as server, lbclient.insecure_channel(
            f"ipv4:{server.address}", service_config=retry_config(attempts=3)) as ch:
        wait_ready(ch, 1)
        stub = echo_pb2_grpc.EchoStub(ch)
        with pytest.raises(grpc.RpcError):
            stub.ClientStream(_stream(3, size=10_000), timeout=5)
        assert server.calls == 3                       # 30 KB: replayed
        with pytest.raises(grpc.RpcError) as info:
            stub.ClientStream(_stream(4, size=100_000), timeout=5)
        assert server.calls == 4                       # 400 KB > 256 KiB: committed
        assert info.value.code() is UNAVAILABLE
        with pytest.raises(grpc.RpcError):
            stub.Unary(_req(payload=b"u" * 300_000), timeout=5)
        assert server.calls == 5                       # a unary request that big: once


def test_per_attempt_timeout_retries_a_slow_attempt(fleet: Fleet, channel_for: Any) -> None:
    fleet[0].set_latency(2.0)
    config = retry_config(attempts=3)
    config["methodConfig"][0]["retryPolicy"]["perAttemptRecvTimeout"] = "0.2s"
    _, stub = channel_for(fleet.target, config, ready=3)
    started = time.monotonic()
    for _ in range(3):
        assert stub.Unary(_req(), timeout=5).address != fleet[0].address
    assert time.monotonic() - started < 1.8            # never waited out the 2 s backend
    assert fleet[0].calls >= 1


def test_wait_for_ready_retries_of_futures(fleet: Fleet, channel_for: Any) -> None:
    # With waitForReady a retry's pick may block, so it starts on a thread of its own.
    fleet[0].set_error_rate(1.0)
    _, stub = channel_for(fleet.target, retry_config(waitForReady=True), ready=3)
    futures = [stub.Unary.future(_req(str(i)), timeout=5) for i in range(9)]
    assert [f.result(timeout=10).message for f in futures] == [str(i) for i in range(9)]
    assert sum(trailer(f) == "1" for f in futures) == fleet[0].calls >= 1
