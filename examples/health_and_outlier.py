"""Health checking and outlier detection: bad endpoints leave the rotation, and return.

    python examples/health_and_outlier.py

Four local backends: one answers every call with UNAVAILABLE (a "gray failure": its
health service still says SERVING), one reports NOT_SERVING on grpc.health.v1. The
channel's service config turns on active health checks (``healthCheckConfig``) and
passive outlier detection (``outlier_detection`` around ``round_robin``, with
``consecutiveFailures`` so the failing backend is ejected after a few calls). Endpoint
events are printed as they happen; then the failing backend recovers and is readmitted.
"""

from __future__ import annotations

import logging
import time

import grpc

import lbclient
from lbclient.testing import NOT_SERVING, Fleet, echo_pb2, echo_pb2_grpc

SERVICE_CONFIG = {
    "loadBalancingConfig": [{"outlier_detection": {
        "interval": "0.5s", "baseEjectionTime": "1s", "maxEjectionPercent": 50,
        "consecutiveFailures": 3,
        "childPolicy": [{"round_robin": {}}]}}],
    "healthCheckConfig": {"serviceName": ""},
    # Envoy's panic threshold (default 50): with fewer fit endpoints than this percentage,
    # lbclient ignores health rather than pile every call on the survivors.
    "lbclient": {"panicThreshold": 25},
}


def call_many(stub: echo_pb2_grpc.EchoStub, n: int) -> tuple[int, int]:
    ok = failed = 0
    for _ in range(n):
        try:
            stub.Unary(echo_pb2.EchoRequest(message="hi"), timeout=2)
            ok += 1
        except grpc.RpcError:
            failed += 1
    return ok, failed


def wait_for(predicate, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="  log: %(name)s: %(message)s")
    with Fleet(4, names=["good-1", "good-2", "failing", "draining"]) as fleet:
        names = {b.address: b.name for b in fleet}
        failing, draining = fleet.by_name("failing"), fleet.by_name("draining")
        failing.set_error_rate(1.0)              # every Echo call fails UNAVAILABLE
        draining.set_health(NOT_SERVING)         # grpc.health.v1 says NOT_SERVING

        with lbclient.insecure_channel(fleet.target, service_config=SERVICE_CONFIG) as ch:
            ch.add_event_listener(
                lambda e: print(f"  event: {e.kind:<14} {names.get(e.address, e.address)}"
                                f"  {e.reason}"))
            wait_for(lambda: any(e.eligible for e in ch.endpoints()), 10)
            stub = echo_pb2_grpc.EchoStub(ch)

            ok, failed = call_many(stub, 60)
            print(f"60 calls: {ok} ok, {failed} failed (the failing backend is ejected "
                  "after 3 failures in a row; the NOT_SERVING one is never picked)")
            if failed > 10:
                print("unexpected: the failing backend was not ejected")
                return 1
            state = {names[e.address]: e for e in ch.endpoints()}
            print(f"failing ejected: {state['failing'].ejected_until is not None}; "
                  f"draining healthy: {state['draining'].healthy}")

            print("recovering both backends ...")
            failing.set_error_rate(0.0)
            draining.set_health(True)
            back = wait_for(lambda: all(e.eligible for e in ch.endpoints()), 15)
            print(f"all endpoints eligible again: {back}")
            ok, failed = call_many(stub, 30)
            print(f"30 calls after recovery: {ok} ok, {failed} failed")
            return 0 if back and failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
