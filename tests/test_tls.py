"""TLS and mTLS on every endpoint connection (sync channel), with certificates made here.

The fake backends serve TLS with a certificate for the *logical* name ``orders.test``
(no IP SAN), while lbclient connects to each of them by IP: every connection must verify
the certificate against the logical name (``grpc.ssl_target_name_override`` /
``grpc.default_authority``, or the target's own host for ``dns:``/``static:`` targets),
health probes must run on the same secure connection, a bad certificate must fail fast
with UNAVAILABLE and grpc's reason, and nothing ever falls back to plaintext.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Iterator

import grpc
import pytest
from _certs import KeyPair, Pki
from helpers import code_of, wait_until

import lbclient
from lbclient._core.transport import logical_authority, with_authority
from lbclient.resolver import parse_target
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")
NAME = "orders.test"
OVERRIDE = [("grpc.ssl_target_name_override", NAME)]
HEALTH = {"healthCheckConfig": {"serviceName": ""}}


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def server_pair(pki: Pki) -> KeyPair:
    return pki.server(NAME, "localhost")


@pytest.fixture(scope="module")
def tls_fleet(server_pair: KeyPair) -> Iterator[Fleet]:
    creds = grpc.ssl_server_credentials([(server_pair.key, server_pair.cert)])
    with Fleet(3, server_credentials=creds) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def mtls_fleet(pki: Pki, server_pair: KeyPair) -> Iterator[Fleet]:
    creds = grpc.ssl_server_credentials([(server_pair.key, server_pair.cert)],
                                        root_certificates=pki.ca_pem,
                                        require_client_auth=True)
    with Fleet(3, server_credentials=creds) as fleet:
        yield fleet


def _spread(channel: lbclient.LoadBalancedChannel, n: int = 30) -> set[str]:
    """Addresses that served ``n`` calls, once every endpoint is fit (round_robin)."""
    stub = echo_pb2_grpc.EchoStub(channel)
    stub.Unary(REQ, timeout=5)
    wait_until(lambda: all(e.eligible for e in channel.endpoints()), timeout=10,
               message="every endpoint eligible")
    return {stub.Unary(REQ, timeout=5).address for _ in range(n)}


def _fails_fast(channel: grpc.Channel) -> grpc.RpcError:
    """The call fails UNAVAILABLE well before its 10 s deadline; returns the error."""
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        echo_pb2_grpc.EchoStub(channel).Unary(REQ, timeout=10)
    assert time.monotonic() - t0 < 5, "a TLS failure must not wait for the deadline"
    assert code_of(info.value) is grpc.StatusCode.UNAVAILABLE, info.value
    return info.value


# --------------------------------------------------------------------------- the authority


@pytest.mark.parametrize(("target", "authority"), [
    ("dns:///orders.test:50051", "orders.test:50051"),
    ("orders.test:50051", "orders.test:50051"),
    ("dns://10.0.0.53:53/orders.test:443", "orders.test:443"),
    ("dns:///orders.test", "orders.test"),
    ("static:///orders.test:1,orders.test:2", "orders.test:1"),
    ("static:///a.test:1,b.test:1", None),          # several names: the user says which
    ("ipv4:127.0.0.1:1,127.0.0.1:2", None),
    ("ipv6:[::1]:1", None),
    ("file:///tmp/endpoints.json", None),
    ("etcd://127.0.0.1:2379/services/orders", None),
])
def test_logical_authority_of_each_target_kind(target: str, authority: str | None) -> None:
    assert logical_authority(parse_target(target)) == authority


def test_the_users_authority_or_name_override_wins() -> None:
    target = parse_target("dns:///orders.test:50051")
    assert with_authority([("a", 1)], target) == [
        ("a", 1), ("grpc.default_authority", "orders.test:50051")]
    for key in ("grpc.default_authority", "grpc.ssl_target_name_override"):
        assert with_authority([(key, "mine")], target) == [(key, "mine")]
    assert with_authority([], parse_target("ipv4:127.0.0.1:1")) == []


# --------------------------------------------------------------------------- TLS


def test_ip_endpoints_verify_the_name_override_and_probe_health_over_tls(
        pki: Pki, tls_fleet: Fleet) -> None:
    creds = grpc.ssl_channel_credentials(pki.ca_pem)
    health0 = [b.health_calls for b in tls_fleet]
    with lbclient.secure_channel(tls_fleet.target, creds, service_config=HEALTH,
                                 options=OVERRIDE) as ch:
        assert _spread(ch) == set(tls_fleet.addresses)
        # the probes ran on the TLS connections: plaintext ones could not reach a server
        assert {e.health for e in ch.endpoints()} == {"healthy"}
    assert all(b.health_calls > h for b, h in zip(tls_fleet, health0, strict=True))


def test_static_target_verifies_every_endpoint_against_its_host(
        pki: Pki, tls_fleet: Fleet) -> None:
    """``static:///localhost:p1,...`` resolves to 127.0.0.1 endpoints; the certificate
    has no IP SAN, so only the target's host ("localhost") can verify it."""
    target = "static:///" + ",".join(f"localhost:{b.port}" for b in tls_fleet)
    with lbclient.secure_channel(target, grpc.ssl_channel_credentials(pki.ca_pem)) as ch:
        assert _spread(ch) == set(tls_fleet.addresses)
        assert {e.address.split(":")[0] for e in ch.endpoints()} == {"127.0.0.1"}


def test_file_target_uses_the_users_default_authority(
        pki: Pki, tls_fleet: Fleet, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps({"endpoints": [{"address": a} for a in tls_fleet.addresses]}))
    with lbclient.secure_channel(f"file://{path}", grpc.ssl_channel_credentials(pki.ca_pem),
                                 options=[("grpc.default_authority", NAME)]) as ch:
        assert _spread(ch) == set(tls_fleet.addresses)


