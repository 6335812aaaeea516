"""TLS and mTLS with ``lbclient.aio.secure_channel`` (the asyncio channel shares the
authority rule of the sync one: the target's host for ``static:``/``dns:`` targets,
else the user's ``grpc.ssl_target_name_override`` / ``grpc.default_authority``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import grpc
import pytest
from _certs import KeyPair, Pki

import lbclient.aio
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")
OVERRIDE = [("grpc.ssl_target_name_override", "orders.test")]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def pair(pki: Pki) -> KeyPair:
    return pki.server("orders.test", "localhost")


@pytest.fixture(scope="module")
def tls_fleet(pair: KeyPair) -> Iterator[Fleet]:
    with Fleet(3, server_credentials=grpc.ssl_server_credentials([(pair.key, pair.cert)])) as f:
        yield f


async def _spread(ch: lbclient.aio.LoadBalancedChannel, n: int = 30) -> set[str]:
    stub = echo_pb2_grpc.EchoStub(ch)
    await stub.Unary(REQ, timeout=5)
    for _ in range(500):
        if all(e.eligible for e in ch.endpoints()):
            break
        await asyncio.sleep(0.02)
    return {(await stub.Unary(REQ, timeout=5)).address for _ in range(n)}


async def _fails_fast(ch: lbclient.aio.LoadBalancedChannel) -> grpc.aio.AioRpcError:
    t0 = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await echo_pb2_grpc.EchoStub(ch).Unary(REQ, timeout=10)
    assert time.monotonic() - t0 < 5
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value
    return info.value


def test_aio_tls_with_name_override_and_health(pki: Pki, tls_fleet: Fleet) -> None:
    async def body() -> None:
        async with lbclient.aio.secure_channel(
                tls_fleet.target, grpc.ssl_channel_credentials(pki.ca_pem), options=OVERRIDE,
                service_config={"healthCheckConfig": {"serviceName": ""}}) as ch:
            assert await _spread(ch) == set(tls_fleet.addresses)
            assert {e.health for e in ch.endpoints()} == {"healthy"}
    run(body())


def test_aio_static_target_verifies_against_its_host(pki: Pki, tls_fleet: Fleet) -> None:
    target = "static:///" + ",".join(f"localhost:{b.port}" for b in tls_fleet)

    async def body() -> None:
        async with lbclient.aio.secure_channel(
                target, grpc.ssl_channel_credentials(pki.ca_pem)) as ch:
            assert await _spread(ch) == set(tls_fleet.addresses)
    run(body())


def test_aio_bad_certificates_and_plaintext_fail_fast(pki: Pki, tls_fleet: Fleet,
                                                      fleet: Fleet) -> None:
    calls0 = sum(b.calls for b in tls_fleet)

    async def body() -> None:
        cases = [  # wrong CA; no name to verify; a plaintext backend
            (tls_fleet.target, grpc.ssl_channel_credentials(Pki("other").ca_pem), OVERRIDE),
            (tls_fleet.target, grpc.ssl_channel_credentials(pki.ca_pem), []),
            (fleet.target, grpc.ssl_channel_credentials(pki.ca_pem), OVERRIDE),
        ]
        for target, creds, options in cases:
            async with lbclient.aio.secure_channel(target, creds, options=options) as ch:
                await _fails_fast(ch)
    run(body())
    assert sum(b.calls for b in tls_fleet) == calls0 and sum(b.calls for b in fleet) == 0


def test_aio_mtls(pki: Pki, pair: KeyPair) -> None:
    creds = grpc.ssl_server_credentials([(pair.key, pair.cert)], root_certificates=pki.ca_pem,
                                        require_client_auth=True)
    client = pki.client()

    async def body(fleet: Fleet) -> None:
        good = grpc.ssl_channel_credentials(pki.ca_pem, client.key, client.cert)
        async with lbclient.aio.secure_channel(fleet.target, good, options=OVERRIDE) as ch:
            assert await _spread(ch, 12) == set(fleet.addresses)
        anonymous = grpc.ssl_channel_credentials(pki.ca_pem)
        async with lbclient.aio.secure_channel(fleet.target, anonymous, options=OVERRIDE) as ch:
            await _fails_fast(ch)

    with Fleet(3, server_credentials=creds) as fleet:
        run(body(fleet))
