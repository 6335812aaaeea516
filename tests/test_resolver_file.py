"""file: targets: path parsing, the endpoints file format (JSON paths in errors), and the
watched file driving a real channel over real backends."""

from __future__ import annotations

import collections
import json
import logging
import os
import pathlib
import time
from typing import Any

import grpc
import pytest
from _discovery import Recorder
from helpers import code_of, wait_ready, wait_until

import lbclient
from lbclient import InvalidTargetError, ServiceConfigError
from lbclient.resolver import parse_target, validate_target
from lbclient.resolver._file_format import parse_endpoints_json
from lbclient.resolver.file import FileResolver, file_path
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")
FAST = {"poll_interval": 0.05}


def write(path: pathlib.Path, doc: Any, *, atomic: bool = True) -> None:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    if atomic:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        with open(path, "w") as f:
            f.write(text)


def eps(*addresses: str) -> dict[str, Any]:
    return {"endpoints": [{"address": a} for a in addresses]}


@pytest.mark.parametrize(("raw", "want"), [
    ("file:///etc/lb/endpoints.json", "/etc/lb/endpoints.json"),
    ("file://localhost/etc/lb/e.json", "/etc/lb/e.json"),
    ("file:/etc/lb/e.json", "/etc/lb/e.json"),
    ("file:e.json", "e.json"),
])
def test_paths(raw: str, want: str) -> None:
    target = parse_target(raw)
    validate_target(target)
    assert file_path(target) == want


@pytest.mark.parametrize("raw", ["file://server/etc/e.json", "file:///", "file:///etc/"])
def test_bad_paths(raw: str) -> None:
    with pytest.raises(InvalidTargetError):
        validate_target(parse_target(raw))


def test_format() -> None:
    state = parse_endpoints_json(json.dumps({
        "endpoints": [{"address": "10.0.0.1:50051", "weight": 3, "metadata": {"zone": "a"}},
                      {"address": "[::1]:7"}],
        "serviceConfig": {"loadBalancingConfig": [{"pick_first": {}}]}}))
    assert [(e.address, e.weight, dict(e.attributes)) for e in state.endpoints] == [
        ("10.0.0.1:50051", 3, {"zone": "a"}), ("[::1]:7", 1, {})]
    assert state.service_config == {"loadBalancingConfig": [{"pick_first": {}}]}
    assert state.authoritative
    assert parse_endpoints_json('{"endpoints": []}').endpoints == ()


@pytest.mark.parametrize(("text", "path"), [
    ("", "<root>"),
    ("[1, 2", "<root>"),
    ("[]", "<root>"),
    ("{}", "endpoints"),
    ('{"endpoints": {}}', "endpoints"),
    ('{"endpoints": [], "extra": 1}', "extra"),
    ('{"endpoints": ["10.0.0.1:1"]}', "endpoints[0]"),
    ('{"endpoints": [{"address": "10.0.0.1:1"}, {}]}', "endpoints[1].address"),
    ('{"endpoints": [{"address": "10.0.0.1"}]}', "endpoints[0].address"),
    ('{"endpoints": [{"address": "10.0.0.1:1", "weight": 0}]}', "endpoints[0].weight"),
    ('{"endpoints": [{"address": "10.0.0.1:1", "weight": 1.5}]}', "endpoints[0].weight"),
    ('{"endpoints": [{"address": "10.0.0.1:1", "metadata": 3}]}', "endpoints[0].metadata"),
    ('{"endpoints": [{"address": "10.0.0.1:1", "port": 3}]}', "endpoints[0].port"),
    ('{"endpoints": [{"address": "a:1"}, {"address": "a:1"}]}', "endpoints[1].address"),
    ('{"endpoints": [], "serviceConfig": []}', "serviceConfig"),
])
def test_format_errors_name_the_json_path(text: str, path: str) -> None:
    with pytest.raises(ServiceConfigError) as info:
        parse_endpoints_json(text)
    assert info.value.path == path


