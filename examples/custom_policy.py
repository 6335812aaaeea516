"""A load-balancing policy written in Python and registered by name.

    python examples/custom_policy.py

``fastest_of_two``: pick two endpoints at random and take the one whose observed latency
(the per-endpoint EWMA lbclient keeps for every endpoint) is lower: a tiny latency-aware
power-of-two-choices. A policy is a config parser plus a ``Policy`` whose
``build_picker`` returns an immutable picker; the balancer calls it again whenever the
eligible endpoints change, and ``pick()`` runs on caller threads without locks.
"""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lbclient
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

WARM_UP = 5     # calls an endpoint gets before its latency average counts


@dataclass(frozen=True)
class Config:
    seed: int | None = None


def parse_config(raw: Any, path: str) -> Config:
    """Fill defaults; reject bad values with the JSON path (like the built-in policies)."""
    raw = raw or {}
    unknown = set(raw) - {"seed"}
    if unknown:
        raise lbclient.ServiceConfigError(f"{path}.{sorted(unknown)[0]}", "unknown field")
    seed = raw.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise lbclient.ServiceConfigError(f"{path}.seed", "must be an integer")
    return Config(seed)


class FastestOfTwoPicker:
    """Immutable: a tuple of candidates and a random source (no locks, no I/O)."""

    def __init__(self, candidates: Sequence[lbclient.Candidate], rng: random.Random) -> None:
        self._candidates = tuple(candidates)
        self._rng = rng

    def pick(self, info: lbclient.PickInfo) -> lbclient.PickResult:
        if len(self._candidates) == 1:
            return lbclient.PickResult(self._candidates[0])
        a, b = self._rng.sample(self._candidates, 2)

        def cost(c: lbclient.Candidate) -> float:
            ewma = c.stats.latency_ewma            # None until the endpoint's first call
            if ewma is None or c.stats.calls < WARM_UP:
                return 0.0      # too few samples to judge (one cold call must not starve it)
            return ewma * (c.stats.in_flight + 1)

        return lbclient.PickResult(a if cost(a) <= cost(b) else b)


class FastestOfTwo(lbclient.Policy):
    config: Config

    def build_picker(self, candidates: Sequence[lbclient.Candidate]) -> FastestOfTwoPicker:
        rng = random.Random(self.config.seed) if self.config.seed is not None else self.ctx.rng
        return FastestOfTwoPicker(candidates, rng)


lbclient.register_policy(lbclient.PolicySpec("fastest_of_two", parse_config, FastestOfTwo))


def main() -> int:
    with Fleet(3, names=["fast-1", "fast-2", "slow"]) as fleet:
        fleet.by_name("slow").set_latency(0.03)
        config = {"loadBalancingConfig": [{"fastest_of_two": {"seed": 1}}]}
        with lbclient.insecure_channel(fleet.target, service_config=config) as channel:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not all(
                    e.connectivity == "READY" for e in channel.endpoints()):
                time.sleep(0.01)
            stub = echo_pb2_grpc.EchoStub(channel)
            answered_by: collections.Counter[str] = collections.Counter()
            for i in range(200):
                reply = stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5)
                answered_by[reply.backend] += 1
        for name in ("fast-1", "fast-2", "slow"):
            print(f"{name}: {answered_by[name]} of 200 calls")
        # The slow backend wins a draw only against an endpoint still warming up (or a
        # fast one with many calls in flight), so it gets far less than 1/3.
        return 0 if answered_by["slow"] < 200 / 3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
