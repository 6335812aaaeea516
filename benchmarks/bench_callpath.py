"""Scenario 16 — the call path's own cost: what lbclient adds to one unary call, measured
apart from grpc, so that a 1-2 % difference is not lost in this machine's noise.

``bench_overhead`` compares whole calls (lbclient's Python plus grpc's C core plus the
backend's answer) and on a shared 2-core machine its per-repetition ratios move by ±20 %,
far more than lbclient's own share. This scenario takes that share apart:

* **bytecodes per call**: every Python bytecode executed from ``stub.Unary(...)`` to its
  return, counted with ``sys.settrace`` opcode events, with each endpoint's grpc
  multicallable replaced by a no-op (so only lbclient's code runs). Deterministic: the
  same figure on a loaded or an idle machine.
* **µs per call**: the same no-op calls timed (process CPU, best of several batches).
* **÷ a raw grpc call**: that µs over the client CPU of one real unary call on a raw grpc
  channel to a backend in another process, measured in the same run: lbclient's share of
  a call's CPU.

Variants: the policies and configs of ``bench_overhead`` (every call carries the same
one-pair metadata, the key ring_hash reads). The no-op stands in for grpc's own
``UnaryUnaryMultiCallable`` (plain ``__call__``, the hot path's), so the figures cover the
pick, the in-flight and latency accounting, retry/throttle bookkeeping and, for
outlier_detection, the outcome callbacks.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any

import grpc

import lbclient
from benchmarks._common import BackendProcess, Section, Table, standalone_main
from benchmarks.bench_overhead import HASH_HEADER, POLICIES, RETRY_CONFIG
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

SCENARIO = 16
TITLE = "Call path: lbclient's own cost per unary call, apart from grpc"
REQ = echo_pb2.EchoRequest(message="x")
MD = ((HASH_HEADER, "key-1"),)


@dataclass(frozen=True)
class Settings:
    traced_calls: int = 1000
    timed_calls: int = 20_000
    batches: int = 7
    raw_calls: int = 2000


FULL = Settings()
QUICK = replace(FULL, timed_calls=5000, batches=5, raw_calls=1000)
SMOKE = replace(FULL, traced_calls=50, timed_calls=200, batches=2, raw_calls=50)


class _NoOp:
    """Stands in for grpc's UnaryUnaryMultiCallable: answers at once, does nothing."""

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: Any = None, wait_for_ready: bool | None = None,
                 compression: Any = None) -> Any:
        return request

    def with_call(self, request: Any, **kwargs: Any) -> tuple[Any, None]:
        return request, None


def _configs() -> dict[str, dict[str, Any]]:
    out = {name: {"loadBalancingConfig": [{name: cfg}]} for name, cfg in POLICIES.items()}
    out["round_robin + retryPolicy"] = RETRY_CONFIG
    return out


def _no_op_endpoints(channel: Any) -> None:
    """Replace every endpoint's grpc multicallables by no-ops (after they were made)."""
    for rec in channel._balancer.records():
        calls = rec.handle.calls
        for site in list(calls):
            calls[site] = _NoOp()


class _Opcodes:
    def __init__(self) -> None:
        self.n = 0

    def trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return self.local

    def local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            self.n += 1
        return self.local


def _lbclient_cost(target: str, config: dict[str, Any], s: Settings) -> tuple[float, float]:
    """(bytecodes per call, µs per call) of lbclient alone."""
    with lbclient.insecure_channel(target, service_config=config) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for _ in range(30):                      # connected, every endpoint used
            stub.Unary(REQ, timeout=10, metadata=MD, wait_for_ready=True)
        _no_op_endpoints(channel)
        counter = _Opcodes()
        sys.settrace(counter.trace)
        try:
            for _ in range(s.traced_calls):
                stub.Unary(REQ, timeout=10, metadata=MD)
        finally:
            sys.settrace(None)
        best = float("inf")
        for _ in range(s.batches):
            gc.collect()
            t0 = time.process_time()
            for _ in range(s.timed_calls):
                stub.Unary(REQ, timeout=10, metadata=MD)
            best = min(best, (time.process_time() - t0) / s.timed_calls)
    return counter.n / s.traced_calls, best * 1e6


def _raw_call_cpu(address: str, s: Settings) -> float:
    """Client CPU µs of one real unary call on a raw grpc channel (best of 3 batches)."""
    with grpc.insecure_channel(address) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        for _ in range(50):
            stub.Unary(REQ, timeout=10, metadata=MD, wait_for_ready=True)
        best = float("inf")
        for _ in range(3):
            gc.collect()
            t0 = time.process_time()
            for _ in range(s.raw_calls):
                stub.Unary(REQ, timeout=10, metadata=MD)
            best = min(best, (time.process_time() - t0) / s.raw_calls)
    return best * 1e6


def measure(s: Settings) -> Section:
    section = Section(TITLE)
    with BackendProcess(1) as backend:
        raw = _raw_call_cpu(backend.addresses[0], s)
    rows: list[Sequence[str]] = []
    with Fleet(3) as fleet:
        for name, config in _configs().items():
            codes, us = _lbclient_cost(fleet.target, config, s)
            slug = name.replace(" + retryPolicy", "_retry")
            section.metrics[f"{slug}.bytecodes_per_call"] = codes
            section.metrics[f"{slug}.us_per_call"] = us
            section.metrics[f"{slug}.share_of_raw_call"] = us / raw
            rows.append([f"lbclient {name}", f"{codes:.0f}", f"{us:.2f}",
                         f"{100 * us / raw:.1f} %"])
    section.metrics["raw_call_cpu_us"] = raw
    section.tables.append(Table(
        ["variant", "bytecodes per call", "µs per call (lbclient alone)",
         "÷ one raw grpc call's client CPU"], rows,
        f"lbclient's own work per unary call; one raw grpc call costs {raw:.0f} µs of "
        "client CPU in this run (best of 3 batches, backend in another process)"))
    section.notes = [
        "Bytecodes: `sys.settrace` opcode events from `stub.Unary(...)` to its return, "
        f"averaged over {s.traced_calls} calls, with grpc's multicallable a no-op: "
        "deterministic, so versions compare exactly whatever the machine's load.",
        f"µs: process CPU of {s.timed_calls} such calls, best of {s.batches} batches "
        "(the least disturbed); the raw call: 3 batches of "
        f"{s.raw_calls} calls on `grpc.insecure_channel`, best batch.",
        "What a whole call then costs: raw call + lbclient's µs, i.e. 1 + the last "
        "column times a raw call's CPU; bench_overhead measures whole calls directly, "
        "with more noise.",
    ]
    return section


def run(quick: bool) -> Section:
    return measure(QUICK if quick else FULL)


def run_smoke() -> Section:
    return measure(SMOKE)


def main(argv: Sequence[str] | None = None) -> int:
    return standalone_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
