"""lbclient's channels as drop-ins for grpc's: grpc's signatures and options (positional
options and compression, ``grpc.service_config``, ``grpc.service_config_disable_resolution``),
channel compression on every endpoint connection, and ``future()``/response streams that
return at once even while no endpoint can take the call."""

from __future__ import annotations

import asyncio
import json
import pathlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from helpers import wait_ready, wait_until

import lbclient
import lbclient.aio
from lbclient import ServiceConfigError
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="dropin")
PICK_FIRST = json.dumps({"loadBalancingConfig": [{"pick_first": {}}]})
RR = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


# ------------------------------------------------------------------ signatures and options
def test_grpc_positional_arguments_work(fleet: Fleet) -> None:
    options = [("grpc.max_receive_message_length", 8 * 1024 * 1024)]
    with lbclient.insecure_channel(fleet.target, options, grpc.Compression.Gzip) as ch:
        assert echo_pb2_grpc.EchoStub(ch).Unary(REQ, timeout=5, wait_for_ready=True).message


def test_a_service_config_where_grpc_puts_options_is_a_clear_type_error() -> None:
    for wrong in ({"loadBalancingConfig": [{"round_robin": {}}]}, RR, [("no", "pairs", 3)]):
        with pytest.raises(TypeError, match="service_config="):
            lbclient.insecure_channel("ipv4:127.0.0.1:1", wrong)  # type: ignore[arg-type]


def test_the_grpc_service_config_option_is_the_service_config(fleet: Fleet) -> None:
    with lbclient.insecure_channel(fleet.target,
                                   options=[("grpc.service_config", PICK_FIRST)]) as ch:
        assert ch.service_config is not None and ch.service_config.lb.name == "pick_first"
        wait_ready(ch, 3)      # pick_first takes the first READY endpoint in list order
        stub = echo_pb2_grpc.EchoStub(ch)
        assert len({stub.Unary(REQ, timeout=5).address for _ in range(9)}) == 1
    # given both ways with the same content: fine; different content: an error
    with lbclient.insecure_channel(fleet.target, options=[("grpc.service_config", RR)],
                                   service_config={"loadBalancingConfig": [
                                       {"round_robin": {}}]}) as ch:
        assert ch.service_config is not None and ch.service_config.lb.name == "round_robin"
    with pytest.raises(ServiceConfigError, match="given twice with different content"):
        lbclient.insecure_channel(fleet.target, options=[("grpc.service_config", RR)],
                                  service_config=PICK_FIRST)


def test_a_bad_service_config_option_names_the_json_path() -> None:
    bad = json.dumps({"methodConfig": [{"retryPolicy": {"maxAttempts": 1}}]})
    with pytest.raises(ServiceConfigError, match=r"methodConfig\[0\]\.retryPolicy"):
        lbclient.insecure_channel("ipv4:127.0.0.1:1", options=[("grpc.service_config", bad)])


def test_disable_resolution_ignores_the_resolvers_service_config(
        tmp_path: pathlib.Path, fleet: Fleet) -> None:
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps({"endpoints": [{"address": a} for a in fleet.addresses],
                                "serviceConfig": json.loads(PICK_FIRST)}))
    fast = {"poll_interval": 0.05}
    with lbclient.insecure_channel(f"file://{path}", resolver_options=fast) as ch:
        wait_until(lambda: ch.service_config is not None
                   and ch.service_config.lb.name == "pick_first", 5)
    with lbclient.insecure_channel(
            f"file://{path}", options=[("grpc.service_config_disable_resolution", 1)],
            resolver_options=fast) as ch:
        wait_ready(ch, 3)
        assert ch.service_config is not None and ch.service_config.lb.name == "round_robin"


def test_aio_signatures_and_option() -> None:
    async def body(target: str) -> None:
        async with lbclient.aio.insecure_channel(
                target, [("grpc.service_config", PICK_FIRST)], grpc.Compression.Gzip,
                None) as ch:
            assert ch.service_config is not None
            assert ch.service_config.lb.name == "pick_first"
            reply = await echo_pb2_grpc.EchoStub(ch).Unary(REQ, timeout=5, wait_for_ready=True)
            assert reply.message
        with pytest.raises(TypeError, match="service_config="):
            lbclient.aio.insecure_channel(target, RR)  # type: ignore[arg-type]

    with Fleet(2) as fleet:
        asyncio.run(asyncio.wait_for(body(fleet.target), 20))


