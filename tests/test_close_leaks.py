"""After close() no thread, socket or timer of the SDK is left (50 open/close cycles)."""

from __future__ import annotations

import gc
import os
import threading
import time

import lbclient
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _client_threads() -> int:
    """Threads that are not the fake backends' own (their executors start lazily)."""
    return sum(1 for t in threading.enumerate()
               if not t.name.startswith("lbclient-backend") and "(_serve)" not in t.name)


def _settle(threads0: int, fds0: int, timeout: float = 10.0) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        now = (_client_threads(), _fds())
        if (now[0] <= threads0 and now[1] <= fds0 + 2) or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def test_fifty_open_close_cycles_leave_nothing(fleet: Fleet) -> None:
    config = {"loadBalancingConfig": [{"round_robin": {}}]}
    with lbclient.insecure_channel(fleet.target, service_config=config) as ch:  # warm grpc up
        echo_pb2_grpc.EchoStub(ch).Unary(REQ, timeout=5, wait_for_ready=True)
    _settle(0, 0, 1.0)
    threads0, fds0 = _client_threads(), _fds()
    for _ in range(50):
        ch = lbclient.insecure_channel(fleet.target, service_config=config)
        stub = echo_pb2_grpc.EchoStub(ch)
        for _ in range(3):
            stub.Unary(REQ, timeout=5, wait_for_ready=True)
        ch.close()
    threads1, fds1 = _settle(threads0, fds0)
    names = sorted(t.name for t in threading.enumerate())
    assert threads1 <= threads0, names
    assert fds1 <= fds0 + 2, (fds0, fds1)
