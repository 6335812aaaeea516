"""Retries and hedging from the service config (gRFC A6), on another endpoint each time.

    python examples/retries.py

One of three local backends fails every call with UNAVAILABLE. Without a retry policy,
about a third of the calls fail; with ``retryPolicy`` (up to 3 attempts on UNAVAILABLE)
every call succeeds, because lbclient sends each retry to an endpoint the call has not
tried yet. ``retryThrottling`` keeps retries from piling onto a struggling service.
"""

from __future__ import annotations

import time

import grpc

import lbclient
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

ECHO = "lbclient.testing.echo.v1.Echo"

WITH_RETRIES = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": ECHO}],
        "timeout": "2s",
        "retryPolicy": {
            "maxAttempts": 3,
            "initialBackoff": "0.01s",
            "maxBackoff": "0.1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
    "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.5},
}
WITHOUT_RETRIES = {"loadBalancingConfig": [{"round_robin": {}}]}


def run(target: str, service_config: dict, n: int = 30) -> tuple[int, int]:  # type: ignore[type-arg]
    ok = failed = 0
    with lbclient.insecure_channel(target, service_config=service_config) as channel:
        deadline = time.monotonic() + 10      # bounded wait for every connection
        while time.monotonic() < deadline and not all(
                e.connectivity == "READY" for e in channel.endpoints()):
            time.sleep(0.01)
        stub = echo_pb2_grpc.EchoStub(channel)
        for i in range(n):
            try:
                stub.Unary(echo_pb2.EchoRequest(message=f"call {i}"), timeout=2)
                ok += 1
            except grpc.RpcError:
                failed += 1
    return ok, failed


def main() -> int:
    with Fleet(3) as fleet:
        fleet[0].set_error_rate(1.0)          # this backend fails everything
        ok, failed = run(fleet.target, WITHOUT_RETRIES)
        print(f"without retries: {ok} ok, {failed} failed")
        ok, failed = run(fleet.target, WITH_RETRIES)
        print(f"with retryPolicy (3 attempts on UNAVAILABLE): {ok} ok, {failed} failed")
        return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
