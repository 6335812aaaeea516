"""Quick start: a load-balanced channel over three local fake backends.

    python examples/quickstart.py

``lbclient.insecure_channel`` is a drop-in for ``grpc.insecure_channel``: generated stubs
work unchanged, and every call is balanced over the target's endpoints.
"""

from __future__ import annotations

import collections
import time

import lbclient
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc


def main() -> int:
    with Fleet(3) as fleet:                       # three real gRPC servers on 127.0.0.1
        print(f"target: {fleet.target}")
        with lbclient.insecure_channel(
            fleet.target,                         # "ipv4:127.0.0.1:p1,127.0.0.1:p2,..."
            service_config={"loadBalancingConfig": [{"round_robin": {}}]},
        ) as channel:
            # Connections open in the background; wait (bounded) until all are READY so
            # that the split below is the policy's, not the connection race's.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not all(
                    e.connectivity == "READY" for e in channel.endpoints()):
                time.sleep(0.01)
            stub = echo_pb2_grpc.EchoStub(channel)
            answered_by: collections.Counter[str] = collections.Counter()
            for i in range(9):
                reply = stub.Unary(echo_pb2.EchoRequest(message=f"hello {i}"), timeout=5,
                                   wait_for_ready=True)
                answered_by[reply.backend] += 1
            print("calls per backend:", dict(answered_by))
            for info in channel.endpoints():
                print(f"  {info.address}: {info.connectivity}, {info.calls} calls, "
                      f"in flight {info.in_flight}")
            assert sum(answered_by.values()) == 9
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