def test_channel_follows_the_file(tmp_path: pathlib.Path, fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(3)
    path = tmp_path / "endpoints.json"
    write(path, {"endpoints": [{"address": fleet.addresses[0], "weight": 2,
                                "metadata": {"zone": "a"}},
                               {"address": fleet.addresses[1]}]})
    with lbclient.insecure_channel(f"file://{path}", resolver_options=FAST) as ch:
        wait_ready(ch, 2)
        info = {e.address: e for e in ch.endpoints()}
        assert info[fleet.addresses[0]].weight == 2
        assert info[fleet.addresses[0]].attributes == {"zone": "a"}
        stub = echo_pb2_grpc.EchoStub(ch)
        write(path, eps(fleet.addresses[1], fleet.addresses[2]))             # rename
        wait_until(lambda: {e.address for e in ch.endpoints()} == set(fleet.addresses[1:]),
                   5, message="the renamed-over file")
        write(path, eps(fleet.addresses[2]), atomic=False)                  # in place
        wait_until(lambda: [e.address for e in ch.endpoints()] == [fleet.addresses[2]],
                   5, message="the file rewritten in place")
        wait_ready(ch, 1)
        counts = collections.Counter(stub.Unary(REQ, timeout=5).address for _ in range(20))
    assert counts == {fleet.addresses[2]: 20}


def test_malformed_file_keeps_the_last_good_state(tmp_path: pathlib.Path, fleet: Fleet,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "endpoints.json"
    write(path, eps(*fleet.addresses))
    rec = Recorder()
    resolver = FileResolver(parse_target(f"file://{path}"), rec, FAST)
    with lbclient.insecure_channel(f"file://{path}", resolver_options=FAST) as ch:
        resolver.start()
        try:
            wait_ready(ch, 3)
            rec.wait_for(lambda r: len(r.states) == 1)
            with caplog.at_level(logging.WARNING, logger="lbclient"):
                write(path, {"endpoints": [{"address": fleet.addresses[0], "weight": -1}]})
                rec.wait_for(lambda r: len(r.errors) == 1, what="the parse error")
                write(path, "{not json")
                rec.wait_for(lambda r: len(r.errors) == 2, what="the JSON error")
                time.sleep(0.3)         # six polls of an unchanged bad file: reported once
            assert len(rec.errors) == 2 and len(rec.states) == 1
            assert "endpoints[0].weight: must be at least 1" in str(rec.errors[0])
            assert str(path) in str(rec.errors[0])
            assert "endpoints[0].weight" in caplog.text
            assert len(ch.endpoints()) == 3
            stub = echo_pb2_grpc.EchoStub(ch)
            assert len({stub.Unary(REQ, timeout=5).address for _ in range(9)}) == 3
            write(path, eps(fleet.addresses[0]))                              # fixed
            rec.wait_for(lambda r: len(r.states) == 2)
            wait_until(lambda: len(ch.endpoints()) == 1, 5)
        finally:
            resolver.close()


def test_missing_file_fails_calls_then_recovers(tmp_path: pathlib.Path, fleet: Fleet) -> None:
    path = tmp_path / "later.json"
    with lbclient.insecure_channel(f"file://{path}", resolver_options=FAST) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)

        def failed_naming_the_file() -> bool:
            try:
                stub.Unary(REQ, timeout=5)
            except grpc.RpcError as exc:
                assert code_of(exc) is grpc.StatusCode.UNAVAILABLE
                return str(path) in exc.details() and "No such file" in exc.details()
            return False

        wait_until(failed_naming_the_file, 5, message="UNAVAILABLE naming the missing file")
        write(path, eps(fleet.addresses[0]))
        reply = stub.Unary(REQ, timeout=5, wait_for_ready=True)
    assert reply.address == fleet.addresses[0]


def test_file_deleted_later_keeps_endpoints(tmp_path: pathlib.Path, fleet: Fleet) -> None:
    path = tmp_path / "e.json"
    write(path, eps(*fleet.addresses))
    rec = Recorder()
    resolver = FileResolver(parse_target(f"file:{path}"), rec, FAST)
    resolver.start()
    try:
        rec.wait_for(lambda r: len(r.states) == 1)
        path.unlink()
        rec.wait_for(lambda r: len(r.errors) == 1)
        assert "cannot read it" in str(rec.errors[0])
        write(path, eps(*fleet.addresses))                  # same content comes back
        rec.wait_for(lambda r: len(r.states) == 2)
    finally:
        resolver.close()


def test_unchanged_content_is_not_redelivered(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "e.json"
    write(path, eps("127.0.0.1:1"))
    rec = Recorder()
    resolver = FileResolver(parse_target(f"file://{path}"), rec, FAST)
    resolver.start()
    try:
        rec.wait_for(lambda r: len(r.states) == 1)
        os.utime(path, None)                                 # touch: stat changes
        write(path, eps("127.0.0.1:1"))                      # same bytes, new inode
        wait_until(lambda: resolver.reads >= 1, 2)
        time.sleep(0.3)
        assert len(rec.states) == 1 and resolver.reads == 1
        write(path, eps("127.0.0.1:2"))
        rec.wait_for(lambda r: r.addresses() == ["127.0.0.1:2"])
        assert resolver.reads == 2
    finally:
        resolver.close()


def test_service_config_from_the_file(tmp_path: pathlib.Path, fleet: Fleet) -> None:
    path = tmp_path / "e.json"
    write(path, {**eps(*fleet.addresses),
                 "serviceConfig": {"loadBalancingConfig": [{"pick_first": {}}]}})
    with lbclient.insecure_channel(f"file://{path}", resolver_options=FAST) as ch:
        wait_until(lambda: ch.service_config is not None
                   and ch.service_config.lb.name == "pick_first", 5)
        wait_ready(ch, 1)
        stub = echo_pb2_grpc.EchoStub(ch)
        assert {stub.Unary(REQ, timeout=5).address for _ in range(10)} == {fleet.addresses[0]}


def test_empty_list_is_authoritative(tmp_path: pathlib.Path, fleet: Fleet) -> None:
    path = tmp_path / "e.json"
    write(path, eps(fleet.addresses[0]))
    with lbclient.insecure_channel(f"file://{path}", resolver_options=FAST) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        stub.Unary(REQ, timeout=5, wait_for_ready=True)
        write(path, {"endpoints": []})
        wait_until(lambda: ch.endpoints() == [], 5, message="the endpoint list emptied")
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(REQ, timeout=5)
        assert code_of(info.value) is grpc.StatusCode.UNAVAILABLE
        assert "empty" in info.value.details()


def test_poll_interval_option() -> None:
    with pytest.raises(ServiceConfigError, match="resolver_options.poll_interval"):
        FileResolver(parse_target("file:///x.json"), Recorder(), {"poll_interval": 0})
    with pytest.raises(ServiceConfigError, match="resolver_options.refresh_interval"):
        FileResolver(parse_target("file:///x.json"), Recorder(), {"refresh_interval": 1})
    assert FileResolver(parse_target("file:///x.json"), Recorder(), {}).poll_interval == 1.0