def test_an_ip_endpoint_without_the_logical_name_fails_hostname_verification(
        pki: Pki, tls_fleet: Fleet) -> None:
    calls0 = sum(b.calls for b in tls_fleet)
    with lbclient.secure_channel(tls_fleet.target, grpc.ssl_channel_credentials(pki.ca_pem),
                                 service_config=HEALTH) as ch:
        error = _fails_fast(ch)
        assert "Hostname Verification" in (error.details() or ""), error.details()
    assert sum(b.calls for b in tls_fleet) == calls0


def test_a_wrong_ca_fails_unavailable_with_grpcs_reason(tls_fleet: Fleet) -> None:
    wrong = Pki("an unrelated CA")
    with lbclient.secure_channel(tls_fleet.target, grpc.ssl_channel_credentials(wrong.ca_pem),
                                 options=OVERRIDE) as ch:
        error = _fails_fast(ch)
        details = error.details() or ""
        assert details.startswith("no ready endpoints: 3 failed"), details
        assert "CERTIFICATE_VERIFY_FAILED" in details, details
        assert all(e.connectivity == "TRANSIENT_FAILURE" for e in ch.endpoints())


def test_a_wrong_ca_with_wait_for_ready_ends_at_the_deadline(tls_fleet: Fleet) -> None:
    wrong = Pki("an unrelated CA")
    with lbclient.secure_channel(tls_fleet.target, grpc.ssl_channel_credentials(wrong.ca_pem),
                                 options=OVERRIDE) as ch:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            echo_pb2_grpc.EchoStub(ch).Unary(REQ, timeout=0.5, wait_for_ready=True)
        assert code_of(info.value) is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 4


def test_never_falls_back_to_plaintext(pki: Pki, fleet: Fleet, tls_fleet: Fleet) -> None:
    calls0 = sum(b.calls for b in tls_fleet)
    # a secure channel to plaintext backends, and a plaintext channel to TLS backends
    with lbclient.secure_channel(fleet.target, grpc.ssl_channel_credentials(pki.ca_pem),
                                 options=OVERRIDE) as ch:
        _fails_fast(ch)
    with lbclient.insecure_channel(tls_fleet.target) as ch:
        _fails_fast(ch)
    assert sum(b.calls for b in fleet) == 0 and sum(b.calls for b in tls_fleet) == calls0


# --------------------------------------------------------------------------- mTLS


def test_mtls_with_a_client_certificate(pki: Pki, mtls_fleet: Fleet) -> None:
    client = pki.client("orders-client")
    creds = grpc.ssl_channel_credentials(pki.ca_pem, client.key, client.cert)
    with lbclient.secure_channel(mtls_fleet.target, creds, service_config=HEALTH,
                                 options=OVERRIDE) as ch:
        assert _spread(ch) == set(mtls_fleet.addresses)
        assert {e.health for e in ch.endpoints()} == {"healthy"}


def test_mtls_without_or_with_a_foreign_client_certificate_fails(
        pki: Pki, mtls_fleet: Fleet) -> None:
    stranger = Pki("another CA").client("stranger")
    calls0 = sum(b.calls for b in mtls_fleet)
    for creds in (grpc.ssl_channel_credentials(pki.ca_pem),
                  grpc.ssl_channel_credentials(pki.ca_pem, stranger.key, stranger.cert)):
        with lbclient.secure_channel(mtls_fleet.target, creds, options=OVERRIDE) as ch:
            _fails_fast(ch)
    assert sum(b.calls for b in mtls_fleet) == calls0


# --------------------------------------------------------------------------- call credentials


class _Token(grpc.AuthMetadataPlugin):
    """Adds ``x-echo-token`` (the fake backends echo ``x-echo-*`` into the trailers)."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __call__(self, context: grpc.AuthMetadataContext,
                 callback: grpc.AuthMetadataPluginCallback) -> None:
        callback((("x-echo-token", self.value),), None)


def test_composite_call_credentials_reach_every_endpoint(pki: Pki, tls_fleet: Fleet) -> None:
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(pki.ca_pem),
        grpc.metadata_call_credentials(_Token("channel")))
    with lbclient.secure_channel(tls_fleet.target, creds, options=OVERRIDE) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        seen = set()
        for _ in range(12):
            reply, call = stub.Unary.with_call(REQ, timeout=5)
            assert ("x-echo-token", "channel") in call.trailing_metadata()
            seen.add(reply.address)
        assert seen == set(tls_fleet.addresses)
        per_call = grpc.metadata_call_credentials(_Token("call"))
        _, call = stub.Unary.with_call(REQ, timeout=5, credentials=per_call)
        tokens = [v for k, v in call.trailing_metadata() if k == "x-echo-token"]
        assert "call" in tokens


def test_connections_recover_after_a_tls_backend_restarts(pki: Pki, tls_fleet: Fleet) -> None:
    with lbclient.secure_channel(tls_fleet.target, grpc.ssl_channel_credentials(pki.ca_pem),
                                 options=[*OVERRIDE, ("grpc.initial_reconnect_backoff_ms", 100),
                                          ("grpc.max_reconnect_backoff_ms", 200)]) as ch:
        assert _spread(ch) == set(tls_fleet.addresses)
        tls_fleet[0].restart(grace=0.5)
        wait_until(lambda: _spread(ch, 9) == set(tls_fleet.addresses), timeout=15,
                   interval=0.1, message="the restarted TLS backend to serve again")
