"""Distribution of every simple policy on real backends, and the load-aware policies
(least_connections, least_request, peak_ewma) against one backend 20x slower under 8
threads: its share of calls must be well below round robin's 1/3. Exact figures are in
benchmarks/bench_slow_backend.py; the bounds here are generous."""

from __future__ import annotations

import collections
import threading

import pytest
from test_policy_support import REQ, call_counts, channel, run_threads

from lbclient.testing import Fleet, echo_pb2_grpc

SIMPLE = ["least_connections", "least_request", "random", "peak_ewma"]


@pytest.mark.parametrize("name", SIMPLE)
def test_every_backend_gets_calls(name: str, fleet: Fleet) -> None:
    with channel(fleet, {name: {}}) as ch:
        got = call_counts(ch, 600)
    assert set(got) == set(fleet.addresses)
    if name != "peak_ewma":  # latency-aware: may favour whoever answered fastest
        assert min(got.values()) > 120, got
    assert sum(fleet.calls().values()) == 600


@pytest.mark.parametrize("name", ["random", "least_request", "least_connections"])
def test_weights_map_on_real_backends(name: str, fleet: Fleet) -> None:
    a, b, c = fleet.addresses
    with channel(fleet, {name: {"weights": {a: 1, b: 1, c: 4}}}) as ch:
        got = call_counts(ch, 1200)
    assert 0.55 < got[c] / 1200 < 0.78, got  # 4/6 of the calls


def _share_to_slow(fleet: Fleet, policy: dict[str, object], calls_per_thread: int) -> float:
    slow = fleet[0].address
    seen: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    with channel(fleet, policy) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)

        def work(_: int) -> None:
            mine = collections.Counter(stub.Unary(REQ, timeout=20).address
                                       for _ in range(calls_per_thread))
            with lock:
                seen.update(mine)

        run_threads(8, work, timeout=120)
    assert sum(seen.values()) == 8 * calls_per_thread
    return seen[slow] / sum(seen.values())


def test_slow_backend_gets_far_less_than_round_robin(
        fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    fleet[0].set_latency(0.100)   # 20x slower than the others
    fleet[1].set_latency(0.005)
    fleet[2].set_latency(0.005)
    shares = {"round_robin": _share_to_slow(fleet, {"round_robin": {}}, 12)}
    for name in ("least_connections", "least_request", "peak_ewma"):
        shares[name] = _share_to_slow(fleet, {name: {}}, 40)
    with capsys.disabled():
        print("\nshare of calls to the 20x slower backend, 8 threads: "
              + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
    assert abs(shares["round_robin"] - 1 / 3) < 0.02
    assert shares["least_connections"] < 0.15
    assert shares["least_request"] < 0.22   # A48 samples with replacement: >= 1/9 floor
    assert shares["peak_ewma"] < 0.15
