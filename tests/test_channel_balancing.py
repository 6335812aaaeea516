"""round_robin / pick_first through the channel on real backends; failure handling."""

from __future__ import annotations

import collections
import threading
import time

import grpc
import pytest
from helpers import wait_ready, wait_until

import lbclient
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")


def test_round_robin_splits_3000_calls_evenly(fleet: Fleet) -> None:
    with lbclient.insecure_channel(
            fleet.target, service_config={"loadBalancingConfig": [{"round_robin": {}}]}) as ch:
        wait_ready(ch, 3)
        stub = echo_pb2_grpc.EchoStub(ch)
        counts = collections.Counter(stub.Unary(REQ, timeout=5).address for _ in range(3000))
    assert set(counts) == set(fleet.addresses)
    assert all(999 <= n <= 1001 for n in counts.values()), counts


def test_default_policy_is_round_robin(fleet: Fleet) -> None:
    with lbclient.insecure_channel(fleet.target) as ch:
        assert ch.service_config is not None and ch.service_config.lb.name == "round_robin"
        wait_ready(ch, 3)
        stub = echo_pb2_grpc.EchoStub(ch)
        counts = collections.Counter(stub.Unary(REQ, timeout=5).address for _ in range(300))
    assert sorted(counts.values()) == [100, 100, 100]


def test_json_string_config_and_pick_first(fleet: Fleet) -> None:
    cfg = '{"loadBalancingConfig": [{"pick_first": {}}]}'
    with lbclient.insecure_channel(fleet.target, service_config=cfg) as ch:
        wait_ready(ch, 3)
        stub = echo_pb2_grpc.EchoStub(ch)
        addresses = {stub.Unary(REQ, timeout=5).address for _ in range(50)}
        assert addresses == {fleet.addresses[0]}
        fleet[0].stop()
        wait_until(lambda: ch.endpoints()[0].connectivity != "READY", 10)
        addresses = {stub.Unary(REQ, timeout=5).address for _ in range(20)}
        assert addresses == {fleet.addresses[1]}


def test_pick_first_shuffle_spreads_clients(fleet: Fleet) -> None:
    import random

    firsts = set()
    for seed in range(8):
        with lbclient.insecure_channel(
                fleet.target, rng=random.Random(seed),
                service_config={"loadBalancingConfig": [
                    {"pick_first": {"shuffleAddressList": True}}]}) as ch:
            wait_ready(ch, 3)
            firsts.add(echo_pb2_grpc.EchoStub(ch).Unary(REQ, timeout=5).address)
    assert len(firsts) >= 2


def test_stopped_backend_gets_no_calls_then_returns(fleet: Fleet) -> None:
    with lbclient.insecure_channel(fleet.target) as ch:
        wait_ready(ch, 3)
        stub = echo_pb2_grpc.EchoStub(ch)
        victim = fleet[1]
        victim.stop()
        wait_until(lambda: ch.endpoints()[1].connectivity != "READY", 10,
                   message="stopped backend leaves READY")
        counts = collections.Counter(stub.Unary(REQ, timeout=5).address for _ in range(300))
        assert victim.address not in counts
        assert sum(counts.values()) == 300
        victim.restart()
        wait_until(lambda: ch.endpoints()[1].connectivity == "READY", 20,
                   message="restarted backend READY again")
        counts = collections.Counter(stub.Unary(REQ, timeout=5).address for _ in range(300))
        assert counts[victim.address] == 100


def test_no_ready_endpoint_fails_fast_with_reason() -> None:
    import socket

    ports = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        s.close()
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    with lbclient.insecure_channel(target) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        wait_until(lambda: all(e.connectivity == "TRANSIENT_FAILURE" for e in ch.endpoints()),
                   10, message="both endpoints failed")
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(REQ, timeout=5)
        assert time.monotonic() - t0 < 1.0
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "no ready endpoints" in info.value.details()
        assert "2 " in info.value.details()
        # wait_for_ready waits within its deadline, then DEADLINE_EXCEEDED with the reason
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(REQ, timeout=0.3, wait_for_ready=True)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.25 <= time.monotonic() - t0 < 2.0
        # futures and streams report the same way
        assert stub.Unary.future(REQ, timeout=1).exception().code() is (
            grpc.StatusCode.UNAVAILABLE)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ServerStream(REQ, timeout=1))
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE


def test_wait_for_ready_waits_for_a_backend_to_start() -> None:
    backend_fleet = Fleet(1)
    try:
        b = backend_fleet[0]
        b.stop()
        with lbclient.insecure_channel(
                backend_fleet.target,
                options=[("grpc.initial_reconnect_backoff_ms", 100),
                         ("grpc.max_reconnect_backoff_ms", 200)]) as ch:
            stub = echo_pb2_grpc.EchoStub(ch)
            threading.Timer(0.5, b.restart).start()
            reply = stub.Unary(REQ, timeout=15, wait_for_ready=True)
            assert reply.address == b.address
    finally:
        backend_fleet.stop()


def test_eight_threads_no_error_and_in_flight_back_to_zero(fleet: Fleet) -> None:
    with lbclient.insecure_channel(fleet.target) as ch:
        wait_ready(ch, 3)
        stub = echo_pb2_grpc.EchoStub(ch)
        errors: list[BaseException] = []
        counts: collections.Counter[str] = collections.Counter()
        lock = threading.Lock()

        def work() -> None:
            local: collections.Counter[str] = collections.Counter()
            try:
                for _ in range(500):
                    local[stub.Unary(REQ, timeout=10).address] += 1
            except BaseException as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)
            with lock:
                counts.update(local)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors[:3]
        assert sum(counts.values()) == 4000
        assert all(abs(n - 4000 / 3) <= 20 for n in counts.values()), counts
        snapshot = ch.endpoints()
        assert all(e.in_flight == 0 for e in snapshot)
        assert sum(e.calls for e in snapshot) == 4000


def test_close_is_idempotent_and_later_calls_fail_clearly(fleet: Fleet) -> None:
    ch = lbclient.insecure_channel(fleet.target)
    wait_ready(ch, 3)
    stub = echo_pb2_grpc.EchoStub(ch)
    assert stub.Unary(REQ, timeout=5).message == "x"
    ch.close()
    ch.close()
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(REQ, timeout=5)
    assert info.value.code() is grpc.StatusCode.CANCELLED
    assert "closed" in info.value.details()
    assert ch.get_state() is grpc.ChannelConnectivity.SHUTDOWN


def test_close_cancels_in_flight_calls(fleet: Fleet) -> None:
    ch = lbclient.insecure_channel(fleet.target)
    wait_ready(ch, 3)
    stub = echo_pb2_grpc.EchoStub(ch)
    fut = stub.Unary.future(echo_pb2.EchoRequest(sleep_ms=5000), timeout=10)
    time.sleep(0.1)
    ch.close()
    exc = fut.exception(timeout=5)
    assert exc is not None and exc.code() is grpc.StatusCode.CANCELLED


def test_subscribe_reports_aggregate_state(fleet: Fleet) -> None:
    states: list[grpc.ChannelConnectivity] = []
    with lbclient.insecure_channel(fleet.target) as ch:
        ch.subscribe(states.append, try_to_connect=True)
        wait_until(lambda: grpc.ChannelConnectivity.READY in states, 10)
        ready = grpc.channel_ready_future(ch)
        ready.result(timeout=5)
        ch.unsubscribe(states.append)
        n = len(states)
        for b in fleet:
            b.stop()
        wait_until(lambda: ch.get_state() is not grpc.ChannelConnectivity.READY, 10)
        assert len(states) == n  # unsubscribed: nothing more delivered


def test_channel_options_reach_every_endpoint(fleet: Fleet) -> None:
    opts = [("grpc.max_receive_message_length", 100)]
    with lbclient.insecure_channel(fleet.target, options=opts) as ch:
        wait_ready(ch, 3)
        stub = echo_pb2_grpc.EchoStub(ch)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as info:
                stub.Unary(echo_pb2.EchoRequest(message="y" * 500), timeout=5)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_static_target_with_host_names(fleet: Fleet) -> None:
    target = "static:///" + ",".join(f"localhost:{b.port}" for b in fleet)
    with lbclient.insecure_channel(target) as ch:
        wait_ready(ch, 3)
        stub = echo_pb2_grpc.EchoStub(ch)
        seen = {stub.Unary(REQ, timeout=5).address for _ in range(30)}
    assert seen == set(fleet.addresses)
