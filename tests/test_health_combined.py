"""Health, ejection, panic threshold and slow start together, on real backends."""

from __future__ import annotations

import collections
import random
import time
from typing import Any

import grpc
from helpers import wait_until

import lbclient
from lbclient.endpoint import Endpoint
from lbclient.resolver.base import ResolverState
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")
RR = [{"round_robin": {}}]


def eligible(ch: lbclient.LoadBalancedChannel) -> set[str]:
    return {e.address for e in ch.endpoints() if e.eligible}


def spread(ch: lbclient.LoadBalancedChannel, n: int) -> collections.Counter[str]:
    stub = echo_pb2_grpc.EchoStub(ch)
    return collections.Counter(stub.Unary(REQ, timeout=5).address for _ in range(n))


def test_panic_mode_uses_unhealthy_endpoints_rather_than_one_survivor(fleet: Fleet) -> None:
    fleet[0].set_health(False)
    fleet[1].set_health(False)
    cfg: dict[str, Any] = {"loadBalancingConfig": RR, "healthCheckConfig": {}}
    with lbclient.insecure_channel(fleet.target, service_config=cfg) as ch:
        wait_until(lambda: all(e.health in ("healthy", "unhealthy") for e in ch.endpoints()),
                   10, message="every first answer")
        assert eligible(ch) == set(fleet.addresses)       # 1 of 3 fit: 33% < 50%
        assert all(e.panic for e in ch.endpoints())
        assert set(spread(ch, 30)) == set(fleet.addresses)
        fleet[1].set_health(True)                          # 2 of 3 fit: panic over
        wait_until(lambda: not ch.endpoints()[0].panic, 10, message="panic over")
        assert set(spread(ch, 30)) == set(fleet.addresses[1:])
    strict = {**cfg, "lbclient": {"panicThreshold": 0}}
    fleet[1].set_health(False)
    with lbclient.insecure_channel(fleet.target, service_config=strict) as ch:
        wait_until(lambda: all(e.health in ("healthy", "unhealthy") for e in ch.endpoints()),
                   10, message="every first answer")
        assert set(spread(ch, 30)) == {fleet.addresses[2]}
        fleet[2].set_health(False)
        wait_until(lambda: not eligible(ch), 10, message="none eligible")
        try:
            echo_pb2_grpc.EchoStub(ch).Unary(REQ, timeout=5)
            raise AssertionError("a call succeeded with every endpoint unhealthy")
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.UNAVAILABLE
            assert "3 unhealthy" in (exc.details() or "")


def test_slow_start_ramps_a_new_backend_under_a_weighted_policy(fleet_factory: Any) -> None:
    fleet = fleet_factory(3)
    cfg = {"loadBalancingConfig": [{"random": {}}],
           "lbclient": {"slowStartConfig": {"slowStartWindow": "2s", "minWeightPercent": 10}}}
    first = tuple(Endpoint(a) for a in fleet.addresses[:2])
    with lbclient.insecure_channel("ipv4:" + ",".join(fleet.addresses[:2]),
                                   service_config=cfg, rng=random.Random(4)) as ch:
        wait_until(lambda: len(eligible(ch)) == 2, 10, message="two eligible")
        wait_until(lambda: all(e.slow_start is None for e in ch.endpoints()), 10,
                   message="initial ramp over")
        new = fleet.addresses[2]
        ch.on_resolved(ResolverState((*first, Endpoint(new))))
        wait_until(lambda: new in eligible(ch), 10, message="new endpoint eligible")
        info = next(e for e in ch.endpoints() if e.address == new)
        assert info.slow_start is not None and info.effective_weight < 1.0
        early = spread(ch, 400)
        # factor = max(elapsed, 1 s) / 2 s: 0.5 during the first second (share 20%),
        # up to 1 at the end of the window (share 33%)
        assert early[new] / 400 < 0.29, early
        wait_until(lambda: next(e for e in ch.endpoints() if e.address == new).slow_start
                   is None, 10, message="ramp over")
        late = spread(ch, 600)
        assert late[new] / 600 > 0.26, late
        assert next(e for e in ch.endpoints() if e.address == new).effective_weight == 1.0


def test_a_new_outlier_config_keeps_ejections(fleet: Fleet) -> None:
    od = {"consecutiveFailures": 2, "baseEjectionTime": "30s", "childPolicy": RR}
    with lbclient.insecure_channel(
            fleet.target, service_config=None) as ch:
        ch.on_resolved(ResolverState(tuple(Endpoint(a) for a in fleet.addresses),
                                     {"loadBalancingConfig": [{"outlier_detection": od}]}))
        wait_until(lambda: len(eligible(ch)) == 3, 10, message="all eligible")
        fleet[0].set_error_rate(1.0)
        stub = echo_pb2_grpc.EchoStub(ch)
        for _ in range(9):
            try:
                stub.Unary(REQ, timeout=5)
            except grpc.RpcError:
                pass
        assert eligible(ch) == set(fleet.addresses[1:])
        # the resolver delivers a changed config: A50 keeps ejections and multipliers
        ch.on_resolved(ResolverState(
            tuple(Endpoint(a) for a in fleet.addresses),
            {"loadBalancingConfig": [{"outlier_detection": {**od, "consecutiveFailures": 3}}]}))
        assert ch.service_config is not None
        assert ch.service_config.lb.config.outlier.consecutive_failures == 3
        info = next(e for e in ch.endpoints() if e.address == fleet.addresses[0])
        assert info.ejected and info.ejections == 1
        # a config without outlier detection readmits at once
        ch.on_resolved(ResolverState(tuple(Endpoint(a) for a in fleet.addresses),
                                     {"loadBalancingConfig": RR}))
        assert eligible(ch) == set(fleet.addresses)


def test_ejection_and_health_together_readmit_only_after_good_probes(fleet: Fleet) -> None:
    cfg = {"loadBalancingConfig": [{"outlier_detection": {
        "interval": "0.1s", "baseEjectionTime": "0.3s", "consecutiveFailures": 2,
        "childPolicy": RR}}],
        "healthCheckConfig": {"interval": "0.1s", "healthyThreshold": 2}}
    with lbclient.insecure_channel(fleet.target, service_config=cfg) as ch:
        events: list[tuple[float, lbclient.EndpointEvent]] = []
        ch.add_event_listener(lambda e: events.append((time.monotonic(), e)))
        wait_until(lambda: len(eligible(ch)) == 3, 10, message="all eligible")
        bad = fleet[0]
        bad.set_error_rate(1.0)
        stub = echo_pb2_grpc.EchoStub(ch)
        for _ in range(12):
            try:
                stub.Unary(REQ, timeout=5)
            except grpc.RpcError:
                pass
        wait_until(lambda: any(e.kind == "ejected" for _, e in events), 10, message="ejected")
        bad.set_health(False)            # ... and NOT_SERVING while ejected
        bad.set_error_rate(0.0)
        time.sleep(0.8)                  # well past the 0.3 s ejection
        info = next(e for e in ch.endpoints() if e.address == bad.address)
        assert info.ejected and not info.eligible and info.health == "unhealthy"
        assert "awaiting 2 good health probes" in info.eject_reason
        checks = bad.health_calls
        assert checks >= 3               # the Watch plus Check probes while ejected
        t_ok = time.monotonic()
        bad.set_health(True)
        wait_until(lambda: bad.address in eligible(ch), 10, message="back")
        readmit = [t for t, e in events if e.kind == "readmitted" and e.address == bad.address]
        assert len(readmit) == 1 and readmit[0] > t_ok
        assert bad.health_calls >= checks + 2     # two good probes after SERVING
