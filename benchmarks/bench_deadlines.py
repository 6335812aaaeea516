"""Deadlines under load: 2,000 calls wait for an endpoint that never comes (every
backend down, ``wait_for_ready``, timeout 2 s); how long after its deadline each ends.

Variants, each in a fresh channel to two addresses nothing listens on:
  * ``grpcio, threads``: grpcio's own channel, one blocking call per thread (the
    reference: the deadline is enforced in grpc core, the thread then needs the GIL);
  * ``lbclient, threads``: the same through ``lbclient.insecure_channel`` (the call waits
    for a pick on its own lock, woken by every picker change or its deadline);
  * ``lbclient, futures``: ``.future()`` calls (queued: a timer fails each at its deadline);
  * ``lbclient.aio``: ``lbclient.aio`` calls (they wait on the event loop).
Every call starts at the same moment with the same timeout, so all deadlines fall
together: the worst case for thread wake-ups (each thread needs the GIL in turn).
Figures: overrun = end time - (start + timeout), median / p99 / max over the calls, per
repetition; variants interleaved.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import grpc

import lbclient
import lbclient.aio
from benchmarks._common import Section, Table, fmt_summary, interleave, standalone_main, summarize
from lbclient.testing import echo_pb2, echo_pb2_grpc

TITLE = "Deadlines: 2,000 calls waiting for an endpoint, timeout 2 s"
REQ = echo_pb2.EchoRequest(message="deadline")
GOAL_MS = 50.0


@dataclass(frozen=True)
class Settings:
    calls: int = 2000
    timeout: float = 2.0
    reps: int = 3


FULL = Settings()
QUICK = replace(FULL, reps=1)
SMOKE = replace(FULL, calls=50, timeout=0.3, reps=1)


def _dead_target() -> str:
    ports = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        s.close()
    return "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)


def _threads(channel: grpc.Channel, n: int, timeout: float) -> list[float]:
    stub = echo_pb2_grpc.EchoStub(channel)
    over: list[float] = []
    gate = threading.Barrier(n + 1)

    def call() -> None:
        gate.wait()
        t0 = time.monotonic()
        try:
            stub.Unary(REQ, timeout=timeout, wait_for_ready=True)
        except grpc.RpcError:
            pass
        over.append(time.monotonic() - t0 - timeout)

    pool = [threading.Thread(target=call, daemon=True) for _ in range(n)]
    for t in pool:
        t.start()
    gate.wait()
    for t in pool:
        t.join(timeout + 30)
    return over


def _futures(channel: grpc.Channel, n: int, timeout: float) -> list[float]:
    stub = echo_pb2_grpc.EchoStub(channel)
    over: list[float] = []
    done = threading.Event()

    def ended(t0: float) -> Callable[[object], None]:
        def fn(_: object) -> None:
            over.append(time.monotonic() - t0 - timeout)
            if len(over) == n:
                done.set()
        return fn

    for _ in range(n):
        t0 = time.monotonic()
        stub.Unary.future(REQ, timeout=timeout, wait_for_ready=True).add_done_callback(ended(t0))
    done.wait(timeout + 30)
    return over


async def _aio(target: str, n: int, timeout: float) -> list[float]:
    async with lbclient.aio.insecure_channel(target) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)

        async def call() -> float:
            t0 = time.monotonic()
            try:
                await stub.Unary(REQ, timeout=timeout, wait_for_ready=True)
            except grpc.aio.AioRpcError:
                pass
            return time.monotonic() - t0 - timeout

        return list(await asyncio.gather(*(call() for _ in range(n))))


def _variants(s: Settings) -> dict[str, Callable[[], list[float]]]:
    def grpcio_threads() -> list[float]:
        ch = grpc.insecure_channel(_dead_target())
        try:
            return _threads(ch, s.calls, s.timeout)
        finally:
            ch.close()

    def lb_threads() -> list[float]:
        with lbclient.insecure_channel(_dead_target()) as ch:
            return _threads(ch, s.calls, s.timeout)

    def lb_futures() -> list[float]:
        with lbclient.insecure_channel(_dead_target()) as ch:
            return _futures(ch, s.calls, s.timeout)

    def lb_aio() -> list[float]:
        return asyncio.run(_aio(_dead_target(), s.calls, s.timeout))

    return {"grpcio, threads": grpcio_threads, "lbclient, threads": lb_threads,
            "lbclient, futures": lb_futures, "lbclient.aio": lb_aio}


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)] * 1000.0


def measure(s: Settings) -> Section:
    runs = interleave(_variants(s), s.reps)
    section = Section(TITLE)
    table = Table(["variant", "calls", "median overrun ms", "p99 ms", "max ms",
                   f"max ≤ {GOAL_MS:g} ms"],
                  caption=f"{s.calls} calls, timeout {s.timeout:g} s, {s.reps} interleaved "
                          "repetitions: median (min–max) over repetitions")
    for name, reps in runs.items():
        slug = name.replace(", ", "_").replace(".", "_").replace(" ", "_")
        med = summarize([_pct(r, 0.5) for r in reps])
        p99 = summarize([_pct(r, 0.99) for r in reps])
        mx = summarize([_pct(r, 1.0) for r in reps])
        table.rows.append([name, str(len(reps[0])), fmt_summary(med, "{:.1f}"),
                           fmt_summary(p99, "{:.1f}"), fmt_summary(mx, "{:.1f}"),
                           "met" if mx.median <= GOAL_MS else "**not met**"])
        section.metrics[f"{slug}.max_overrun_ms"] = mx.median
        section.metrics[f"{slug}.p99_overrun_ms"] = p99.median
        section.metrics[f"{slug}.calls"] = float(len(reps[0]))
        early = min(min(r) for r in reps)
        section.metrics[f"{slug}.min_overrun_ms"] = early * 1000.0
    section.tables.append(table)
    section.notes = [
        "Every call starts together with the same timeout, so every deadline falls at the "
        "same instant: each woken thread then needs the GIL in turn, which bounds how soon "
        "the last of thousands of threads can return (grpcio's own channel shows the same "
        "tail, measured in the same run). Futures and asyncio calls have no thread each.",
    ]
    early = min(section.metrics[k] for k in section.metrics if k.endswith("min_overrun_ms"))
    section.notes.append(f"Earliest end relative to its deadline, over every call: "
                         f"{early:+.1f} ms (negative would be a call ended early).")
    return section


def run(quick: bool) -> Section:
    return measure(QUICK if quick else FULL)


def run_smoke() -> Section:
    return measure(SMOKE)


def main(argv: Sequence[str] | None = None) -> int:
    return standalone_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
