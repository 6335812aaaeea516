"""Start-up requirements beyond the interop cases (each compared with grpcio's own channel):

* start-up spread: the first 15 quick unary calls of a fresh round_robin channel reach all
  3 backends (in at least 4 of 5 fresh channels), as grpcio's native round_robin does;
* calls before placement: on a fresh lbclient.aio channel, calls made before any endpoint
  is READY (before the first loop tick) are grpc.aio call objects of the right kind, and
  cancel()/cancelled()/done()/code() and awaiting them behave exactly as on a fresh
  grpc.aio channel; a fresh channel's get_state() is IDLE, as grpc.aio's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from _interop_cases import as_call, streaming_request
from _interop_support import (
    AIO_VARIANTS,
    CLOSE_TIMEOUT,
    RPC_TIMEOUT,
    SYNC_VARIANTS,
    AioLoop,
    Cleanup,
    run_sync_case,
)

from lbclient.testing import InteropFleet
from lbclient.testing.interop import messages_pb2, test_pb2_grpc

TRIALS, CALLS, BACKENDS, NEEDED = 5, 15, 3, 4
KINDS = (grpc.aio.UnaryUnaryCall, grpc.aio.UnaryStreamCall, grpc.aio.StreamUnaryCall,
         grpc.aio.StreamStreamCall)


@pytest.fixture(scope="module")
def fleet() -> Iterator[InteropFleet]:
    with InteropFleet(BACKENDS) as fleet:
        yield fleet


# ------------------------------------------------------------------ start-up spread

def first_calls(make: Callable[[str], grpc.Channel], target: str) -> list[str]:
    """One line per fresh channel: the backends its first CALLS unary calls reached."""
    lines = []
    for _ in range(TRIALS):
        channel = make(target)
        try:
            stub = test_pb2_grpc.TestServiceStub(channel)
            reached: dict[str, int] = {}
            failed: list[str] = []
            for _ in range(CALLS):
                try:
                    reply = stub.UnaryCall(messages_pb2.SimpleRequest(fill_server_id=True),
                                           timeout=RPC_TIMEOUT)
                    reached[reply.server_id] = reached.get(reply.server_id, 0) + 1
                except grpc.RpcError as error:
                    failed.append(str(as_call(error).code()))
            lines.append(f"{len(reached)} backends {sorted(reached.values())}"
                         + (f", failed: {failed}" if failed else ""))
        finally:
            channel.close()
    return lines


def test_startup_spread(fleet: InteropFleet) -> None:
    results: dict[str, list[str]] = {}

    def body(cleanup: Cleanup) -> None:
        for variant in ("grpc", "lbclient-rr"):
            results[variant] = first_calls(SYNC_VARIANTS[variant], fleet.target)

    run_sync_case("startup_spread", body, timeout=60)
    full = {v: sum(line.startswith(f"{BACKENDS} backends") for line in lines)
            for v, lines in results.items()}
    report = "; ".join(f"{v}: {full[v]}/{TRIALS} channels reached all {BACKENDS} "
                       f"({' | '.join(lines)})" for v, lines in results.items())
    print(f"\nstart-up spread, first {CALLS} calls of {TRIALS} fresh channels: {report}")
    assert full["grpc"] >= NEEDED, f"the grpcio reference itself misses: {report}"
    assert full["lbclient-rr"] >= NEEDED, (
        f"first {CALLS} calls of a fresh channel must reach all {BACKENDS} backends in "
        f">= {NEEDED} of {TRIALS} channels: {report}")


# ------------------------------------------------------------------ calls before placement

async def outcome(awaitable: Any) -> str:
    """What waiting on a call (or its read()) gives: a value, or the exception's name."""
    try:
        value = await awaitable
    except BaseException as error:  # noqa: B036 - CancelledError is the point
        return type(error).__name__
    return "EOF" if value is grpc.aio.EOF else type(value).__name__


async def observe(channel: grpc.aio.Channel) -> dict[str, object]:
    """Everything synchronous happens before the first await (so before any endpoint can be
    READY): the state, one call of each kind, cancel(); then codes and waits."""
    seen: dict[str, object] = {"get_state()": channel.get_state()}
    stub = test_pb2_grpc.TestServiceStub(channel)
    unary_unary = stub.UnaryCall(messages_pb2.SimpleRequest(), timeout=RPC_TIMEOUT)
    unary_stream = stub.StreamingOutputCall(streaming_request([1]), timeout=RPC_TIMEOUT)
    stream_unary = stub.StreamingInputCall(timeout=RPC_TIMEOUT)
    stream_stream = stub.FullDuplexCall(timeout=RPC_TIMEOUT)
    calls: dict[str, grpc.aio.Call] = {"unary_unary": unary_unary, "unary_stream": unary_stream,
                                       "stream_unary": stream_unary,
                                       "stream_stream": stream_stream}
    for name, call in calls.items():
        seen[f"{name} kind"] = ([k.__name__ for k in KINDS if isinstance(call, k)]
                                or f"none: a {type(call).__module__}.{type(call).__qualname__}")
        seen[f"{name} cancel()"] = call.cancel()
        seen[f"{name} cancelled()"] = call.cancelled()
        seen[f"{name} done()"] = call.done()
    for name, call in calls.items():
        seen[f"{name} code()"] = await call.code()
    seen["unary_unary await"] = await outcome(unary_unary)
    seen["stream_unary await"] = await outcome(stream_unary)
    seen["unary_stream read()"] = await outcome(unary_stream.read())
    seen["stream_stream read()"] = await outcome(stream_stream.read())
    return seen


EXPECTED: dict[str, object] = {"get_state()": grpc.ChannelConnectivity.IDLE}
for _name, _kind in zip(("unary_unary", "unary_stream", "stream_unary", "stream_stream"),
                        KINDS, strict=True):
    EXPECTED |= {f"{_name} kind": [_kind.__name__], f"{_name} cancel()": True,
                 f"{_name} cancelled()": True, f"{_name} done()": True,
                 f"{_name} code()": grpc.StatusCode.CANCELLED}
EXPECTED |= {"unary_unary await": "CancelledError", "stream_unary await": "CancelledError",
             "unary_stream read()": "CancelledError", "stream_stream read()": "CancelledError"}


def differences(got: dict[str, object], want: dict[str, object]) -> str:
    return "; ".join(f"{k}: {got.get(k)!r}, grpc.aio: {want.get(k)!r}"
                     for k in want if got.get(k) != want.get(k))


def test_aio_calls_before_placement(fleet: InteropFleet) -> None:
    loop = AioLoop()
    seen: dict[str, dict[str, object]] = {}

    async def body(cleanup: Cleanup) -> None:
        for variant in ("grpc.aio", "lbclient.aio-rr"):
            channel = AIO_VARIANTS[variant](fleet.target)
            try:
                seen[variant] = await observe(channel)
            finally:
                await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT)

    try:
        loop.run_case("aio_calls_before_placement", body)
    finally:
        loop.stop()
    assert seen["grpc.aio"] == EXPECTED, (
        f"the grpc.aio reference differs from what this test expects: "
        f"{differences(seen['grpc.aio'], EXPECTED)}")
    assert seen["lbclient.aio-rr"] == seen["grpc.aio"], (
        f"lbclient.aio before placement: {differences(seen['lbclient.aio-rr'], EXPECTED)}")
