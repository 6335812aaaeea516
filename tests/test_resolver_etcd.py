"""etcd: resolver against a real single-member etcd (Debian etcd-server on loopback) and
real backends: updates reach the channel within 1 s, Go naming interop via etcdctl,
metadata, malformed values, authoritative emptiness, compaction resync."""

from __future__ import annotations

import collections
import itertools
import json
import logging
import pathlib
import time
from collections.abc import Iterator

import grpc
import pytest
from _discovery import Recorder
from _etcd import EtcdCluster
from helpers import code_of, wait_ready, wait_until

import lbclient
import lbclient.etcd
from lbclient.resolver import parse_target
from lbclient.resolver.etcd import EtcdResolver
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")
FAST = {"backoff_initial": 0.05, "backoff_max": 0.5, "dial_timeout": 2.0}
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path_factory.mktemp("etcd") / "cluster", 1) as cluster:
        yield cluster


@pytest.fixture
def prefix() -> str:
    """A fresh service prefix per test (the etcd server is shared by the module)."""
    return f"services/t{next(_prefixes)}"


def _addresses(ch: lbclient.LoadBalancedChannel) -> set[str]:
    return {e.address for e in ch.endpoints()}


def _wait_addresses(ch: lbclient.LoadBalancedChannel, want: set[str], within: float) -> float:
    """Seconds until the channel's endpoint set equals ``want``; fails after ``within``."""
    t0 = time.monotonic()
    wait_until(lambda: _addresses(ch) == want, within, interval=0.002,
               message=f"channel endpoints == {sorted(want)}")
    return time.monotonic() - t0


def test_added_and_removed_endpoints_reach_the_channel_within_1s(
        etcd: EtcdCluster, prefix: str, fleet: Fleet) -> None:
    a, b, c = fleet.addresses
    lbclient.etcd.add_endpoint(etcd.endpoints, prefix, a)
    lbclient.etcd.add_endpoint(etcd.endpoints, prefix, b)
    with lbclient.insecure_channel(etcd.target(prefix), resolver_options=FAST) as ch:
        wait_ready(ch, 2)
        stub = echo_pb2_grpc.EchoStub(ch)
        lbclient.etcd.add_endpoint(etcd.endpoints, prefix, c)
        _wait_addresses(ch, {a, b, c}, 1.0)
        wait_ready(ch, 3)
        assert set(collections.Counter(stub.Unary(REQ, timeout=5).address
                                       for _ in range(30))) == {a, b, c}
        lbclient.etcd.remove_endpoint(etcd.endpoints, prefix, a)
        _wait_addresses(ch, {b, c}, 1.0)
        assert a not in {stub.Unary(REQ, timeout=5).address for _ in range(30)}


def test_etcdctl_put_in_go_naming_json_is_understood(etcd: EtcdCluster, prefix: str,
                                                     fleet: Fleet) -> None:
    a, b, _ = fleet.addresses
    lbclient.etcd.add_endpoint(etcd.endpoints, prefix, a, metadata={"zone": "x"})
    # What lbclient writes is byte for byte what Go's endpoints.Manager writes.
    assert etcd.etcdctl("get", "--print-value-only", f"{prefix}/{a}").strip() == (
        f'{{"Op":0,"Addr":"{a}","Metadata":{{"zone":"x"}}}}')
    with lbclient.insecure_channel(etcd.target(prefix), resolver_options=FAST) as ch:
        wait_ready(ch, 1)
        go_value = json.dumps({"Op": 0, "Addr": b, "Metadata": {"weight": 3, "zone": "y"}})
        etcd.etcdctl("put", f"{prefix}/{b}", go_value)
        _wait_addresses(ch, {a, b}, 1.0)
        info = {e.address: e for e in ch.endpoints()}
        assert (info[b].weight, info[b].attributes) == (3, {"weight": 3, "zone": "y"})
        assert (info[a].weight, info[a].attributes) == (1, {"zone": "x"})
        etcd.etcdctl("del", f"{prefix}/{b}")
        _wait_addresses(ch, {a}, 1.0)


def test_changed_metadata_updates_the_endpoint(etcd: EtcdCluster, prefix: str,
                                               fleet: Fleet) -> None:
    a = fleet.addresses[0]
    lbclient.etcd.add_endpoint(etcd.endpoints, prefix, a, metadata={"weight": 1})
    with lbclient.insecure_channel(etcd.target(prefix), resolver_options=FAST) as ch:
        wait_ready(ch, 1)
        lbclient.etcd.add_endpoint(etcd.endpoints, prefix, a, metadata={"weight": 5})
        wait_until(lambda: ch.endpoints()[0].weight == 5, 5.0, interval=0.005,
                   message="the new weight")
        assert ch.endpoints()[0].connectivity == "READY"      # same connection kept


