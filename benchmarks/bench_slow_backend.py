"""Scenario 2 — heterogeneous backends: one of three is 20x slower (100 ms vs 5 ms).

Eight client threads call Echo.Unary back to back for a fixed time through each variant:
grpcio's native ``round_robin`` channel (``grpc.insecure_channel`` with a
``loadBalancingConfig`` service config) and lbclient channels with each policy. Reported
per variant: the share of calls that went to the slow backend, calls/s, and p50/p99
latency. Round robin sends the slow backend 1/3 of the calls whatever its speed; the
load-aware policies should send it far less, and so finish more calls in the same time.

The backends run in two child processes (2 fast, 1 slow; ``python -m lbclient.testing
serve``), so the client process measures only itself. Variants are interleaved across
repetitions (A B C, B C A, ...) and tables show median (min–max).

Run: ``.venv/bin/python -m benchmarks.bench_slow_backend [--quick]``; also a scenario of
``python -m benchmarks.run``.
"""

from __future__ import annotations

import collections
import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc

import lbclient
from benchmarks._common import (
    BackendProcess,
    Section,
    Table,
    fmt_summary,
    interleave,
    standalone_main,
    summarize,
)
from lbclient.balancer.policy import get_policy
from lbclient.testing import echo_pb2, echo_pb2_grpc

SCENARIO = 2
TITLE = "Heterogeneous backends: one of three 20x slower, 8 threads"
FAST_MS, SLOW_MS = 5.0, 100.0
HASH_HEADER = "x-lb-key"
POLICIES: dict[str, dict[str, Any]] = {
    "round_robin": {},
    "weighted_round_robin": {},
    "random": {},
    "least_connections": {},
    "least_request": {},
    "peak_ewma": {},
    "ring_hash": {"requestHashHeader": HASH_HEADER},
}
LOCAL_POOL = ("grpc.use_local_subchannel_pool", 1)


@dataclass(frozen=True)
class Settings:
    threads: int = 8
    seconds: float = 4.0      # measured time per variant and repetition
    reps: int = 3
    warmup_seconds: float = 0.5


FULL = Settings()
QUICK = replace(FULL, seconds=1.5, reps=1, warmup_seconds=0.3)
SMOKE = replace(QUICK, seconds=0.3, warmup_seconds=0.1)


@dataclass
class Result:
    calls: int
    errors: int
    slow_share: float
    rate: float
    p50_ms: float
    p99_ms: float


def _open_native(target: str) -> grpc.Channel:
    config = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
    return grpc.insecure_channel(target, options=[LOCAL_POOL,
                                                  ("grpc.service_config", config)])


def _open_lbclient(name: str) -> Callable[[str], grpc.Channel]:
    config = {"loadBalancingConfig": [{name: POLICIES[name]}]}
    return lambda target: lbclient.insecure_channel(target, service_config=config)


