"""Priority failover (active-passive) on real backends: a primary group of 3 and a standby
group of 2, with the standby marked by the policy config's per-address map."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import pytest
from helpers import wait_ready, wait_until

import lbclient
from lbclient.testing import NOT_SERVING, Backend, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")
FACTOR = 1.4


def priority_config(standbys: Sequence[Backend], **extra: Any) -> dict[str, Any]:
    return {"loadBalancingConfig": [{"priority": {
        "endpoints": {b.address: {"priority": 1} for b in standbys}}}], **extra}


def spread(stub: echo_pb2_grpc.EchoStub, n: int, **kwargs: Any) -> collections.Counter[str]:
    """``n`` sequential calls; which backend answered each."""
    return collections.Counter(stub.Unary(REQ, timeout=5, **kwargs).address for _ in range(n))


def connectivity(ch: lbclient.LoadBalancedChannel, address: str) -> str:
    return next(e.connectivity for e in ch.endpoints() if e.address == address)


def wait_eligible(ch: lbclient.LoadBalancedChannel, n: int, timeout: float = 10.0) -> None:
    """READY is not enough when health checks are on: wait for ``n`` pickable endpoints."""
    wait_ready(ch, n, timeout)
    wait_until(lambda: sum(bool(e.eligible) for e in ch.endpoints()) >= n, timeout,
               message=f"{n} eligible endpoints")


def wait_down(ch: lbclient.LoadBalancedChannel, backends: Sequence[Backend]) -> None:
    wait_until(lambda: all(connectivity(ch, b.address) != "READY" for b in backends), 10,
               message=f"{[b.address for b in backends]} to leave READY")


def test_primary_group_failover_spill_and_return(fleet_factory: Any) -> None:
    fleet = fleet_factory(5)
    primaries, standbys = fleet[:3], fleet[3:]
    p0 = {b.address for b in primaries}
    p1 = {b.address for b in standbys}
    with lbclient.insecure_channel(fleet.target,
                                   service_config=priority_config(standbys)) as ch:
        wait_eligible(ch, 5)
        stub = echo_pb2_grpc.EchoStub(ch)

        # 1. Everyone healthy: every call goes to the primary group, evenly.
        counts = spread(stub, 300)
        assert set(counts) == p0, counts
        assert all(n == 100 for n in counts.values()), counts
        assert sum(b.calls for b in standbys) == 0

        # 2. Two of three primaries die: 1/3 healthy x 1.4 = 46.7% stays on the
        #    primary level, 53.3% spills to the standby level.
        primaries[0].stop()
        primaries[1].stop()
        wait_down(ch, primaries[:2])
        counts = spread(stub, 600)
        on_primary = sum(counts[a] for a in p0) / 600
        assert abs(on_primary - FACTOR / 3) < 0.08, counts
        assert set(counts) == {primaries[2].address, *p1}, counts
        standby_calls = [counts[a] for a in p1]
        assert abs(standby_calls[0] - standby_calls[1]) <= 10, counts

        # 3. The last primary dies too: all traffic on the standby. (Failures of calls
        #    in flight at the moment of the crash: see the retry test below.)
        primaries[2].stop()
        wait_down(ch, primaries)
        counts = spread(stub, 300)
        assert set(counts) == p1 and sum(counts.values()) == 300, counts

        # 4. The primaries come back: traffic returns to them.
        for b in primaries:
            b.restart()
        wait_eligible(ch, 5, 30)
        standby_before = sum(b.calls for b in standbys)
        counts = spread(stub, 300)
        assert set(counts) == p0 and all(n == 100 for n in counts.values()), counts
        assert sum(b.calls for b in standbys) == standby_before


def test_drained_primary_group_fails_over_on_health_without_a_failed_call(
        fleet_factory: Any) -> None:
    """Calls keep flowing from 4 threads while the whole primary group (3 of 5) turns
    NOT_SERVING and is then stopped: the drained failover of active-passive.

    With the default panic threshold (50%): 3 of 5 endpoints are unhealthy, but the
    priority policy's normalized total health (the standby level is fully healthy)
    keeps the channel out of panic, so the unhealthy primaries are not handed back."""
    fleet = fleet_factory(5)
    primaries, standbys = fleet[:3], fleet[3:]
    cfg = priority_config(standbys, healthCheckConfig={"serviceName": ""})
    failures: list[BaseException] = []
    done = threading.Event()
    answered: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    with lbclient.insecure_channel(fleet.target, service_config=cfg) as ch:
        wait_eligible(ch, 5)
        stub = echo_pb2_grpc.EchoStub(ch)

        def caller() -> None:
            for _ in range(5000):
                if done.is_set():
                    return
                try:
                    address = stub.Unary(REQ, timeout=5).address
                except grpc.RpcError as exc:
                    failures.append(exc)
                    return
                with lock:
                    answered[address] += 1

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: sum(answered.values()) >= 100, 10, message="calls flowing")
            assert not answered.keys() & {b.address for b in standbys}
            for b in primaries:
                b.set_health(NOT_SERVING)
            wait_until(lambda: all(e.eligible is False for e in ch.endpoints()
                                   if e.address in {b.address for b in primaries}),
                       10, message="primaries unhealthy")
            with lock:
                before = sum(answered[b.address] for b in standbys)
            # let calls picked just before the switch land, then: no new primary call
            wait_until(lambda: sum(answered[b.address] for b in standbys) >= before + 50,
                       10, message="standby taking the calls")
            primary_calls = sum(b.calls for b in primaries)
            before += 50
            wait_until(lambda: sum(answered[b.address] for b in standbys) >= before + 200,
                       10, message="standby taking the calls")
            assert sum(b.calls for b in primaries) == primary_calls  # drained: none new
            for b in primaries:
                b.stop()
            before += 200
            wait_until(lambda: sum(answered[b.address] for b in standbys) >= before + 200,
                       10, message="standby still taking the calls")
        finally:
            done.set()
            for t in threads:
                t.join(10)
        assert not failures, failures[:3]
        assert all(not t.is_alive() for t in threads)


# ------------------------------------------------------------------ crash + retries
RETRY = {"methodConfig": [{"name": [{}], "retryPolicy": {
    "maxAttempts": 5, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}


@pytest.fixture
def crashable_primaries() -> Iterator[tuple[list[str], Callable[[], None]]]:
    """Two backends in a child process (``python -m lbclient.testing serve``) and a
    function that SIGKILLs it: a real crash, where the kernel resets the connections
    (an in-process ``Backend.stop()`` instead cancels in-flight calls with CANCELLED,
    which no retry policy should retry)."""
    proc = subprocess.Popen([sys.executable, "-m", "lbclient.testing", "serve", "--count", "2"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        addresses: list[str] = []
        deadline = time.monotonic() + 30
        while len(addresses) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()   # the child prints its ports once serving
            if not line:
                break
            addresses.append(line.strip())
        assert len(addresses) == 2, f"serve printed {addresses}"

        def crash() -> None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

        yield addresses, crash
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_primary_group_crash_is_invisible_to_callers_with_a_retry_policy(
        fleet_factory: Any, crashable_primaries: tuple[list[str], Callable[[], None]]) -> None:
    """4 threads call continuously; the whole primary group crashes mid-stream. Calls
    caught on a dead primary are retried (UNAVAILABLE), the retry's pick avoids the
    tried endpoints and falls back to the standby level even before the channel has
    seen the crash; afterwards the standby level takes everything."""
    primary_addresses, crash = crashable_primaries
    standbys = fleet_factory(2)
    target = "ipv4:" + ",".join(primary_addresses + standbys.addresses)
    cfg = {**priority_config(list(standbys)), **RETRY}
    failures: list[BaseException] = []
    answered: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    done = threading.Event()
    with lbclient.insecure_channel(target, service_config=cfg) as ch:
        wait_eligible(ch, 4, 20)
        stub = echo_pb2_grpc.EchoStub(ch)

        def caller() -> None:
            for _ in range(20000):
                if done.is_set():
                    return
                try:
                    address = stub.Unary(REQ, timeout=5).address
                except grpc.RpcError as exc:
                    failures.append(exc)
                    return
                with lock:
                    answered[address] += 1

        def on(addresses: Sequence[str]) -> int:
            with lock:
                return sum(answered[a] for a in addresses)

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: on(primary_addresses) >= 200, 15, message="calls flowing")
            assert on(standbys.addresses) == 0
            crash()
            wait_until(lambda: on(standbys.addresses) >= 400 or bool(failures), 15,
                       message="standby taking the calls")
        finally:
            done.set()
            for t in threads:
                t.join(10)
        assert not failures, [(f.code(), f.details()) for f in failures[:3]]  # type: ignore
        assert not any(t.is_alive() for t in threads)
        wait_until(lambda: not any(e.eligible for e in ch.endpoints()
                                   if e.address in primary_addresses), 10,
                   message="crashed primaries no longer eligible")
        counts = spread(stub, 100)
        assert set(counts) == set(standbys.addresses), counts
