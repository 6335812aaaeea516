"""The non-credential gRPC interop test cases for ``grpc.aio.Channel`` s (the asyncio twins
of ``_interop_cases``). Besides the spec's "Client asserts", every call object must be the
grpc.aio call kind a grpc.aio channel returns, and cancelling must behave as on grpc.aio:
``cancel()`` True, then ``cancelled()`` and ``done()`` True, code CANCELLED, and waiting
on the call raises ``asyncio.CancelledError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import grpc.aio
import pytest
from _interop_cases import (
    CLIENT_STREAM_SIZES,
    ECHO_INITIAL,
    ECHO_TRAILING,
    LARGE_REQUEST,
    LARGE_RESPONSE,
    PING_PONG,
    SERVER_STREAM_SIZES,
    SPECIAL_MESSAGE,
    STATUS_MESSAGE,
    assert_zeros,
    echo_status,
    pairs,
    payload,
    streaming_request,
)
from _interop_support import RPC_TIMEOUT, Cleanup

from lbclient.testing.interop import empty_pb2, messages_pb2, test_pb2_grpc

AioCase = Callable[[grpc.aio.Channel, Cleanup], Awaitable[None]]


def stub_of(channel: grpc.aio.Channel) -> test_pb2_grpc.TestServiceAsyncStub:  # stub-only type
    return test_pb2_grpc.TestServiceStub(channel)


def kind(call: object, expected: type) -> None:
    assert isinstance(call, expected), f"{type(call).__mro__} is not a {expected.__name__}"


async def expect_aio_error(awaitable: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value


async def assert_cancelled(call: grpc.aio.Call, wait: Callable[[], Awaitable[object]]) -> None:
    """``call`` was just cancelled: it behaves as a cancelled grpc.aio call."""
    assert call.cancelled(), "cancelled() is False after cancel()"
    assert call.done(), "done() is False after cancel()"
    assert await call.code() is grpc.StatusCode.CANCELLED
    with pytest.raises(asyncio.CancelledError):
        await wait()


# ------------------------------------------------------------------ the cases

async def empty_unary(channel: grpc.aio.Channel, cleanup: Cleanup) -> None:
    call = stub_of(channel).EmptyCall(empty_pb2.Empty(), timeout=RPC_TIMEOUT)
    kind(call, grpc.aio.UnaryUnaryCall)
    cleanup.add(call.cancel)
    reply = await call
    assert isinstance(reply, empty_pb2.Empty)
    assert reply.ByteSize() == 0
    assert await call.code() is grpc.StatusCode.OK


async def large_unary(channel: grpc.aio.Channel, cleanup: Cleanup) -> None:
    request = messages_pb2.SimpleRequest(response_size=LARGE_RESPONSE,
                                         payload=payload(LARGE_REQUEST))
    call = stub_of(channel).UnaryCall(request, timeout=RPC_TIMEOUT)
    kind(call, grpc.aio.UnaryUnaryCall)
    cleanup.add(call.cancel)
    reply = await call
    assert reply.payload.type == messages_pb2.COMPRESSABLE
    assert_zeros(reply.payload.body, LARGE_RESPONSE)


async def client_streaming(channel: grpc.aio.Channel, cleanup: Cleanup) -> None:
    call = stub_of(channel).StreamingInputCall(timeout=RPC_TIMEOUT)
    kind(call, grpc.aio.StreamUnaryCall)
    cleanup.add(call.cancel)
    for size in CLIENT_STREAM_SIZES:
        await call.write(messages_pb2.StreamingInputCallRequest(payload=payload(size)))
    await call.done_writing()
    reply = await call
    assert reply.aggregated_payload_size == 74922


async def server_streaming(channel: grpc.aio.Channel, cleanup: Cleanup) -> None:
    call = stub_of(channel).StreamingOutputCall(streaming_request(SERVER_STREAM_SIZES),
                                                timeout=RPC_TIMEOUT)
    kind(call, grpc.aio.UnaryStreamCall)
    cleanup.add(call.cancel)
    replies = [reply async for reply in call]
    assert [len(r.payload.body) for r in replies] == list(SERVER_STREAM_SIZES)
    for reply, size in zip(replies, SERVER_STREAM_SIZES, strict=True):
        assert_zeros(reply.payload.body, size)
    assert await call.code() is grpc.StatusCode.OK


async def ping_pong(channel: grpc.aio.Channel, cleanup: Cleanup) -> None:
    """Lockstep: each request is written only after the previous reply was read."""
    call = stub_of(channel).FullDuplexCall(timeout=RPC_TIMEOUT)
    kind(call, grpc.aio.StreamStreamCall)
    cleanup.add(call.cancel)
    for response_size, request_size in PING_PONG:
        await call.write(streaming_request([response_size], request_size))
        reply = await call.read()
        assert reply is not grpc.aio.EOF, "the stream ended before a reply"
        assert isinstance(reply, messages_pb2.StreamingOutputCallResponse)
        assert_zeros(reply.payload.body, response_size)
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF, "a reply after the last request"
    assert await call.code() is grpc.StatusCode.OK


async def empty_stream(channel: grpc.aio.Channel, cleanup: Cleanup) -> None:
    call = stub_of(channel).FullDuplexCall(timeout=RPC_TIMEOUT)
    kind(call, grpc.aio.StreamStreamCall)
    cleanup.add(call.cancel)
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK


async def cancel_after_begin(channel: grpc.aio.Channel, cleanup: Cleanup) -> None:
    call = stub_of(channel).StreamingInputCall(timeout=RPC_TIMEOUT)
    kind(call, grpc.aio.StreamUnaryCall)
    cleanup.add(call.cancel)
    assert call.cancel() is True, "cancel() of a call in progress must return True"

    async def wait() -> object:
        return await call
    await assert_cancelled(call, wait)


async def cancel_after_first_response(channel: grpc.aio.Channel, cleanup: Cleanup) -> None:
    call = stub_of(channel).FullDuplexCall(timeout=RPC_TIMEOUT)
    kind(call, grpc.aio.StreamStreamCall)
    cleanup.add(call.cancel)
    await call.write(streaming_request([31415], 27182))
    reply = await call.read()
    assert isinstance(reply, messages_pb2.StreamingOutputCallResponse)
    assert_zeros(reply.payload.body, 31415)
    assert call.cancel() is True, "cancel() of a call in progress must return True"
    await assert_cancelled(call, call.read)


async def timeout_on_sleeping_server(channel: grpc.aio.Channel, cleanup: Cleanup) -> None:
    call = stub_of(channel).FullDuplexCall(timeout=0.001)
    kind(call, grpc.aio.StreamStreamCall)
    cleanup.add(call.cancel)
    try:  # the deadline may already have passed: then the write fails, as on grpc.aio
        await call.write(messages_pb2.StreamingOutputCallRequest(payload=payload(27182)))
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass
    error = await expect_aio_error(call.read())
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED, (error.code(), error.details())
    assert await call.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def custom_metadata(channel: grpc.aio.Channel, cleanup: Cleanup) -> None:
    stub = stub_of(channel)
    metadata = grpc.aio.Metadata(ECHO_INITIAL, ECHO_TRAILING)
    request = messages_pb2.SimpleRequest(response_size=LARGE_RESPONSE,
                                         payload=payload(LARGE_REQUEST))
    unary = stub.UnaryCall(request, metadata=metadata, timeout=RPC_TIMEOUT)
    kind(unary, grpc.aio.UnaryUnaryCall)
    cleanup.add(unary.cancel)
    assert_zeros((await unary).payload.body, LARGE_RESPONSE)
    assert ECHO_INITIAL in pairs(await unary.initial_metadata()), "unary initial metadata"
    assert ECHO_TRAILING in pairs(await unary.trailing_metadata()), "unary trailing metadata"

    call = stub.FullDuplexCall(metadata=metadata, timeout=RPC_TIMEOUT)
    kind(call, grpc.aio.StreamStreamCall)
    cleanup.add(call.cancel)
    await call.write(streaming_request([LARGE_RESPONSE], LARGE_REQUEST))
    await call.done_writing()
    assert [len(r.payload.body) async for r in call] == [LARGE_RESPONSE]
    assert ECHO_INITIAL in pairs(await call.initial_metadata()), "full duplex initial metadata"
    assert ECHO_TRAILING in pairs(await call.trailing_metadata()), "full duplex trailing"


async def _status_cases(channel: grpc.aio.Channel, cleanup: Cleanup, message: str,
                        duplex: bool) -> None:
    stub = stub_of(channel)
    unary = stub.UnaryCall(messages_pb2.SimpleRequest(response_status=echo_status(message)),
                           timeout=RPC_TIMEOUT)
    kind(unary, grpc.aio.UnaryUnaryCall)
    cleanup.add(unary.cancel)
    error = await expect_aio_error(unary)
    assert error.code() is grpc.StatusCode.UNKNOWN
    assert error.details() == message
    assert await unary.code() is grpc.StatusCode.UNKNOWN
    assert await unary.details() == message
    if duplex:
        call = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
        kind(call, grpc.aio.StreamStreamCall)
        cleanup.add(call.cancel)
        await call.write(messages_pb2.StreamingOutputCallRequest(
            response_status=echo_status(message)))
        await call.done_writing()
        error = await expect_aio_error(call.read())
        assert error.code() is grpc.StatusCode.UNKNOWN
        assert error.details() == message
        assert await call.details() == message


async def status_code_and_message(channel: grpc.aio.Channel, cleanup: Cleanup) -> None:
    await _status_cases(channel, cleanup, STATUS_MESSAGE, duplex=True)


async def special_status_message(channel: grpc.aio.Channel, cleanup: Cleanup) -> None:
    await _status_cases(channel, cleanup, SPECIAL_MESSAGE, duplex=False)


async def unimplemented_method(channel: grpc.aio.Channel, cleanup: Cleanup) -> None:
    call = stub_of(channel).UnimplementedCall(empty_pb2.Empty(), timeout=RPC_TIMEOUT)
    kind(call, grpc.aio.UnaryUnaryCall)
    error = await expect_aio_error(call)
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED


async def unimplemented_service(channel: grpc.aio.Channel, cleanup: Cleanup) -> None:
    stub = test_pb2_grpc.UnimplementedServiceStub(channel)
    call = stub.UnimplementedCall(empty_pb2.Empty(), timeout=RPC_TIMEOUT)
    kind(call, grpc.aio.UnaryUnaryCall)
    error = await expect_aio_error(call)
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED


AIO_CASES: dict[str, AioCase] = {f.__name__: f for f in (
    empty_unary, large_unary, client_streaming, server_streaming, ping_pong, empty_stream,
    cancel_after_begin, cancel_after_first_response, timeout_on_sleeping_server,
    custom_metadata, status_code_and_message, special_status_message, unimplemented_method,
    unimplemented_service)}