def _drive(channel: grpc.Channel, slow: str, s: Settings, seconds: float) -> Result:
    """``s.threads`` threads calling for ``seconds``; per-address counts and latencies."""
    stub = echo_pb2_grpc.EchoStub(channel)
    req = echo_pb2.EchoRequest(message="x")
    counts: list[collections.Counter[str]] = [collections.Counter() for _ in range(s.threads)]
    latencies: list[list[float]] = [[] for _ in range(s.threads)]
    errors = [0] * s.threads
    start = threading.Barrier(s.threads + 1)
    deadline: list[float] = [0.0]

    def work(t: int) -> None:
        start.wait(30)
        i = 0
        while time.perf_counter() < deadline[0]:
            i += 1
            md = ((HASH_HEADER, f"k{t}-{i}"),)
            t0 = time.perf_counter()
            try:
                reply = stub.Unary(req, timeout=10, metadata=md)
            except grpc.RpcError:
                errors[t] += 1
                continue
            latencies[t].append(time.perf_counter() - t0)
            counts[t][reply.address] += 1

    threads = [threading.Thread(target=work, args=(t,), daemon=True)
               for t in range(s.threads)]
    for th in threads:
        th.start()
    deadline[0] = time.perf_counter() + seconds
    t_start = time.perf_counter()
    start.wait(30)
    for th in threads:
        th.join(seconds + 30)
        if th.is_alive():
            raise RuntimeError("a benchmark thread did not finish")
    wall = time.perf_counter() - t_start
    total = sum(counts, collections.Counter())
    lat = sorted(x for per in latencies for x in per)
    calls = sum(total.values())
    if not lat:
        raise RuntimeError("no call succeeded")
    return Result(calls, sum(errors), total[slow] / calls if calls else 0.0, calls / wall,
                  lat[len(lat) // 2] * 1e3, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3)


def _variant(open_channel: Callable[[str], grpc.Channel], target: str, slow: str,
             expected: set[str], s: Settings) -> Callable[[], Result]:
    def run_once() -> Result:
        channel = open_channel(target)
        try:
            stub = echo_pb2_grpc.EchoStub(channel)
            seen: set[str] = set()
            for i in range(200):  # warm up until every backend answered (bounded)
                md = ((HASH_HEADER, f"warm-{i}"),)
                seen.add(stub.Unary(echo_pb2.EchoRequest(), timeout=10, metadata=md,
                                    wait_for_ready=True).address)
                if seen >= expected:
                    break
            _drive(channel, slow, s, s.warmup_seconds)
            return _drive(channel, slow, s, s.seconds)
        finally:
            channel.close()
    return run_once


def measure(s: Settings) -> Section:
    section = Section(TITLE)
    names = [n for n in POLICIES if get_policy(n) is not None]
    with BackendProcess(2, ["--latency-ms", str(FAST_MS)]) as fast, \
            BackendProcess(1, ["--latency-ms", str(SLOW_MS)]) as slow_proc:
        addresses = fast.addresses + slow_proc.addresses
        target = "ipv4:" + ",".join(addresses)
        slow = slow_proc.addresses[0]
        expected = set(addresses)
        variants: dict[str, Callable[[], Result]] = {
            "grpcio native round_robin": _variant(_open_native, target, slow, expected, s)}
        for name in names:
            variants[f"lbclient {name}"] = _variant(_open_lbclient(name), target, slow,
                                                    expected, s)
        results = interleave(variants, s.reps)
    table = Table(["variant", "share to slow", "calls/s", "p50 ms", "p99 ms", "errors"],
                  caption=f"{s.threads} threads, {s.seconds:g} s per cell, {s.reps} "
                          "interleaved repetition(s): median (min–max)")
    for variant, runs in results.items():
        share = summarize([r.slow_share * 100 for r in runs])
        rate = summarize([r.rate for r in runs])
        p50 = summarize([r.p50_ms for r in runs])
        p99 = summarize([r.p99_ms for r in runs])
        table.rows.append([variant, fmt_summary(share, "{:.1f}%"),
                           fmt_summary(rate, "{:.0f}"), fmt_summary(p50, "{:.1f}"),
                           fmt_summary(p99, "{:.0f}"), str(sum(r.errors for r in runs))])
        slug = variant.replace("grpcio native ", "native_").replace("lbclient ", "")
        section.metrics[f"{slug}.slow_share"] = statistics.median(r.slow_share for r in runs)
        section.metrics[f"{slug}.calls_per_s"] = rate.median
    section.tables.append(table)
    section.notes.append(
        f"Backends: 2 answering after {FAST_MS:g} ms, 1 after {SLOW_MS:g} ms (20x), in two "
        "child processes. Every call carries a distinct hash key, so ring_hash spreads "
        "calls like weighted random.")
    section.notes.append(
        "least_request samples with replacement (gRFC A48), so the slow backend still gets "
        "the calls where both samples are it (about 1/9 with 3 endpoints).")
    skipped = [n for n in POLICIES if n not in names]
    if skipped:
        section.notes.append("not registered, skipped: " + ", ".join(skipped))
    return section


def run(quick: bool) -> Section:
    return measure(QUICK if quick else FULL)


def run_smoke() -> Section:
    return measure(SMOKE)


def main(argv: Sequence[str] | None = None) -> int:
    return standalone_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