# ------------------------------------------------------------------ compression on the wire
class CountingProxy:
    """A TCP proxy on 127.0.0.1 counting the bytes a client sends through it."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.sent = 0
        self._lock = threading.Lock()
        self._closed = False
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream, timeout=5)
            server.settimeout(None)
            self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(65536):
                if counted:
                    with self._lock:
                        self.sent += len(data)
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._closed = True
        for s in [self._listener, *self._socks]:
            s.close()


@pytest.fixture
def proxies(fleet: Fleet) -> Iterator[list[CountingProxy]]:
    ps = [CountingProxy(a) for a in fleet.addresses]
    yield ps
    for p in ps:
        p.close()


def test_channel_compression_applies_to_every_endpoint(proxies: list[CountingProxy]) -> None:
    target = "ipv4:" + ",".join(p.address for p in proxies)
    big = echo_pb2.EchoRequest(message="z", payload=bytes(200_000))   # very compressible
    sent: dict[str, list[int]] = {}
    for name, compression in (("none", None), ("gzip", grpc.Compression.Gzip)):
        with lbclient.insecure_channel(target, compression=compression) as ch:
            wait_ready(ch, 3)
            before = [p.sent for p in proxies]
            stub = echo_pb2_grpc.EchoStub(ch)
            for _ in range(6):                 # round robin: two calls per endpoint
                stub.Unary(big, timeout=10)
            sent[name] = [p.sent - b for p, b in zip(proxies, before, strict=True)]
    assert all(n > 2 * 200_000 for n in sent["none"]), sent
    assert all(n < 20_000 for n in sent["gzip"]), sent        # every endpoint compressed


def test_aio_channel_compression_applies_to_every_endpoint(
        proxies: list[CountingProxy]) -> None:
    target = "ipv4:" + ",".join(p.address for p in proxies)
    big = echo_pb2.EchoRequest(message="z", payload=bytes(200_000))   # very compressible
    sent: dict[str, list[int]] = {}

    async def measure(name: str, compression: grpc.Compression | None) -> None:
        async with lbclient.aio.insecure_channel(target, compression=compression) as ch:
            ch.get_state(try_to_connect=True)
            for _ in range(1000):
                if sum(e.connectivity == "READY" for e in ch.endpoints()) == 3:
                    break
                await asyncio.sleep(0.01)
            before = [p.sent for p in proxies]
            stub = echo_pb2_grpc.EchoStub(ch)
            for _ in range(6):                 # round robin: two calls per endpoint
                await stub.Unary(big, timeout=10)
            sent[name] = [p.sent - b for p, b in zip(proxies, before, strict=True)]

    for name, compression in (("none", None), ("gzip", grpc.Compression.Gzip)):
        asyncio.run(asyncio.wait_for(measure(name, compression), 30))
    assert all(n > 2 * 200_000 for n in sent["none"]), sent
    assert all(n < 20_000 for n in sent["gzip"]), sent        # every endpoint compressed


# ------------------------------------------------------------------ never blocking the caller
def test_future_and_streams_return_at_once_while_no_endpoint_can_take_them() -> None:
    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()                                      # nothing listens: never READY
    with lbclient.insecure_channel(f"ipv4:127.0.0.1:{port}") as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        t0 = time.monotonic()
        future = stub.Unary.future(REQ, timeout=1.5, wait_for_ready=True)
        stream = stub.ServerStream(REQ, timeout=1.5, wait_for_ready=True)
        assert time.monotonic() - t0 < 0.2              # neither waited for an endpoint
        assert isinstance(future, grpc.Future) and isinstance(future, grpc.Call)
        assert not future.done()
        with pytest.raises(grpc.RpcError) as info:
            future.result(timeout=5)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 1.5 + 0.5        # ended by its deadline
        with pytest.raises(grpc.RpcError) as info:
            list(stream)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def _unused_port() -> int:
    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()                                      # nothing listens: never READY
    return port


_RETRY = {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
          "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}
_HEDGE = {"maxAttempts": 3, "hedgingDelay": "0.05s", "nonFatalStatusCodes": ["UNAVAILABLE"]}
# method config -> wait_for_ready given by the caller (None: the config's waitForReady)
WAITING_CONFIGS = {
    "waitForReady": ({"waitForReady": True}, None),
    "retryPolicy+waitForReady": ({"waitForReady": True, "retryPolicy": _RETRY}, None),
    "hedgingPolicy+waitForReady": ({"waitForReady": True, "hedgingPolicy": _HEDGE}, None),
    "retryPolicy, wait_for_ready=True": ({"retryPolicy": _RETRY}, True),
    "hedgingPolicy, wait_for_ready=True": ({"hedgingPolicy": _HEDGE}, True),
}


def _waiting_config(method: dict[str, Any]) -> dict[str, Any]:
    return {"methodConfig": [{"name": [{"service": "lbclient.testing.echo.v1.Echo"}],
                              **method}]}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(WAITING_CONFIGS))
def test_future_and_streams_return_at_once_with_a_waiting_method_config(name: str) -> None:
    """waitForReady from the method config (or the caller) with a retry or hedging
    policy: still queued, not waited for on the caller's thread, ended by the deadline."""
    method, wait_for_ready = WAITING_CONFIGS[name]
    config = _waiting_config(method)
    with lbclient.insecure_channel(f"ipv4:127.0.0.1:{_unused_port()}",
                                   service_config=config) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        t0 = time.monotonic()
        future = stub.Unary.future(REQ, timeout=1.5, wait_for_ready=wait_for_ready)
        stream = stub.ServerStream(REQ, timeout=1.5, wait_for_ready=wait_for_ready)
        client = stub.ClientStream.future(iter([REQ, REQ]), timeout=1.5,
                                          wait_for_ready=wait_for_ready)
        assert time.monotonic() - t0 < 0.2              # none waited for an endpoint
        assert not future.done() and not client.done()
        for pending in (future, client):
            with pytest.raises(grpc.RpcError) as info:
                pending.result(timeout=5)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, name
        with pytest.raises(grpc.RpcError) as info:
            list(stream)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, name
        elapsed = time.monotonic() - t0
        assert 1.5 - 0.1 <= elapsed < 1.5 + 0.5, elapsed     # ended by the deadline


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(WAITING_CONFIGS))
def test_aio_calls_with_a_waiting_method_config_end_by_their_deadline(name: str) -> None:
    method, wait_for_ready = WAITING_CONFIGS[name]
    config = _waiting_config(method)

    async def body() -> None:
        async with lbclient.aio.insecure_channel(f"ipv4:127.0.0.1:{_unused_port()}",
                                                 service_config=config) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            unary = stub.Unary(REQ, timeout=1.5, wait_for_ready=wait_for_ready)
            stream = stub.ServerStream(REQ, timeout=1.5, wait_for_ready=wait_for_ready)
            assert isinstance(unary, grpc.aio.UnaryUnaryCall)
            assert isinstance(stream, grpc.aio.UnaryStreamCall)
            await asyncio.sleep(0.3)
            assert not unary.done() and not stream.done()   # queued, not failed
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await unary
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, name
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stream:
                    pass
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, name
            assert 1.5 - 0.1 <= loop.time() - t0 < 1.5 + 0.5

    asyncio.run(asyncio.wait_for(body(), 30))


def test_a_queued_future_is_placed_when_an_endpoint_comes_up(fleet_factory: Any) -> None:
    fleet = fleet_factory(1)
    fleet[0].stop()
    with lbclient.insecure_channel(fleet.target) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        future = stub.Unary.future(REQ, timeout=10, wait_for_ready=True)
        cancelled = stub.Unary.future(REQ, timeout=10, wait_for_ready=True)
        assert cancelled.cancel() and cancelled.cancelled()
        fleet[0].restart()
        assert future.result(timeout=10).address == fleet[0].address
        with pytest.raises(grpc.FutureCancelledError):
            cancelled.result(timeout=1)


def test_queued_calls_end_cancelled_when_the_channel_closes() -> None:
    ch = lbclient.insecure_channel("ipv4:127.0.0.1:1")
    stub = echo_pb2_grpc.EchoStub(ch)
    future = stub.Unary.future(REQ, wait_for_ready=True)            # no deadline at all
    stream = stub.ServerStream(REQ, wait_for_ready=True)
    ch.close()
    with pytest.raises(grpc.RpcError) as info:
        future.result(timeout=5)
    assert info.value.code() is grpc.StatusCode.CANCELLED
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    assert info.value.code() is grpc.StatusCode.CANCELLED
