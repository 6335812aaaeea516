"""asyncio: ``lbclient.aio`` channels are ``grpc.aio.Channel``s with the same balancing.

    python examples/asyncio_example.py

Generated stubs work with them unchanged (``await stub.Unary(...)``). Here 20 concurrent
workers send 300 calls through ``least_request`` to three local backends, one of them slow; the slow
one gets the smallest share because it always has the most calls in flight.
"""

from __future__ import annotations

import asyncio
import collections

import lbclient.aio
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

SERVICE_CONFIG = {"loadBalancingConfig": [{"least_request": {"choiceCount": 2}}]}


async def run(target: str) -> collections.Counter[str]:
    async with lbclient.aio.insecure_channel(target, service_config=SERVICE_CONFIG) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
        stub = echo_pb2_grpc.EchoStub(channel)
        answered_by: collections.Counter[str] = collections.Counter()

        async def worker(w: int) -> None:
            # A closed loop: each worker sends its next call when the last one returns,
            # so the slow backend holds more calls in flight and is picked less.
            for i in range(15):
                reply = await stub.Unary(echo_pb2.EchoRequest(message=f"{w}/{i}"), timeout=5,
                                         wait_for_ready=True)
                answered_by[reply.backend] += 1

        await asyncio.gather(*(worker(w) for w in range(20)))
        return answered_by


def main() -> int:
    with Fleet(3, names=["fast-1", "fast-2", "slow"]) as fleet:
        fleet.by_name("slow").set_latency(0.05)
        answered_by = asyncio.run(run(fleet.target))
        total = sum(answered_by.values())
        for name in ("fast-1", "fast-2", "slow"):
            print(f"{name}: {answered_by[name]} calls ({answered_by[name] / total:.0%})")
        return 0 if total == 300 else 1


if __name__ == "__main__":
    raise SystemExit(main())