def test_malformed_value_is_logged_and_skipped(etcd: EtcdCluster, prefix: str, fleet: Fleet,
                                               caplog: pytest.LogCaptureFixture) -> None:
    a, b, _ = fleet.addresses
    lbclient.etcd.add_endpoint(etcd.endpoints, prefix, a)
    with caplog.at_level(logging.WARNING, logger="lbclient"):
        with lbclient.insecure_channel(etcd.target(prefix), resolver_options=FAST) as ch:
            wait_ready(ch, 1)
            etcd.etcdctl("put", f"{prefix}/junk", "not json")
            lbclient.etcd.add_endpoint(etcd.endpoints, prefix, b)
            _wait_addresses(ch, {a, b}, 5.0)
    assert f"etcd key '{prefix}/junk': ignoring the value" in caplog.text


def test_keys_outside_the_prefix_are_ignored(etcd: EtcdCluster, prefix: str,
                                             fleet: Fleet) -> None:
    a, b, c = fleet.addresses
    lbclient.etcd.add_endpoint(etcd.endpoints, prefix, a)
    lbclient.etcd.add_endpoint(etcd.endpoints, prefix + "x", b)      # "services/t3x/..."
    lbclient.etcd.add_endpoint(etcd.endpoints, prefix + "/sub", c)   # deeper: still ours
    rec = Recorder()
    resolver = EtcdResolver(parse_target(etcd.target(prefix)), rec, FAST)
    resolver.start()
    try:
        rec.wait_addresses({a, c})
    finally:
        resolver.close()


def test_deleting_every_key_empties_the_channel(etcd: EtcdCluster, prefix: str,
                                                fleet: Fleet) -> None:
    a = fleet.addresses[0]
    lbclient.etcd.add_endpoint(etcd.endpoints, prefix, a)
    with lbclient.insecure_channel(etcd.target(prefix), resolver_options=FAST) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        stub.Unary(REQ, timeout=5, wait_for_ready=True)
        lbclient.etcd.remove_endpoint(etcd.endpoints, prefix, a)
        _wait_addresses(ch, set(), 5.0)
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(REQ, timeout=5)
        assert code_of(info.value) is grpc.StatusCode.UNAVAILABLE
        assert "empty" in str(info.value.details())


def test_unreachable_etcd_fails_calls_naming_the_member(tmp_path: pathlib.Path) -> None:
    port = EtcdCluster.free_port()
    with lbclient.insecure_channel(f"etcd://127.0.0.1:{port}/svc",
                                   resolver_options=FAST) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)

        def fails_naming_etcd() -> bool:
            try:
                stub.Unary(REQ, timeout=5)
            except grpc.RpcError as exc:
                assert code_of(exc) is grpc.StatusCode.UNAVAILABLE
                return f"etcd member 127.0.0.1:{port}" in str(exc.details())
            return False

        wait_until(fails_naming_etcd, 10, message="UNAVAILABLE naming the etcd member")


def test_compacted_revision_is_read_again(tmp_path: pathlib.Path, fleet: Fleet,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """The watched member dies; while the resolver cannot reach it, endpoints change and
    the history is compacted; on reconnection the watch from the old revision is refused
    (compacted) and the resolver reads the prefix again."""
    a, b, c = fleet.addresses
    spare = EtcdCluster.free_port()
    with EtcdCluster(tmp_path / "etcd", 1) as etcd:
        old = etcd.members[0].address
        lbclient.etcd.add_endpoint(old, "svc", a)
        rec = Recorder()
        target = f"etcd://{old},127.0.0.1:{spare}/svc"
        resolver = EtcdResolver(parse_target(target), rec, FAST)
        resolver.start()
        try:
            rec.wait_addresses({a})
            etcd.kill(0)
            rec.wait_for(lambda r: len(r.errors) >= 1, what="the failure to be noticed")
            other = EtcdCluster.free_port()
            etcd.restart(0, client_port=other)           # a port the resolver doesn't know
            conn = etcd.connection()
            try:
                lbclient.etcd.remove_endpoint(f"127.0.0.1:{other}", "svc", a)
                lbclient.etcd.add_endpoint(f"127.0.0.1:{other}", "svc", b)
                lbclient.etcd.add_endpoint(f"127.0.0.1:{other}", "svc", c)
                revision = conn.range_prefix(b"svc/", timeout=5).header.revision
                etcd.etcdctl("compact", str(revision))
            finally:
                conn.close()
            etcd.kill(0)
            with caplog.at_level(logging.WARNING, logger="lbclient"):
                etcd.restart(0, client_port=spare)       # now where the resolver looks
                rec.wait_addresses({b, c}, timeout=15)
            assert "was compacted" in caplog.text
            assert resolver.revision >= revision
            assert [set(e.address for e in s.endpoints) for s in rec.states] == [{a}, {b, c}]
        finally:
            resolver.close()


def test_close_cancels_the_watch(etcd: EtcdCluster, prefix: str) -> None:
    rec = Recorder()
    resolver = EtcdResolver(parse_target(etcd.target(prefix)), rec, FAST)
    resolver.start()
    rec.wait_for(lambda r: len(r.states) == 1)
    wait_until(lambda: resolver.member is not None, 5, message="the watch")
    t0 = time.monotonic()
    resolver.close()
    assert time.monotonic() - t0 < 2.0
    lbclient.etcd.add_endpoint(etcd.endpoints, prefix, "127.0.0.1:1")
    time.sleep(0.3)
    assert len(rec.states) == 1 and rec.errors == []
