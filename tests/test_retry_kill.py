"""A backend killed (and restarted) under steady 4-thread load: with a retryPolicy on
UNAVAILABLE the callers see no failure at all.

The kill is a :class:`crash_proxy.CrashProxy` in front of the victim resetting its
connections (in-flight calls end UNAVAILABLE, new connections are refused), as when a
backend's process dies; ``Backend.stop()`` would cancel them instead (CANCELLED, not
retryable), which made this test fail about once in 28 runs."""

from __future__ import annotations

import threading
import time
from collections import Counter

import grpc
from crash_proxy import CrashProxy
from helpers import wait_ready, wait_until
from retry_servers import retry_config

import lbclient
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

THREADS = 4


def test_killed_backend_causes_no_user_visible_failure(fleet_factory: object) -> None:
    fleet: Fleet = fleet_factory(3, latency=0.02)  # type: ignore[operator]
    config = retry_config(attempts=5, initial="0.01s", maximum="0.1s")
    victim = fleet[1]
    with CrashProxy(victim.address) as proxy, lbclient.insecure_channel(
            f"ipv4:{fleet[0].address},{proxy.address},{fleet[2].address}",
            service_config=config) as ch:
        wait_ready(ch, 3)
        stub = echo_pb2_grpc.EchoStub(ch)
        stop = threading.Event()
        ok = Counter[int]()
        errors: list[grpc.StatusCode] = []
        lock = threading.Lock()

        def worker(n: int) -> None:
            while not stop.is_set():
                try:
                    stub.Unary(echo_pb2.EchoRequest(message="k"), timeout=5)
                except grpc.RpcError as exc:
                    with lock:
                        errors.append(exc.code())
                else:
                    with lock:
                        ok[n] += 1

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: victim.in_flight > 0, 5, message="load on the victim")
            killed_at = sum(ok.values())
            proxy.crash()                     # in-flight calls on it are cut off
            time.sleep(0.5)
            served_while_down = sum(ok.values()) - killed_at
            failed_attempts = sum(e.failures for e in ch.endpoints()
                                  if e.address == proxy.address)
            proxy.restart()
            fleet.reset_counters()
            wait_until(lambda: victim.calls >= 3, 5, message="the victim back in rotation")
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert errors == []
        assert all(ok[n] > 0 for n in range(THREADS))
        assert served_while_down > 10
        assert failed_attempts >= 1   # attempts did fail on the victim; retries hid them
