"""Shared helpers for the policy tests (no tests here): fake candidates, a manual clock
and scheduler, policy construction from JSON, and channel helpers for real backends."""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from helpers import wait_ready

import lbclient
from lbclient.balancer.picker import Candidate, EndpointStats, PickInfo
from lbclient.balancer.policy import PolicyContext, get_policy, parse_lb_config_list
from lbclient.endpoint import Endpoint
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

METHOD = "/lbclient.testing.echo.v1.Echo/Unary"
REQ = echo_pb2.EchoRequest(message="x")

# The policies of this work, each with a config that gives it something to do.
POLICY_CONFIGS: dict[str, dict[str, Any]] = {
    "weighted_round_robin": {},
    "least_connections": {},
    "least_request": {},
    "random": {},
    "ring_hash": {"requestHashHeader": "x-key"},
    "maglev": {"requestHashHeader": "x-key", "tableSize": 251},
    "sticky": {"sessionHeader": "x-session"},
    "peak_ewma": {},
}


class ManualClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _Timer:
    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when, self.fn, self.cancelled = when, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class ManualScheduler:
    """``call_later`` records timers; ``run_due()`` runs those due on the manual clock."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.timers: list[_Timer] = []

    def call_later(self, delay: float, fn: Callable[[], None]) -> _Timer:
        t = _Timer(self.clock() + delay, fn)
        self.timers.append(t)
        return t

    def run_due(self) -> int:
        due = [t for t in self.timers if not t.cancelled and t.when <= self.clock()]
        self.timers = [t for t in self.timers if t not in due and not t.cancelled]
        for t in due:
            t.fn()
        return len(due)


def candidates(n: int, weights: Sequence[float] | None = None,
               clock: Callable[[], float] = time.monotonic,
               prefix: str = "10.0.0.") -> list[Candidate]:
    ws = list(weights) if weights is not None else [1] * n
    out = []
    for i in range(n):
        w = ws[i]
        ep = Endpoint(f"{prefix}{i + 1}:50051", int(w) if float(w).is_integer() else 1)
        out.append(Candidate(ep, w, EndpointStats(clock), handle=None))
    return out


def make_policy(name: str, raw: Any = None, *, seed: int = 1,
                clock: Callable[[], float] = time.monotonic,
                scheduler: Any = None, rebuild: Callable[[], None] = lambda: None) -> Any:
    spec = get_policy(name)
    assert spec is not None, name
    config = spec.parse_config(raw if raw is not None else {}, name)
    ctx = PolicyContext(clock=clock, rng=random.Random(seed), scheduler=scheduler,
                        request_rebuild=rebuild)
    return spec.create(config, ctx)


def parse(entry: dict[str, Any]) -> Any:
    """Parse a one-policy loadBalancingConfig list and return the config."""
    return parse_lb_config_list([entry], "loadBalancingConfig").config


def info(key: str | None = None, header: str = "x-key",
         exclude: Iterable[str] = ()) -> PickInfo:
    md = ((header, key),) if key is not None else ()
    return PickInfo(METHOD, md, frozenset(exclude))


def counts(picker: Any, n: int, pick_info: PickInfo | None = None) -> collections.Counter[str]:
    pi = pick_info or info()
    return collections.Counter(picker.pick(pi).candidate.address for _ in range(n))


def run_threads(n: int, fn: Callable[[int], None], timeout: float = 30.0) -> None:
    """Run ``fn(i)`` on ``n`` threads started together; re-raise the first error."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            barrier.wait(timeout)
            fn(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "worker thread hung"
    if errors:
        raise errors[0]


def channel(fleet: Fleet, policy: dict[str, Any], n_ready: int | None = None,
            **kwargs: Any) -> lbclient.LoadBalancedChannel:
    ch = lbclient.insecure_channel(fleet.target,
                                   service_config={"loadBalancingConfig": [policy]}, **kwargs)
    try:
        wait_ready(ch, len(fleet) if n_ready is None else n_ready)
    except BaseException:
        ch.close()
        raise
    return ch


def call_counts(ch: lbclient.LoadBalancedChannel, n: int,
                metadata: Callable[[int], Any] | None = None) -> collections.Counter[str]:
    stub = echo_pb2_grpc.EchoStub(ch)
    return collections.Counter(
        stub.Unary(REQ, timeout=10, metadata=metadata(i) if metadata else None).address
        for i in range(n))
