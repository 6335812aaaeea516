"""Target parsing: gRPC's syntax, clear errors for malformed targets."""

from __future__ import annotations

import pytest

import lbclient
from lbclient import InvalidTargetError
from lbclient.resolver import parse_target, validate_target
from lbclient.resolver.static import parse_static


@pytest.mark.parametrize(("raw", "scheme", "authority", "endpoint"), [
    ("ipv4:10.0.0.1:50051,10.0.0.2:50051", "ipv4", "", "10.0.0.1:50051,10.0.0.2:50051"),
    ("ipv6:[::1]:50051,[fe80::1]:80", "ipv6", "", "[::1]:50051,[fe80::1]:80"),
    ("static:///a.example:1,b.example:2", "static", "", "a.example:1,b.example:2"),
    ("dns:///orders.svc:50051", "dns", "", "orders.svc:50051"),
    ("dns://8.8.8.8:53/orders.svc:50051", "dns", "8.8.8.8:53", "orders.svc:50051"),
    ("orders.svc:50051", "dns", "", "orders.svc:50051"),
    ("localhost:50051", "dns", "", "localhost:50051"),
    ("orders", "dns", "", "orders"),
])
def test_parse_target(raw: str, scheme: str, authority: str, endpoint: str) -> None:
    t = parse_target(raw)
    assert (t.scheme, t.authority, t.endpoint) == (scheme, authority, endpoint)


def test_static_pairs() -> None:
    assert parse_static(parse_target("ipv4:10.0.0.1:1,10.0.0.2:2")) == [
        ("10.0.0.1", 1), ("10.0.0.2", 2)]
    assert parse_static(parse_target("ipv6:[::1]:5")) == [("::1", 5)]


@pytest.mark.parametrize(("raw", "words"), [
    ("", "non-empty"),
    ("ipv4:", "empty address"),
    ("ipv4:10.0.0.1:1,,10.0.0.2:2", "empty address"),
    ("ipv4:10.0.0.1", "has no port"),
    ("ipv4:10.0.0.1:http", "port 'http'"),
    ("ipv4:10.0.0.1:70000", "port '70000'"),
    ("ipv4:10.0.0.256:80", "not an IPv4 address"),
    ("ipv4:[::1]:80", "not an IPv4 address"),
    ("ipv6:10.0.0.1:80", "not an IPv6 address"),
    ("ipv6:::1:80", "ambiguous"),
    ("ipv6:[::1:80", "without ']'"),
    ("static://x", "missing '/'"),
    ("static:///:80", "has no host"),
])
def test_bad_targets(raw: str, words: str) -> None:
    with pytest.raises(InvalidTargetError) as info:
        validate_target(parse_target(raw))
    assert words in str(info.value)
    assert isinstance(info.value, ValueError)


def test_channel_raises_for_bad_target() -> None:
    with pytest.raises(InvalidTargetError, match="not an IPv4 address"):
        lbclient.insecure_channel("ipv4:999.1.1.1:80")


def test_unresolvable_static_host_fails_calls_with_the_reason() -> None:
    import grpc

    from lbclient.testing import echo_pb2, echo_pb2_grpc

    with lbclient.insecure_channel("static:///no-such-host.invalid:80") as ch:
        with pytest.raises(grpc.RpcError) as info:
            echo_pb2_grpc.EchoStub(ch).Unary(echo_pb2.EchoRequest(), timeout=2)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "no-such-host.invalid" in info.value.details()
