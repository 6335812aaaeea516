"""Thread-safety under stress: 16 threads pick while endpoints, connectivity and health
change continuously.

**The race window** (what "no call to an ineligible endpoint" can mean): the balancer
publishes each new picker with one attribute assignment, and a call uses the picker it
read. So a call may still go to an endpoint made ineligible by a change published after
it read the picker - but never to one that no picker it could have read allowed. Here
every state change is numbered (an *epoch*) after its picker is published; a pick that
read epoch ``e0`` before reading the picker and epoch ``e1`` after picking must return an
endpoint eligible in some epoch from ``e0`` to ``e1 + 1`` (``e1 + 1``: a change already
published but not yet numbered). Anything else is a violation. Through a real channel
the same window is measured in time: an attempt may start on a removed endpoint only if
it picked before the removal; ``WINDOW`` after it, none may.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from typing import Any

import grpc
import pytest
from helpers import Clock, Factory, HealthFactory, NoTimers, wait_until

import lbclient
from lbclient import (
    CallOutcome,
    Connectivity,
    Endpoint,
    PickError,
    PickInfo,
    ResolverState,
    ServiceConfigError,
)
from lbclient.balancer.balancer import Balancer
from lbclient.config import HealthCheckConfig, parse_service_config
from lbclient.health.options import parse_balancing_options
from lbclient.health.tracker import HealthReport
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

THREADS = 16
ADDRESSES = [f"10.1.0.{i}:50051" for i in range(1, 9)]
STATES = [Connectivity.READY, Connectivity.READY, Connectivity.TRANSIENT_FAILURE,
          Connectivity.IDLE, Connectivity.CONNECTING]


def _policy(raw: dict[str, Any]) -> Any:
    config = parse_service_config({"loadBalancingConfig": [raw]})
    return config.lb.spec, config.lb.config


def _stress_balancer(policy_raw: dict[str, Any], seconds: float, seed: int, *,
                     driver_outcomes: bool = False, min_ejections: int = 0) -> dict[str, int]:
    """16 picker threads against one driver thread making every change. With
    ``driver_outcomes`` only the driver reports call outcomes (failures that eject, via
    outlier detection) and runs the ejection sweeps on a fake clock, so every change,
    ejections included, is made - and numbered - by the driver. The churn runs for
    ``seconds``, and on (up to 10 s more) until ``min_ejections`` ejections were seen, so
    a busy machine does not make it fail."""
    rng = random.Random(seed)
    factory, health, clock = Factory(), HealthFactory(), Clock()
    bal = Balancer(factory, health_factory=health, scheduler=NoTimers(), rng=random.Random(1),
                   clock=clock)
    bal.set_options(parse_balancing_options({"panicThreshold": 0}))  # eligible == fit
    bal.set_health_check(HealthCheckConfig())
    bal.set_policy(*_policy(policy_raw))
    epochs: list[frozenset[str]] = []

    def publish() -> None:   # after each change: what the published picker may choose
        epochs.append(frozenset(i.address for i in bal.snapshot() if i.eligible))

    publish()
    ejections: list[Any] = []
    bal.add_event_listener(lambda e: ejections.append(e) if e.kind == "ejected" else None)
    stop = threading.Event()
    seen: list[list[tuple[str, int, int]]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    counts = {"picks": 0, "pick_errors": 0, "changes": 0}

    def picker_thread(t: int) -> None:
        out, prng = seen[t], random.Random(t)
        try:
            while not stop.is_set():
                e0 = len(epochs) - 1
                picker = bal.picker
                exclude = frozenset([prng.choice(ADDRESSES)]) if t % 2 else frozenset()
                try:
                    result = picker.pick(PickInfo("/svc/M", (("x-key", str(prng.random())),),
                                                  exclude))
                except PickError:
                    counts["pick_errors"] += 1   # approximate (unlocked): figures only
                    time.sleep(0)
                    continue
                out.append((result.candidate.address, e0, len(epochs) - 1))
                if result.on_done is not None and not driver_outcomes:
                    result.on_done(CallOutcome("OK", 0.001))
        except BaseException as exc:  # noqa: BLE001 - any exception fails the test
            errors.append(exc)

    # start with every endpoint READY and healthy, then churn
    members = list(ADDRESSES)
    bal.update_endpoints([Endpoint(a) for a in members])
    for a in members:
        factory.handles[a].on_state(Connectivity.READY)
        health.report[a](HealthReport("watch", True))
    publish()
    threads = [threading.Thread(target=picker_thread, args=(t,)) for t in range(THREADS)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)   # interleave threads finely: more races per second
    for t in threads:
        t.start()
    end = time.monotonic() + seconds
    hard_end = end + 10.0
    try:
        while True:
            now = time.monotonic()
            if now >= hard_end or (now >= end and len(ejections) >= min_ejections):
                break
            what = rng.random()
            if driver_outcomes and what < 0.3:
                _fail_or_sweep(bal, clock, rng)
            elif what < 0.25 or not members:
                members = rng.sample(ADDRESSES, rng.randint(0, len(ADDRESSES)))
                bal.update_endpoints([Endpoint(a, rng.randint(1, 3)) for a in members])
            elif what < 0.6:
                factory.handles[rng.choice(members)].on_state(rng.choice(STATES))
            else:
                address = rng.choice(members)
                report = health.report.get(address)
                if report is not None:   # the checker of its current READY period
                    report(HealthReport("watch", rng.random() < 0.7))
            publish()
            counts["changes"] += 1
            time.sleep(0)   # let the pickers run between changes
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        sys.setswitchinterval(switch)
        bal.close()
    assert not errors, errors[:3]
    violations = []
    for out in seen:
        for address, e0, e1 in out:
            allowed = frozenset().union(*epochs[e0:e1 + 2])
            if address not in allowed:
                violations.append((address, e0, e1))
    counts["picks"] = sum(len(out) for out in seen)
    counts["ejections"] = len(ejections)
    assert not violations, violations[:5]
    return counts


def _fail_or_sweep(bal: Balancer, clock: Clock, rng: random.Random) -> None:
    """Two failed calls on whatever the picker chooses (consecutiveFailures: 2 ejects
    it), or an ejection sweep half a second later."""
    if rng.random() < 0.7:
        try:
            for _ in range(2):
                result = bal.picker.pick(PickInfo("/svc/M", (("x-key", "k"),)))
                if result.on_done is not None:
                    result.on_done(CallOutcome("UNAVAILABLE", 0.001))
        except PickError:
            pass
    else:
        clock.t += 0.5
        bal.sweep()


def test_sixteen_threads_round_robin_while_everything_changes() -> None:
    counts = _stress_balancer({"round_robin": {}}, seconds=1.5, seed=1)
    assert counts["picks"] > 1000 and counts["changes"] > 200, counts


def test_sixteen_threads_with_stateful_policies() -> None:
    """Policies that keep state across pickers (sticky tables, in-flight counts, hash
    rings rebuilt per change) under the same churn."""
    for seed, raw in enumerate([
            {"sticky": {"sessionHeader": "x-key", "maxSessions": 50,
                        "childPolicy": [{"least_request": {}}]}},
            {"ring_hash": {"requestHashHeader": "x-key", "minRingSize": 64,
                           "maxRingSize": 256}},
            {"weighted_round_robin": {}}, {"peak_ewma": {}}, {"pick_first": {}}]):
        counts = _stress_balancer(raw, seconds=0.6, seed=seed)
        assert counts["picks"] > 100, (raw, counts)


def test_sixteen_threads_while_outlier_detection_ejects_and_readmits() -> None:
    counts = _stress_balancer(
        {"outlier_detection": {"consecutiveFailures": 2, "baseEjectionTime": "1s",
                               "interval": "0.5s", "maxEjectionPercent": 100,
                               "childPolicy": [{"round_robin": {}}]}},
        seconds=1.0, seed=3, driver_outcomes=True, min_ejections=6)
    assert counts["picks"] > 100 and counts["ejections"] > 5, counts


def test_the_window_check_catches_a_stale_picker() -> None:
    """The check can fail: a picker kept from before a removal is a violation."""
    factory = Factory()
    bal = Balancer(factory, scheduler=NoTimers())
    bal.set_policy(*_policy({"round_robin": {}}))
    bal.update_endpoints([Endpoint(ADDRESSES[0])])
    factory.handles[ADDRESSES[0]].on_state(Connectivity.READY)
    stale = bal.picker
    bal.update_endpoints([Endpoint(ADDRESSES[1])])
    epochs = [frozenset(i.address for i in bal.snapshot() if i.eligible)]
    address = stale.pick(PickInfo("/svc/M")).candidate.address
    assert address == ADDRESSES[0] and address not in frozenset().union(*epochs[0:2])
    bal.close()


# --------------------------------------------------------------------------- a real channel

REQ = echo_pb2.EchoRequest(message="stress")
WINDOW = 0.5


def test_sixteen_threads_on_a_real_channel_while_endpoints_and_health_change() -> None:
    rng = random.Random(7)
    with Fleet(4) as fleet, lbclient.insecure_channel(
            fleet.target, service_config={"healthCheckConfig": {"serviceName": ""}}) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        stub.Unary(REQ, timeout=5)
        removed_at: dict[str, float] = {}
        late: list[tuple[str, float]] = []
        lock = threading.Lock()

        def on_attempt(address: str, outcome: CallOutcome) -> None:
            placed = time.monotonic() - outcome.latency
            with lock:
                since = removed_at.get(address)
                if since is not None and placed > since + WINDOW:
                    late.append((address, placed - since))

        ch.add_call_listener(on_attempt)
        stop = threading.Event()
        results: list[list[str]] = [[] for _ in range(THREADS)]

        def caller(t: int) -> None:
            while not stop.is_set():
                try:
                    stub.Unary(REQ, timeout=10)
                    results[t].append("OK")
                except grpc.RpcError as exc:
                    results[t].append(f"{exc.code().name}: {exc.details()}")  # type: ignore[attr-defined]
                except Exception as exc:  # noqa: BLE001 - reported below
                    results[t].append(f"exception {exc!r}")

        threads = [threading.Thread(target=caller, args=(t,)) for t in range(THREADS)]
        for t in threads:
            t.start()
        end = time.monotonic() + 3.0
        try:
            while time.monotonic() < end:
                keep = rng.sample(fleet.addresses, rng.randint(1, 4))
                # drop the removal marks of re-added endpoints, then apply the new set
                # as a resolver would, and mark what it removed once it is applied
                before = {e.address for e in ch.endpoints()}
                with lock:
                    for a in keep:
                        removed_at.pop(a, None)
                ch.on_resolved(ResolverState(tuple(Endpoint(a) for a in keep)))
                with lock:
                    for a in before - set(keep):
                        removed_at[a] = time.monotonic()
                for b in fleet:  # health flips, never every member at once
                    b.set_health(rng.random() < 0.7 or b.address == keep[0])
                time.sleep(rng.uniform(0.02, 0.1))
        finally:
            stop.set()
            for t in threads:
                t.join(15)
            for b in fleet:
                b.set_health(True)
        outcomes = [r for out in results for r in out]
        failures = [r for r in outcomes if r != "OK"]
        assert len(outcomes) > 100
        assert not [r for r in failures if r.startswith("exception")], failures[:5]
        assert not failures, failures[:5]
        assert not late, late[:5]
        # and the channel still works
        wait_until(lambda: stub.Unary(REQ, timeout=5) is not None, timeout=5)


def test_bad_config_from_the_resolver_while_calls_run() -> None:
    """A resolver alternating good and bad service configs while 16 threads call: the
    bad ones are ignored (logged), calls go on."""
    with Fleet(2) as fleet, lbclient.insecure_channel(fleet.target) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        stub.Unary(REQ, timeout=5)
        endpoints = tuple(Endpoint(a) for a in fleet.addresses)
        stop = threading.Event()
        failures: list[str] = []

        def caller() -> None:
            while not stop.is_set():
                try:
                    stub.Unary(REQ, timeout=10)
                except Exception as exc:  # noqa: BLE001 - reported below
                    failures.append(repr(exc))

        threads = [threading.Thread(target=caller) for _ in range(THREADS)]
        for t in threads:
            t.start()
        configs = [{"loadBalancingConfig": [{"least_request": {}}]},
                   {"loadBalancingConfig": [{"no_such_policy": {}}]},
                   {"loadBalancingConfig": [{"ring_hash": {"minRingSize": 0}}]},
                   {"loadBalancingConfig": [{"round_robin": {}}]}]
        for i in range(200):
            ch.on_resolved(ResolverState(endpoints, service_config=configs[i % 4]))
        stop.set()
        for t in threads:
            t.join(15)
        assert not failures, failures[:5]
        for bad in configs[1:3]:   # those two really are rejected
            with pytest.raises(ServiceConfigError):
                parse_service_config(bad)
        assert ch.service_config is not None and ch.service_config.lb.name == "round_robin"
