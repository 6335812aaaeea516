"""etcd: target parsing, key ranges, Go naming values and the naming table (no etcd)."""

from __future__ import annotations

import json
import logging

import pytest

from lbclient import InvalidTargetError, ServiceConfigError
from lbclient.resolver import parse_target, validate_target
from lbclient.resolver._etcd_client import parse_members, prefix_range_end
from lbclient.resolver._etcd_naming import (
    NamingTable,
    encode_update,
    endpoint_key,
    parse_update,
)
from lbclient.resolver.etcd import EtcdResolver, parse_etcd_target


class _Null:
    def on_resolved(self, state: object) -> None: ...

    def on_resolver_error(self, error: Exception) -> None: ...


@pytest.mark.parametrize(("raw", "members", "prefix"), [
    ("etcd://127.0.0.1:2379/svc", ["127.0.0.1:2379"], "svc"),
    ("etcd://a:1,b:2,c/services/orders", ["a:1", "b:2", "c:2379"], "services/orders"),
    ("etcd://[::1]:2379,[::1]:2379/x", ["[::1]:2379"], "x"),
    ("etcd://h//leading", ["h:2379"], "/leading"),
])
def test_targets(raw: str, members: list[str], prefix: str) -> None:
    target = parse_target(raw)
    validate_target(target)
    assert parse_etcd_target(target) == (members, prefix)


@pytest.mark.parametrize(("raw", "words"), [
    ("etcd:///svc", "members are missing"),
    ("etcd://h:2379/", "prefix after the members is empty"),
    ("etcd://h:2379,,i/svc", "empty etcd member"),
    ("etcd://h:x/svc", "port"),
    ("etcd://h:2379", "missing '/'"),
])
def test_bad_targets(raw: str, words: str) -> None:
    with pytest.raises(InvalidTargetError, match=words):
        validate_target(parse_target(raw))


def test_members_from_a_list() -> None:
    assert parse_members(["a", "b:1"], "x") == ["a:2379", "b:1"]
    with pytest.raises(InvalidTargetError):
        parse_members([], "x")


@pytest.mark.parametrize(("prefix", "end"), [
    (b"svc/", b"svc0"), (b"a", b"b"), (b"a\xff", b"b"), (b"\xff\xff", b"\0"), (b"", b"\0")])
def test_prefix_range_end(prefix: bytes, end: bytes) -> None:
    assert prefix_range_end(prefix) == end


def test_encode_matches_go_json_marshal() -> None:
    # Go: json.Marshal(internal.Update{Op: Add, Addr: "1.2.3.4:80", Metadata: nil})
    assert encode_update("1.2.3.4:80") == b'{"Op":0,"Addr":"1.2.3.4:80","Metadata":null}'
    assert json.loads(encode_update("a:1", {"weight": 2})) == {
        "Op": 0, "Addr": "a:1", "Metadata": {"weight": 2}}
    assert endpoint_key("services/orders", "a:1") == "services/orders/a:1"


@pytest.mark.parametrize(("value", "address", "weight", "attributes"), [
    ('{"Op":0,"Addr":"10.0.0.1:80","Metadata":null}', "10.0.0.1:80", 1, {}),
    ('{"Addr":"10.0.0.1:80"}', "10.0.0.1:80", 1, {}),
    ('{"Op":1,"Addr":"10.0.0.1:80"}', "10.0.0.1:80", 1, {}),      # put = add (as in Go)
    ('{"Op":0,"Addr":"h:80","Metadata":{"weight":3,"zone":"a"}}', "h:80", 3,
     {"weight": 3, "zone": "a"}),
    ('{"Op":0,"Addr":"h:80","Metadata":{"weight":0}}', "h:80", 1, {"weight": 0}),
    ('{"Op":0,"Addr":"h:80","Metadata":{"weight":"2"}}', "h:80", 1, {"weight": "2"}),
    ('{"Op":0,"Addr":"h:80","Metadata":"blue"}', "h:80", 1, {"metadata": "blue"}),
    ('{"Op":0,"Addr":"[::1]:80"}', "[::1]:80", 1, {}),
])
def test_parse_update(value: str, address: str, weight: int,
                      attributes: dict[str, object]) -> None:
    endpoint = parse_update("svc/x", value.encode())
    assert (endpoint.address, endpoint.weight, dict(endpoint.attributes)) == (
        address, weight, attributes)


@pytest.mark.parametrize(("value", "words"), [
    (b"10.0.0.1:80", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'{"Op":0}', "Addr"),
    (b'{"Addr":""}', "Addr"),
    (b'{"Addr":"nohost"}', "no port"),
    (b"\xff", "not JSON"),
])
def test_unusable_values(value: bytes, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_update("svc/x", value)


def test_naming_table(caplog: pytest.LogCaptureFixture) -> None:
    table = NamingTable()
    table.reset([(b"svc/b", encode_update("10.0.0.2:1")),
                 (b"svc/a", encode_update("10.0.0.1:1", {"weight": 2}))])
    assert [e.address for e in table.endpoints()] == ["10.0.0.1:1", "10.0.0.2:1"]
    table.put(b"svc/c", encode_update("10.0.0.1:1"))          # same address, later key
    assert [e.weight for e in table.endpoints()] == [2, 1]
    with caplog.at_level(logging.WARNING):
        table.put(b"svc/a", b"garbage")                        # keeps what svc/a had
    assert "keeping its previous endpoint" in caplog.text
    assert table.endpoints()[0].weight == 2
    table.delete(b"svc/a")
    assert [(e.address, e.weight) for e in table.endpoints()] == [   # key order: b, c
        ("10.0.0.2:1", 1), ("10.0.0.1:1", 1)]
    table.delete(b"svc/zzz")
    table.reset([])
    assert table.endpoints() == () and len(table) == 0


@pytest.mark.parametrize(("options", "path"), [
    ({"dial_timeout": 0}, "resolver_options.dial_timeout"),
    ({"backoff_initial": 2, "backoff_max": 1}, "resolver_options.backoff_max"),
    ({"credentials": "tls"}, "resolver_options.credentials"),
    ({"poll_interval": 1}, "resolver_options.poll_interval"),
])
def test_bad_options(options: dict[str, object], path: str) -> None:
    with pytest.raises(ServiceConfigError) as info:
        EtcdResolver(parse_target("etcd://h/svc"), _Null(), options)
    assert info.value.path == path
