"""Retries of server-streaming and bidi calls: only until the first response message."""

from __future__ import annotations

import gc
import threading
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


def _req(msg: str = "s", **kw: Any) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(message=msg, **kw)


def _requests(n: int) -> Iterator[echo_pb2.EchoRequest]:
    for i in range(n):
        yield echo_pb2.EchoRequest(message=str(i))


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    with ScriptedServer(code=UNAVAILABLE) as server:
        yield server


@pytest.fixture
def mixed(scripted: ScriptedServer, fleet_factory: Any) -> Iterator[tuple[Any, Any]]:
    """A channel over the failing scripted server plus two fake backends."""
    fleet = fleet_factory(2)
    target = f"ipv4:{scripted.address},{fleet[0].address},{fleet[1].address}"
    with lbclient.insecure_channel(target, service_config=retry_config(attempts=3)) as ch:
        wait_ready(ch, 3)
        fleet.channel = ch   # for tests that wrap it
        yield echo_pb2_grpc.EchoStub(ch), fleet


@pytest.fixture
def only_scripted(scripted: ScriptedServer) -> Iterator[Any]:
    with lbclient.insecure_channel(f"ipv4:{scripted.address}",
                                   service_config=retry_config(attempts=3)) as ch:
        wait_ready(ch, 1)
        yield echo_pb2_grpc.EchoStub(ch)


def test_server_stream_failing_before_first_message_is_retried(
        mixed: tuple[Any, Fleet], scripted: ScriptedServer) -> None:
    stub, fleet = mixed
    for _ in range(9):
        before = scripted.calls
        replies = list(stub.ServerStream(_req(count=3), timeout=5))
        assert [r.index for r in replies] == [0, 1, 2]
        assert replies[0].address in fleet.addresses
        assert scripted.calls - before <= 1
    assert scripted.calls >= 2


def test_bidi_failing_before_first_message_is_retried_with_its_requests(
        mixed: tuple[Any, Fleet], scripted: ScriptedServer) -> None:
    stub, fleet = mixed
    for _ in range(9):
        replies = list(stub.Bidi(_requests(4), timeout=5))
        assert [r.message for r in replies] == ["0", "1", "2", "3"]
    assert scripted.calls >= 2


def test_failure_after_the_first_message_is_not_retried(scripted: ScriptedServer,
                                                        only_scripted: Any) -> None:
    scripted.messages_before_failure = 1
    stream = only_scripted.ServerStream(_req(count=3), timeout=5)
    first = next(stream)
    assert first.index == 0
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    assert info.value is stream and stream.code() is UNAVAILABLE
    assert scripted.calls == 1
    assert trailer(stream) is None


def test_bidi_failure_after_the_first_message_is_not_retried(scripted: ScriptedServer,
                                                             only_scripted: Any) -> None:
    scripted.messages_before_failure = 2
    got: list[str] = []
    with pytest.raises(grpc.RpcError) as info:
        for reply in only_scripted.Bidi(_requests(5), timeout=5):
            got.append(reply.message)
    assert got == ["0", "1"] and info.value.code() is UNAVAILABLE
    assert scripted.calls == 1


def test_failure_before_any_message_uses_every_attempt(scripted: ScriptedServer,
                                                       only_scripted: Any) -> None:
    stream = only_scripted.ServerStream(_req(count=3), timeout=5)
    with pytest.raises(grpc.RpcError) as info:
        list(stream)
    assert info.value.code() is UNAVAILABLE
    assert scripted.calls == 3
    assert trailer(stream) == "2" and stream.previous_rpc_attempts == 2
    assert [md.get("lbclient-previous-rpc-attempts") for md in scripted.metadata] == [
        None, "1", "2"]
    assert not stream.is_active() and stream.done()


def test_call_methods_settle_without_losing_the_first_message(mixed: tuple[Any, Fleet],
                                                              scripted: ScriptedServer) -> None:
    # As with grpc, code() waits for the end of the call, which needs the messages read:
    # a one-message stream lets it end once settling has read (and kept) that message.
    stub, _ = mixed
    for _ in range(4):
        stream = stub.ServerStream(_req(count=1), timeout=5)
        assert stream.code() is grpc.StatusCode.OK       # retries done before answering
        assert [r.index for r in stream] == [0]          # the first message was kept
        assert trailer(stream, "x-backend") is not None
        assert stream.details() in (None, "")


def test_code_of_a_stream_that_fails_everywhere(scripted: ScriptedServer,
                                                only_scripted: Any) -> None:
    stream = only_scripted.ServerStream(_req(count=3), timeout=5)
    assert stream.code() is UNAVAILABLE                  # no read needed: settles it
    assert scripted.calls == 3
    assert stream.exception() is stream
    with pytest.raises(grpc.RpcError):
        stream.result()
    with pytest.raises(grpc.RpcError):
        next(stream)


