"""The interop servers themselves (sync and grpc.aio), on features the client cases don't
reach: interval_us, HalfDuplexCall, server_id, INVALID_ARGUMENT for an unknown payload
type, echo metadata on error, health, counters, InteropFleet's target and stop()."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from _interop_cases import (
    ECHO_INITIAL,
    ECHO_TRAILING,
    echo_status,
    expect_rpc_error,
    pairs,
    streaming_request,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lbclient.testing import InteropFleet
from lbclient.testing.interop import SERVICE, empty_pb2, messages_pb2, test_pb2_grpc

TIMEOUT = 10.0


@pytest.fixture(scope="module", params=[False, True], ids=["sync", "aio"])
def fleet(request: pytest.FixtureRequest) -> Iterator[InteropFleet]:
    with InteropFleet(2, aio=request.param) as fleet:
        yield fleet


@pytest.fixture
def channel(fleet: InteropFleet) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fleet.addresses[0]) as channel:
        yield channel


def test_fleet_target_and_counters(fleet: InteropFleet, channel: grpc.Channel) -> None:
    assert fleet.target == "ipv4:" + ",".join(fleet.addresses)
    assert len(fleet) == 2 and all(a.startswith("127.0.0.1:") for a in fleet.addresses)
    fleet.reset_counters()
    reply = test_pb2_grpc.TestServiceStub(channel).UnaryCall(
        messages_pb2.SimpleRequest(fill_server_id=True), timeout=TIMEOUT)
    assert reply.server_id == fleet.addresses[0] and reply.hostname
    assert fleet.calls() == {fleet.addresses[0]: {"UnaryCall": 1}, fleet.addresses[1]: {}}


def test_interval_us_spaces_the_responses(channel: grpc.Channel) -> None:
    request = messages_pb2.StreamingOutputCallRequest(response_parameters=[
        messages_pb2.ResponseParameters(size=1, interval_us=100_000) for _ in range(3)])
    start = time.monotonic()
    replies = list(test_pb2_grpc.TestServiceStub(channel).StreamingOutputCall(
        request, timeout=TIMEOUT))
    assert len(replies) == 3
    assert time.monotonic() - start >= 0.3  # the intervals accumulate


def test_half_duplex_replies_after_half_close(channel: grpc.Channel) -> None:
    requests = [streaming_request([3]), streaming_request([5, 7])]
    replies = test_pb2_grpc.TestServiceStub(channel).HalfDuplexCall(iter(requests),
                                                                     timeout=TIMEOUT)
    assert [len(r.payload.body) for r in replies] == [3, 5, 7]


def test_unknown_payload_type_is_invalid_argument(channel: grpc.Channel) -> None:
    stub = test_pb2_grpc.TestServiceStub(channel)
    error = expect_rpc_error(lambda: stub.UnaryCall(
        messages_pb2.SimpleRequest(response_type=7), timeout=TIMEOUT))  # type: ignore[arg-type]
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_echo_metadata_with_an_echoed_status(channel: grpc.Channel) -> None:
    request = messages_pb2.StreamingOutputCallRequest(response_status=echo_status("bad"))
    call = test_pb2_grpc.TestServiceStub(channel).FullDuplexCall(
        iter([request, streaming_request([1])]), metadata=(ECHO_INITIAL, ECHO_TRAILING),
        timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError):
        list(call)  # the second request is never answered
    assert call.code() is grpc.StatusCode.UNKNOWN and call.details() == "bad"
    assert ECHO_INITIAL in pairs(call.initial_metadata())
    assert ECHO_TRAILING in pairs(call.trailing_metadata())


def test_health_serving(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        # types-grpcio-health-checking's HealthStub declares no methods
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service),  # type: ignore[attr-defined]
                           timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "aio"])
def test_stop_is_idempotent(aio: bool) -> None:
    fleet = InteropFleet(1, aio=aio)
    fleet.stop()
    fleet.stop()
    with grpc.insecure_channel(fleet.addresses[0]) as channel:
        stub = test_pb2_grpc.TestServiceStub(channel)
        error = expect_rpc_error(lambda: stub.EmptyCall(empty_pb2.Empty(), timeout=1))
    assert error.code() is grpc.StatusCode.UNAVAILABLE
