"""Passive outlier detection on real backends: the seed's practice 2 scaled down (a
backend fails from t=1 s to t=3 s under steady traffic), failure codes, events and logs."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from helpers import wait_until

import lbclient
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")
RR = [{"round_robin": {}}]


def all_eligible(ch: lbclient.LoadBalancedChannel, n: int) -> bool:
    return sum(e.eligible for e in ch.endpoints()) == n


@dataclass
class Run:
    calls: Counter[str] = field(default_factory=Counter)     # successes per backend
    failed: list[float] = field(default_factory=list)        # end times of failed calls
    total_in_fault: int = 0
    events: list[tuple[float, lbclient.EndpointEvent]] = field(default_factory=list)
    t_fail: float = 0.0
    t_recover: float = 0.0

    def times(self, kind: str, address: str) -> list[float]:
        return [t for t, e in self.events if e.kind == kind and e.address == address]


def practice_2(fleet: Fleet, od: dict[str, Any], *, threads: int = 2,
               fail_at: float = 1.0, recover_at: float = 3.0,
               end_at: float = 4.5) -> tuple[Run, lbclient.LoadBalancedChannel]:
    """Steady traffic; ``fleet[0]`` answers UNAVAILABLE to everything from ``fail_at`` to
    ``recover_at`` (seconds from the start). Returns the record and the open channel."""
    cfg = {"loadBalancingConfig": [{"outlier_detection": {**od, "childPolicy": RR}}]}
    ch = lbclient.insecure_channel(fleet.target, service_config=cfg)
    run = Run()
    ch.add_event_listener(lambda e: run.events.append((time.monotonic(), e)))
    wait_until(lambda: all_eligible(ch, len(fleet)), 10, message="all eligible")
    stub = echo_pb2_grpc.EchoStub(ch)
    lock = threading.Lock()
    t0 = time.monotonic()
    run.t_fail, run.t_recover = t0 + fail_at, t0 + recover_at
    stop = t0 + end_at

    def traffic() -> None:
        while time.monotonic() < stop:
            try:
                address = stub.Unary(REQ, timeout=2).address
            except grpc.RpcError:
                address = None
            now = time.monotonic()
            with lock:
                if address is None:
                    run.failed.append(now)
                else:
                    run.calls[address] += 1
                if run.t_fail <= now < run.t_recover:
                    run.total_in_fault += 1
            time.sleep(0.004)

    workers = [threading.Thread(target=traffic, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    time.sleep(max(run.t_fail - time.monotonic(), 0))
    fleet[0].set_error_rate(1.0)
    time.sleep(max(run.t_recover - time.monotonic(), 0))
    fleet[0].set_error_rate(0.0)
    for w in workers:
        w.join(end_at + 10)
    assert not any(w.is_alive() for w in workers)
    return run, ch


def report(name: str, run: Run, bad: str) -> tuple[float, float]:
    ejected, readmitted = run.times("ejected", bad), run.times("readmitted", bad)
    downtime = (readmitted[-1] - ejected[0]) if ejected and readmitted else float("nan")
    first = ejected[0] - run.t_fail if ejected else float("nan")
    print(f"\n{name}: calls per backend {dict(run.calls)}, failed {len(run.failed)} "
          f"(of {run.total_in_fault} calls during the fault), first ejection "
          f"{first * 1000:.0f} ms after the fault, ejections {len(ejected)}, "
          f"detected downtime {downtime:.2f} s (fault lasted "
          f"{run.t_recover - run.t_fail:.2f} s)")
    return first, downtime


def check_recovery(run: Run, ch: lbclient.LoadBalancedChannel, fleet: Fleet) -> None:
    bad = fleet.addresses[0]
    wait_until(lambda: not next(e for e in ch.endpoints() if e.address == bad).ejected,
               15, message="readmitted after recovery")
    assert run.times("readmitted", bad)[-1] > run.t_recover - 0.5
    # no failure once the backend recovered (a call already on the wire may end late)
    assert all(t < run.t_recover + 0.5 for t in run.failed), run.failed
    stub = echo_pb2_grpc.EchoStub(ch)
    fleet.reset_counters()
    for _ in range(30):
        stub.Unary(REQ, timeout=5)
    assert fleet[0].calls > 0                    # picked again


def test_practice_2_failure_percentage_ejects_within_an_interval(fleet: Fleet) -> None:
    interval = 0.5
    od = {"interval": f"{interval}s", "baseEjectionTime": "1s", "maxEjectionTime": "1s",
          "maxEjectionPercent": 34,
          "failurePercentageEjection": {"minimumHosts": 3, "requestVolume": 5}}
    run, ch = practice_2(fleet, od)
    with ch:
        first, _ = report("outlier detection (failure percentage)", run, fleet.addresses[0])
        # detection waits for the next sweep: within one interval (+ slack for a busy box)
        assert 0 <= first <= interval + 1.5, first
        # and it limits the damage: fewer failures than the backend's 1/3 share
        assert run.total_in_fault > 30
        assert len(run.failed) < run.total_in_fault / 3
        check_recovery(run, ch, fleet)
        assert run.calls[fleet.addresses[1]] > 0 and run.calls[fleet.addresses[2]] > 0


def test_practice_2_consecutive_failures_eject_within_n_calls(fleet: Fleet) -> None:
    n, threads = 3, 2
    od = {"interval": "0.5s", "baseEjectionTime": "1s", "maxEjectionTime": "1s",
          "consecutiveFailures": n}
    run, ch = practice_2(fleet, od, threads=threads)
    with ch:
        report("consecutive failures", run, fleet.addresses[0])
        ejections = run.times("ejected", fleet.addresses[0])
        assert ejections and ejections[0] - run.t_fail < 1.5
        # each ejection costs at most N failures plus the calls already in flight
        assert len(run.failed) <= len(ejections) * (n + threads), (len(run.failed), ejections)
        check_recovery(run, ch, fleet)


def _ejected_after(fleet: Fleet, code: grpc.StatusCode, od: dict[str, Any],
                   calls: int = 40) -> bool:
    cfg = {"loadBalancingConfig": [{"outlier_detection": {**od, "childPolicy": RR}}]}
    with lbclient.insecure_channel(fleet.target, service_config=cfg) as ch:
        wait_until(lambda: all_eligible(ch, len(fleet)), 10, message="all eligible")
        fleet[0].set_error_rate(1.0, code)
        stub = echo_pb2_grpc.EchoStub(ch)
        for _ in range(calls):
            try:
                stub.Unary(REQ, timeout=5)
            except grpc.RpcError:
                pass
        return next(e for e in ch.endpoints() if e.address == fleet.addresses[0]).ejected


def test_request_errors_do_not_eject_unless_listed(fleet: Fleet) -> None:
    od = {"consecutiveFailures": 3, "baseEjectionTime": "30s"}
    assert not _ejected_after(fleet, grpc.StatusCode.INVALID_ARGUMENT, od)
    assert _ejected_after(fleet, grpc.StatusCode.INVALID_ARGUMENT,
                          {**od, "failureStatusCodes": ["INVALID_ARGUMENT"]})
    fleet[0].set_error_rate(0.0)
    assert _ejected_after(fleet, grpc.StatusCode.RESOURCE_EXHAUSTED, od)


def test_events_reach_listeners_and_logs(fleet: Fleet,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lbclient.events")
    cfg = {"loadBalancingConfig": [{"outlier_detection_experimental": {
        "consecutiveFailures": 2, "baseEjectionTime": "30s", "childPolicy": RR}}]}
    got: list[lbclient.EndpointEvent] = []
    with lbclient.insecure_channel(fleet.target, service_config=cfg) as ch:
        ch.add_event_listener(got.append)
        wait_until(lambda: all_eligible(ch, 3), 10, message="all eligible")
        fleet[1].set_error_rate(1.0)
        stub = echo_pb2_grpc.EchoStub(ch)
        for _ in range(12):
            try:
                stub.Unary(REQ, timeout=5)
            except grpc.RpcError:
                pass
        info = next(e for e in ch.endpoints() if e.address == fleet.addresses[1])
        assert info.ejected and info.eject_reason == "2 consecutive failures"
        assert info.ejected_until is not None and info.ejected_until > time.monotonic() + 20
        assert info.recent_failures == 2 and info.ejections == 1
        ch.remove_event_listener(got.append)
    ejected = [e for e in got if e.kind == "ejected"]
    assert [e.address for e in ejected] == [fleet.addresses[1]]
    assert f"endpoint {fleet.addresses[1]}: ejected (2 consecutive failures)" in caplog.text
    assert sum(1 for e in got if e.kind == "added") == 0     # registered after the adds