def test_initial_metadata_of_a_live_attempt_commits(fleet: Fleet) -> None:
    config = retry_config(attempts=3)
    with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
        wait_ready(ch, 3)
        stream = echo_pb2_grpc.EchoStub(ch).ServerStream(_req(count=2, sleep_ms=100),
                                                         timeout=5)
        md = dict(stream.initial_metadata())
        assert md["x-backend"].startswith("backend-")
        assert [r.index for r in stream] == [0, 1]


def test_cancel_during_stream_backoff(scripted: ScriptedServer) -> None:
    scripted.pushback = "5000"                      # the retry: exactly 5 s away
    slow = retry_config(attempts=3, initial="5s", maximum="5s", multiplier=1)
    with lbclient.insecure_channel(f"ipv4:{scripted.address}", service_config=slow) as ch:
        wait_ready(ch, 1)
        stream = echo_pb2_grpc.EchoStub(ch).ServerStream(_req(count=2), timeout=30)
        errors: list[BaseException] = []

        def read() -> None:
            try:
                list(stream)
            except grpc.RpcError as exc:
                errors.append(exc)

        reader = threading.Thread(target=read)
        started = time.monotonic()
        reader.start()
        wait_until(lambda: scripted.calls == 1, 5)
        time.sleep(0.05)
        stream.cancel()
        reader.join(5)
        assert not reader.is_alive() and time.monotonic() - started < 4
        assert errors and errors[0].code() is grpc.StatusCode.CANCELLED
        assert scripted.calls == 1


def test_stream_callbacks_run_once_at_the_end(mixed: tuple[Any, Fleet]) -> None:
    stub, _ = mixed
    calls: list[str] = []
    stream = stub.ServerStream(_req(count=2), timeout=5)
    assert stream.add_callback(lambda: calls.append("cb"))
    stream.add_done_callback(lambda s: calls.append("done"))
    assert len(list(stream)) == 2
    wait_until(lambda: sorted(calls) == ["cb", "done"], 5)
    assert not stream.add_callback(lambda: None)


def test_streams_under_grpc_intercept_channel(mixed: tuple[Any, Fleet]) -> None:
    class Tag(grpc.UnaryStreamClientInterceptor, grpc.StreamStreamClientInterceptor):
        calls = 0

        def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
            Tag.calls += 1
            return continuation(details, request)

        def intercept_stream_stream(self, continuation, details, it):  # type: ignore[no-untyped-def]
            Tag.calls += 1
            return continuation(details, it)

    stub, fleet = mixed
    wrapped = echo_pb2_grpc.EchoStub(grpc.intercept_channel(fleet.channel, Tag()))
    for _ in range(4):
        assert len(list(wrapped.ServerStream(_req(count=2), timeout=5))) == 2
        assert len(list(wrapped.Bidi(_requests(2), timeout=5))) == 2
    assert Tag.calls == 8


def test_plain_stream_failing_before_any_message_does_not_hang(scripted: ScriptedServer) -> None:
    # Regression: finishing such an attempt on grpc's callback thread waited for initial
    # metadata that only that thread could deliver, hanging the endpoint's channel.
    with lbclient.insecure_channel(f"ipv4:{scripted.address}") as ch:
        wait_ready(ch, 1)
        stub = echo_pb2_grpc.EchoStub(ch)
        started = time.monotonic()
        for _ in range(10):
            with pytest.raises(grpc.RpcError) as info:
                list(stub.ServerStream(_req(count=2), timeout=5))
            assert info.value.code() is UNAVAILABLE
        assert time.monotonic() - started < 4
        wait_until(lambda: all(e.in_flight == 0 for e in ch.endpoints()), 5)


def test_an_abandoned_committed_stream_is_cancelled(fleet: Fleet) -> None:
    with lbclient.insecure_channel(fleet.target, service_config=retry_config()) as ch:
        wait_ready(ch, 3)
        stream = echo_pb2_grpc.EchoStub(ch).ServerStream(_req(count=400, sleep_ms=50),
                                                         timeout=30)
        calls: list[str] = []
        stream.add_callback(lambda: calls.append("ended"))
        assert next(stream).index == 0                 # committed
        wait_until(lambda: sum(b.in_flight for b in fleet) == 1, 5)
        del stream
        gc.collect()
        wait_until(lambda: sum(b.in_flight for b in fleet) == 0, 5,
                   message="the abandoned stream cancelled")
        wait_until(lambda: calls == ["ended"], 5)
