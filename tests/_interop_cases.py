"""The non-credential gRPC interop test cases for sync ``grpc.Channel`` s, written from
gRPC's ``doc/interop-test-descriptions.md``: each function runs the spec's procedure on a
channel and asserts what its "Client asserts" says. Every RPC has a deadline; request
streams that must stay open are ``RequestQueue`` s, closed by the case's ``Cleanup``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import cast

import grpc
import pytest
from _interop_support import RPC_TIMEOUT, Cleanup, RequestQueue

from lbclient.testing.interop import (
    ECHO_INITIAL_KEY,
    ECHO_TRAILING_KEY,
    empty_pb2,
    messages_pb2,
    test_pb2_grpc,
)

Case = Callable[[grpc.Channel, Cleanup], None]

# The spec's sizes.
LARGE_REQUEST, LARGE_RESPONSE = 271828, 314159
CLIENT_STREAM_SIZES = (27182, 8, 1828, 45904)            # aggregated: 74922
SERVER_STREAM_SIZES = (31415, 9, 2653, 58979)
PING_PONG = tuple(zip(SERVER_STREAM_SIZES, CLIENT_STREAM_SIZES, strict=True))  # (resp, req)
ECHO_INITIAL = (ECHO_INITIAL_KEY, "test_initial_metadata_value")
ECHO_TRAILING = (ECHO_TRAILING_KEY, b"\xab\xab\xab")
STATUS_MESSAGE = "test status message"
SPECIAL_MESSAGE = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"


def payload(size: int) -> messages_pb2.Payload:
    return messages_pb2.Payload(body=bytes(size))


def streaming_request(sizes: Sequence[int], body: int = 0
                      ) -> messages_pb2.StreamingOutputCallRequest:
    return messages_pb2.StreamingOutputCallRequest(
        response_parameters=[messages_pb2.ResponseParameters(size=s) for s in sizes],
        payload=payload(body) if body else None)


def echo_status(message: str) -> messages_pb2.EchoStatus:
    return messages_pb2.EchoStatus(code=grpc.StatusCode.UNKNOWN.value[0], message=message)


def pairs(metadata: Iterable[tuple[str, str | bytes]] | None) -> list[tuple[str, str | bytes]]:
    """Metadata as plain (key, value) tuples (grpc gives _Metadatum named tuples)."""
    return [(k, v) for k, v in metadata or ()]


def assert_zeros(body: bytes, size: int) -> None:
    assert len(body) == size, f"payload body is {len(body)} bytes, expected {size}"
    assert body == bytes(size), "payload body is not all zeros"


def as_call(error: BaseException) -> grpc.Call:
    """A raised grpc.RpcError as the grpc.Call it also is at run time (types-grpcio's
    stubs cannot express that: their RpcError and Call signatures clash)."""
    assert callable(getattr(error, "code", None)), f"{error!r} is not a grpc.Call"
    return cast(grpc.Call, error)


def expect_rpc_error(fn: Callable[[], object]) -> grpc.Call:
    """The grpc.RpcError ``fn`` raises."""
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return as_call(info.value)


def stub_of(channel: grpc.Channel) -> test_pb2_grpc.TestServiceStub:
    return test_pb2_grpc.TestServiceStub(channel)


# ------------------------------------------------------------------ the cases

def empty_unary(channel: grpc.Channel, cleanup: Cleanup) -> None:
    reply = stub_of(channel).EmptyCall(empty_pb2.Empty(), timeout=RPC_TIMEOUT)
    assert isinstance(reply, empty_pb2.Empty)
    assert reply.ByteSize() == 0


def large_unary(channel: grpc.Channel, cleanup: Cleanup) -> None:
    request = messages_pb2.SimpleRequest(response_size=LARGE_RESPONSE,
                                         payload=payload(LARGE_REQUEST))
    reply = stub_of(channel).UnaryCall(request, timeout=RPC_TIMEOUT)
    assert reply.payload.type == messages_pb2.COMPRESSABLE
    assert_zeros(reply.payload.body, LARGE_RESPONSE)


def client_streaming(channel: grpc.Channel, cleanup: Cleanup) -> None:
    requests = [messages_pb2.StreamingInputCallRequest(payload=payload(s))
                for s in CLIENT_STREAM_SIZES]
    reply = stub_of(channel).StreamingInputCall(iter(requests), timeout=RPC_TIMEOUT)
    assert reply.aggregated_payload_size == 74922


def server_streaming(channel: grpc.Channel, cleanup: Cleanup) -> None:
    call = stub_of(channel).StreamingOutputCall(streaming_request(SERVER_STREAM_SIZES),
                                                timeout=RPC_TIMEOUT)
    cleanup.add(call.cancel)
    replies = list(call)
    assert [len(r.payload.body) for r in replies] == list(SERVER_STREAM_SIZES)
    for reply, size in zip(replies, SERVER_STREAM_SIZES, strict=True):
        assert_zeros(reply.payload.body, size)
    assert call.code() is grpc.StatusCode.OK


def ping_pong(channel: grpc.Channel, cleanup: Cleanup) -> None:
    """True lockstep: each request is put only after the previous reply was read."""
    requests: RequestQueue[messages_pb2.StreamingOutputCallRequest] = RequestQueue()
    cleanup.add(requests.close)
    call = stub_of(channel).FullDuplexCall(requests, timeout=RPC_TIMEOUT)
    cleanup.add(call.cancel)
    for response_size, request_size in PING_PONG:
        requests.put(streaming_request([response_size], request_size))
        reply = next(call)
        assert_zeros(reply.payload.body, response_size)
    requests.finish()
    assert next(call, None) is None, "a reply after the last request"
    assert call.code() is grpc.StatusCode.OK


def empty_stream(channel: grpc.Channel, cleanup: Cleanup) -> None:
    call = stub_of(channel).FullDuplexCall(iter(()), timeout=RPC_TIMEOUT)
    cleanup.add(call.cancel)
    assert list(call) == []
    assert call.code() is grpc.StatusCode.OK


def cancel_after_begin(channel: grpc.Channel, cleanup: Cleanup) -> None:
    """The request stream blocks (nothing is sent); the call is cancelled at once."""
    requests: RequestQueue[messages_pb2.StreamingInputCallRequest] = RequestQueue()
    cleanup.add(requests.close)
    future = stub_of(channel).StreamingInputCall.future(requests, timeout=RPC_TIMEOUT)
    cleanup.add(future.cancel)
    assert future.cancel() is True
    assert future.cancelled()
    assert future.done()
    with pytest.raises(grpc.FutureCancelledError):
        future.result(timeout=RPC_TIMEOUT)
    assert as_call(cast(BaseException, future)).code() is grpc.StatusCode.CANCELLED


def cancel_after_first_response(channel: grpc.Channel, cleanup: Cleanup) -> None:
    requests: RequestQueue[messages_pb2.StreamingOutputCallRequest] = RequestQueue()
    cleanup.add(requests.close)
    call = stub_of(channel).FullDuplexCall(requests, timeout=RPC_TIMEOUT)
    cleanup.add(call.cancel)
    requests.put(streaming_request([31415], 27182))
    assert_zeros(next(call).payload.body, 31415)
    call.cancel()
    assert call.code() is grpc.StatusCode.CANCELLED
    error = expect_rpc_error(lambda: next(call))
    assert error.code() is grpc.StatusCode.CANCELLED


def timeout_on_sleeping_server(channel: grpc.Channel, cleanup: Cleanup) -> None:
    requests: RequestQueue[messages_pb2.StreamingOutputCallRequest] = RequestQueue()
    cleanup.add(requests.close)
    call = stub_of(channel).FullDuplexCall(requests, timeout=0.001)
    cleanup.add(call.cancel)
    requests.put(messages_pb2.StreamingOutputCallRequest(payload=payload(27182)))
    error = expect_rpc_error(lambda: next(call))
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert call.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def custom_metadata(channel: grpc.Channel, cleanup: Cleanup) -> None:
    stub = stub_of(channel)
    metadata = (ECHO_INITIAL, ECHO_TRAILING)
    request = messages_pb2.SimpleRequest(response_size=LARGE_RESPONSE,
                                         payload=payload(LARGE_REQUEST))
    _, unary = stub.UnaryCall.with_call(request, metadata=metadata, timeout=RPC_TIMEOUT)
    assert ECHO_INITIAL in pairs(unary.initial_metadata()), "unary initial metadata"
    assert ECHO_TRAILING in pairs(unary.trailing_metadata()), "unary trailing metadata"

    call = stub.FullDuplexCall(iter([streaming_request([LARGE_RESPONSE], LARGE_REQUEST)]),
                               metadata=metadata, timeout=RPC_TIMEOUT)
    cleanup.add(call.cancel)
    assert [len(r.payload.body) for r in call] == [LARGE_RESPONSE]
    assert ECHO_INITIAL in pairs(call.initial_metadata()), "full duplex initial metadata"
    assert ECHO_TRAILING in pairs(call.trailing_metadata()), "full duplex trailing metadata"


def _status_cases(channel: grpc.Channel, message: str, duplex: bool) -> None:
    stub = stub_of(channel)
    unary = expect_rpc_error(lambda: stub.UnaryCall(
        messages_pb2.SimpleRequest(response_status=echo_status(message)), timeout=RPC_TIMEOUT))
    assert unary.code() is grpc.StatusCode.UNKNOWN
    assert unary.details() == message
    if duplex:
        request = messages_pb2.StreamingOutputCallRequest(response_status=echo_status(message))
        call = stub.FullDuplexCall(iter([request]), timeout=RPC_TIMEOUT)
        error = expect_rpc_error(lambda: list(call))
        assert error.code() is grpc.StatusCode.UNKNOWN
        assert error.details() == message


def status_code_and_message(channel: grpc.Channel, cleanup: Cleanup) -> None:
    _status_cases(channel, STATUS_MESSAGE, duplex=True)


def special_status_message(channel: grpc.Channel, cleanup: Cleanup) -> None:
    _status_cases(channel, SPECIAL_MESSAGE, duplex=False)


def unimplemented_method(channel: grpc.Channel, cleanup: Cleanup) -> None:
    error = expect_rpc_error(lambda: stub_of(channel).UnimplementedCall(
        empty_pb2.Empty(), timeout=RPC_TIMEOUT))
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED


def unimplemented_service(channel: grpc.Channel, cleanup: Cleanup) -> None:
    stub = test_pb2_grpc.UnimplementedServiceStub(channel)
    error = expect_rpc_error(lambda: stub.UnimplementedCall(empty_pb2.Empty(),
                                                            timeout=RPC_TIMEOUT))
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED


CASES: dict[str, Case] = {f.__name__: f for f in (
    empty_unary, large_unary, client_streaming, server_streaming, ping_pong, empty_stream,
    cancel_after_begin, cancel_after_first_response, timeout_on_sleeping_server,
    custom_metadata, status_code_and_message, special_status_message, unimplemented_method,
    unimplemented_service)}
