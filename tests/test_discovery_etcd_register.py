"""lbclient.etcd.register: a server publishes itself under a lease; shutdown removes it at
once, a crash removes it when the lease expires, a lost lease is granted again."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _etcd import EtcdCluster
from helpers import wait_ready, wait_until

import lbclient
import lbclient.etcd
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")
FAST = {"backoff_initial": 0.05, "backoff_max": 0.5}


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path_factory.mktemp("etcd-reg") / "cluster", 1) as cluster:
        yield cluster


def _keys(etcd: EtcdCluster, prefix: str) -> list[str]:
    conn = etcd.connection()
    try:
        resp = conn.range_prefix(f"{prefix}/".encode(), timeout=5)
    finally:
        conn.close()
    return [kv.key.decode() for kv in resp.kvs]


def _addresses(ch: lbclient.LoadBalancedChannel) -> set[str]:
    return {e.address for e in ch.endpoints()}


def test_register_then_close(etcd: EtcdCluster, fleet: Fleet) -> None:
    a, b, _ = fleet.addresses
    with lbclient.insecure_channel(etcd.target("reg1"), resolver_options=FAST) as ch:
        with lbclient.etcd.register(etcd.endpoints, "reg1", a, metadata={"weight": 4}):
            reg_b = lbclient.etcd.register(etcd.endpoints, "reg1", b)
            wait_ready(ch, 2)
            assert {e.address: e.weight for e in ch.endpoints()} == {a: 4, b: 1}
            assert _keys(etcd, "reg1") == sorted([f"reg1/{a}", f"reg1/{b}"])
            assert reg_b.lease_id != 0 and reg_b.key == f"reg1/{b}"
            reg_b.close()
            wait_until(lambda: _addresses(ch) == {a}, 3.0, interval=0.005,   # ttl is 10 s
                       message="a closed registration to disappear at once")
            reg_b.close()                                   # idempotent
            stub = echo_pb2_grpc.EchoStub(ch)
            assert {stub.Unary(REQ, timeout=5).address for _ in range(10)} == {a}
        wait_until(lambda: _addresses(ch) == set(), 3.0, interval=0.005)
    assert _keys(etcd, "reg1") == []


def test_crashed_server_disappears_when_its_lease_expires(etcd: EtcdCluster,
                                                          tmp_path: pathlib.Path,
                                                          fleet: Fleet) -> None:
    a = fleet.addresses[0]
    script = tmp_path / "server.py"
    script.write_text(textwrap.dedent(f"""
        import time, lbclient.etcd
        reg = lbclient.etcd.register({etcd.endpoints!r}, "reg2", {a!r}, ttl=2)
        print("registered", flush=True)
        time.sleep(60)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "registered"
        with lbclient.insecure_channel(etcd.target("reg2"), resolver_options=FAST) as ch:
            wait_ready(ch, 1)
            time.sleep(2.5)                                 # keepalives hold it past ttl
            assert _addresses(ch) == {a}
            proc.kill()                                     # no close(): a crash
            proc.wait(10)
            t0 = time.monotonic()
            wait_until(lambda: _addresses(ch) == set(), 10, interval=0.01,
                       message="the lease to expire")
            gone_after = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert 0.5 < gone_after < 5.0, gone_after               # lease expiry, not a delete


def test_lost_lease_is_granted_again(etcd: EtcdCluster, fleet: Fleet) -> None:
    a = fleet.addresses[0]
    with lbclient.insecure_channel(etcd.target("reg3"), resolver_options=FAST) as ch:
        reg = lbclient.etcd.register(etcd.endpoints, "reg3", a, ttl=2)
        try:
            wait_ready(ch, 1)
            first = reg.lease_id
            conn = etcd.connection()
            try:
                conn.lease_revoke(first, timeout=5)          # e.g. etcd lost it
            finally:
                conn.close()
            wait_until(lambda: reg.grants == 2 and reg.lease_id not in (0, first), 5,
                       message="a new lease")
            wait_until(lambda: _addresses(ch) == {a}, 5, message="the key written again")
            assert _keys(etcd, "reg3") == [f"reg3/{a}"]
        finally:
            reg.close()


def test_register_fails_fast_without_etcd() -> None:
    port = EtcdCluster.free_port()
    t0 = time.monotonic()
    with pytest.raises(lbclient.etcd.EtcdError, match=f"127.0.0.1:{port}"):
        lbclient.etcd.register(f"127.0.0.1:{port}", "x", "127.0.0.1:1", timeout=0.5,
                               backoff_initial=0.05, backoff_max=0.2)
    assert time.monotonic() - t0 < 5.0


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"ttl": 1}, "ttl"), ({"ttl": 2.5}, "ttl"), ({"prefix": ""}, "prefix"),
    ({"address": "nohost"}, "port"), ({"endpoints": ""}, "etcd member"),
])
def test_register_checks_its_arguments(kwargs: dict[str, Any], error: str) -> None:
    args: dict[str, Any] = {"endpoints": "127.0.0.1:2379", "prefix": "p",
                            "address": "127.0.0.1:1", **kwargs}
    with pytest.raises(ValueError, match=error):
        lbclient.etcd.register(args.pop("endpoints"), args.pop("prefix"),
                               args.pop("address"), **args)


def test_add_endpoint_with_every_member_down_raises() -> None:
    port = EtcdCluster.free_port()
    with pytest.raises(lbclient.etcd.EtcdError, match="every etcd member failed"):
        lbclient.etcd.add_endpoint(f"127.0.0.1:{port}", "x", "127.0.0.1:1", timeout=0.5)
