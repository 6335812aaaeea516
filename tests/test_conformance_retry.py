"""The conformance suite's retry and hedging columns, made to retry: ping-pong (the interop
case, true lockstep: each request is sent only after the previous reply was read) against
TestService servers whose FullDuplexCall fails the first attempt(s) with UNAVAILABLE
right after reading request 1. The retried attempt must replay request 1 from the replay
buffer and then keep reading the caller's requests as they come, in lockstep, so the
call completes with the right replies - under a plain retryPolicy and under the suite's
production config (outlier detection + health checks + retryPolicy + throttling), sync
and asyncio. Streams are not hedged (docs/retries.md; grpc core has no hedging at all):
under a hedgingPolicy a ping-pong is one attempt, which works, and a failure of that
attempt ends the call. Every case is bounded: a hang fails it within seconds.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest
from _interop_cases import PING_PONG, assert_zeros, streaming_request
from _interop_support import (
    CASE_TIMEOUT,
    HEDGING,
    PRODUCTION,
    Cleanup,
    RequestQueue,
    run_sync_case,
)
from helpers import wait_until

import lbclient
import lbclient.aio
from lbclient.testing.interop import SERVICE, add_health, messages_pb2, test_pb2_grpc

pytestmark = pytest.mark.timeout(120)

RETRY: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": SERVICE}],
        "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}],
}
CONFIGS = {"retry": RETRY, "production": PRODUCTION}
TIMEOUT = 10.0              # each call's deadline (below CASE_TIMEOUT: a hang shows as one)
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class Script:
    """Shared by the servers: how many FullDuplexCall attempts still fail, and what each
    attempt saw (server, request 1's payload size, its lbclient-previous-rpc-attempts)."""

    def __init__(self, failures: int) -> None:
        self._lock = threading.Lock()
        self.failures = failures
        self.attempts: list[tuple[str, int, str | None]] = []

    def attempt(self, server: str, first: messages_pb2.StreamingOutputCallRequest,
                metadata: Any) -> bool:
        """Record an attempt; True if it is to fail."""
        previous = dict(metadata).get("lbclient-previous-rpc-attempts")
        with self._lock:
            self.attempts.append((server, len(first.payload.body), previous))
            if self.failures > 0:
                self.failures -= 1
                return True
            return False


class FlakyDuplex(test_pb2_grpc.TestServiceServicer):
    """FullDuplexCall: reads request 1, then fails (UNAVAILABLE, no reply sent) while the
    script says so; otherwise replies to each request as it arrives (the interop rule)."""

    def __init__(self, name: str, script: Script) -> None:
        self._name = name
        self._script = script

    def FullDuplexCall(self, request_iterator: Iterator[messages_pb2.StreamingOutputCallRequest],
                       context: grpc.ServicerContext
                       ) -> Iterator[messages_pb2.StreamingOutputCallResponse]:
        try:
            first = next(request_iterator, None)
            if first is None:
                return
            if self._script.attempt(self._name, first, context.invocation_metadata()):
                context.abort(UNAVAILABLE, "flaky: this attempt fails after request 1")
            yield _reply(first)
            for request in request_iterator:
                yield _reply(request)
        except grpc.RpcError:
            return


def _reply(request: messages_pb2.StreamingOutputCallRequest
           ) -> messages_pb2.StreamingOutputCallResponse:
    (size,) = [p.size for p in request.response_parameters]
    return messages_pb2.StreamingOutputCallResponse(
        payload=messages_pb2.Payload(body=bytes(size)))


class Servers:
    """Three FlakyDuplex servers (with grpc.health.v1) on 127.0.0.1, one Script."""

    def __init__(self, failures: int) -> None:
        self.script = Script(failures)
        self._servers: list[grpc.Server] = []
        self.addresses: list[str] = []
        for _ in range(3):
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
            port = server.add_insecure_port("127.0.0.1:0")
            address = f"127.0.0.1:{port}"
            test_pb2_grpc.add_TestServiceServicer_to_server(FlakyDuplex(address, self.script),
                                                            server)
            add_health(server)
            server.start()
            self._servers.append(server)
            self.addresses.append(address)

    @property
    def target(self) -> str:
        return "ipv4:" + ",".join(self.addresses)

    def stop(self) -> None:
        for server in self._servers:
            server.stop(None).wait(5)


@pytest.fixture
def servers_factory() -> Iterator[Any]:
    made: list[Servers] = []

    def make(failures: int) -> Servers:
        made.append(Servers(failures))
        return made[-1]

    yield make
    for servers in made:
        servers.stop()


def _check_attempts(servers: Servers, attempts: int) -> None:
    """``attempts`` attempts, each given request 1 (replayed), numbered as retries."""
    seen = servers.script.attempts
    assert len(seen) == attempts, seen
    first_size = PING_PONG[0][1]
    assert [size for _, size, _ in seen] == [first_size] * attempts, seen
    assert [previous for _, _, previous in seen] == \
        [None, *(str(i) for i in range(1, attempts))], seen


# ------------------------------------------------------------------ sync
def _sync_ping_pong(channel: grpc.Channel, cleanup: Cleanup) -> grpc.StatusCode:
    """The interop ping-pong in lockstep; the call's final code."""
    requests: RequestQueue[messages_pb2.StreamingOutputCallRequest] = RequestQueue()
    cleanup.add(requests.close)
    call = test_pb2_grpc.TestServiceStub(channel).FullDuplexCall(requests, timeout=TIMEOUT)
    cleanup.add(call.cancel)
    for response_size, request_size in PING_PONG:
        requests.put(streaming_request([response_size], request_size))
        try:
            reply = next(call)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
        assert_zeros(reply.payload.body, response_size)
    requests.finish()
    assert next(call, None) is None, "a reply after the last request"
    return call.code()  # type: ignore[no-any-return]


def _usable(channel: Any) -> bool:
    """Every endpoint READY and, with health checks, healthy (so no attempt of the call
    fails at the pick)."""
    infos = channel.endpoints()
    return len(infos) == 3 and all(e.connectivity == "READY" and
                                   e.health in ("unchecked", "healthy") for e in infos)


def _sync_channel(target: str, config: dict[str, Any]) -> grpc.Channel:
    channel = lbclient.insecure_channel(target, service_config=config)
    wait_until(lambda: _usable(channel), 10, message="3 usable endpoints")
    return channel


@pytest.mark.parametrize("failures", [1, 2])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_sync_ping_pong_is_replayed_in_lockstep(config: str, failures: int,
                                                servers_factory: Any) -> None:
    servers = servers_factory(failures)
    channel = _sync_channel(servers.target, CONFIGS[config])
    try:
        codes: list[grpc.StatusCode] = []
        run_sync_case(f"ping_pong-{config}-{failures}",
                      lambda cleanup: codes.append(_sync_ping_pong(channel, cleanup)))
        assert codes == [grpc.StatusCode.OK]
        _check_attempts(servers, failures + 1)
    finally:
        channel.close()


@pytest.mark.parametrize("failures", [0, 1])
def test_sync_ping_pong_under_hedging_is_one_attempt(failures: int,
                                                     servers_factory: Any) -> None:
    servers = servers_factory(failures)
    channel = _sync_channel(servers.target, HEDGING)
    try:
        codes: list[grpc.StatusCode] = []
        run_sync_case(f"ping_pong-hedging-{failures}",
                      lambda cleanup: codes.append(_sync_ping_pong(channel, cleanup)))
        assert codes == [UNAVAILABLE if failures else grpc.StatusCode.OK]
        _check_attempts(servers, 1)          # never hedged, never retried
    finally:
        channel.close()


# ------------------------------------------------------------------ asyncio
async def _aio_ping_pong(channel: grpc.aio.Channel) -> grpc.StatusCode:
    call = test_pb2_grpc.TestServiceStub(channel).FullDuplexCall(timeout=TIMEOUT)
    assert isinstance(call, grpc.aio.StreamStreamCall)
    try:
        for response_size, request_size in PING_PONG:
            await call.write(streaming_request([response_size], request_size))
            reply = await call.read()
            if reply is grpc.aio.EOF:
                return await call.code()
            assert isinstance(reply, messages_pb2.StreamingOutputCallResponse)
            assert_zeros(reply.payload.body, response_size)
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF, "a reply after the last request"
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return await call.code()


def _aio_run(target: str, config: dict[str, Any]) -> grpc.StatusCode:
    async def main() -> grpc.StatusCode:
        async with lbclient.aio.insecure_channel(target, service_config=config) as channel:
            for _ in range(1000):
                if _usable(channel):
                    break
                await asyncio.sleep(0.01)
            assert _usable(channel), channel.endpoints()
            return await asyncio.wait_for(_aio_ping_pong(channel), CASE_TIMEOUT)

    return asyncio.run(main())


@pytest.mark.parametrize("failures", [1, 2])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_aio_ping_pong_is_replayed_in_lockstep(config: str, failures: int,
                                               servers_factory: Any) -> None:
    servers = servers_factory(failures)
    assert _aio_run(servers.target, CONFIGS[config]) is grpc.StatusCode.OK
    _check_attempts(servers, failures + 1)


@pytest.mark.parametrize("failures", [0, 1])
def test_aio_ping_pong_under_hedging_is_one_attempt(failures: int,
                                                    servers_factory: Any) -> None:
    servers = servers_factory(failures)
    assert _aio_run(servers.target, HEDGING) is (UNAVAILABLE if failures
                                                 else grpc.StatusCode.OK)
    _check_attempts(servers, 1)
