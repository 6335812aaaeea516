"""asyncio: 1,000 concurrent unary calls, lbclient.aio round_robin vs grpc.aio's native
round_robin (issue 7's figures).

Variants, over the same 3 fake backends running in a separate process
(``_common.BackendProcess``, so this process's CPU time is the client's alone):
  * ``grpc.aio native round_robin``: ``grpc.aio.insecure_channel("ipv4:a,b,c")`` with
    ``{"loadBalancingConfig": [{"round_robin": {}}]}`` as its service config;
  * ``lbclient.aio round_robin``: ``lbclient.aio.insecure_channel("ipv4:a,b,c")``.

Method: a cell opens its channel (one event loop serves every cell), warms it up until every backend
answered, then sends waves of 1,000 concurrent unary calls (``asyncio.gather``) and
closes the channel. Throughput is calls / wall time over the waves; client CPU is
``time.process_time()`` of this process (every thread, grpc's C-core threads included)
per call. Every repetition runs both variants, alternating which goes first
(``_common.interleave``); ratios are paired per repetition, then summarized as median
(min–max).
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import grpc
import grpc.aio

import lbclient.aio
from benchmarks._common import (
    BackendProcess,
    Measurement,
    Section,
    Table,
    fmt_summary,
    paired_ratios,
    standalone_main,
    summarize,
)
from lbclient.testing import echo_pb2, echo_pb2_grpc

TITLE = "asyncio: 1,000 concurrent unary calls, lbclient.aio vs grpc.aio"
GOAL_THROUGHPUT = 0.95   # lbclient.aio round_robin calls/s >= 0.95 x grpc.aio native
LOCAL_POOL = ("grpc.use_local_subchannel_pool", 1)


@dataclass(frozen=True)
class Settings:
    reps: int = 9
    concurrency: int = 1000
    cell_seconds: float = 2.0     # target wall time of one variant's waves per rep
    min_waves: int = 2
    max_waves: int = 20
    fixed_waves: int | None = None
    warmup_calls: int = 200


FULL = Settings()
QUICK = replace(FULL, reps=5, cell_seconds=1.0)
SMOKE = replace(FULL, reps=2, concurrency=100, fixed_waves=1, warmup_calls=30)

Open = Callable[[str], Any]


def _native(target: str) -> Any:
    config = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
    return grpc.aio.insecure_channel(target, options=[LOCAL_POOL,
                                                      ("grpc.service_config", config)])


def _lbclient(target: str) -> Any:
    return lbclient.aio.insecure_channel(target)


VARIANTS: dict[str, tuple[str, Open]] = {
    "native_round_robin": ("grpc.aio native round_robin", _native),
    "lbclient_round_robin": ("lbclient.aio round_robin", _lbclient),
}


async def _open(slug: str, target: str, s: Settings) -> tuple[Any, Any]:
    """The variant's channel and stub, warmed up until every backend answered."""
    channel = VARIANTS[slug][1](target)
    stub = echo_pb2_grpc.EchoStub(channel)
    req = echo_pb2.EchoRequest(message="x")
    seen: set[str] = set()
    for i in range(s.warmup_calls * 20):   # bounded: stops once all are seen
        reply = await stub.Unary(req, timeout=10, wait_for_ready=True)
        seen.add(reply.address)
        if i + 1 >= s.warmup_calls and len(seen) >= 3:
            break
    return channel, stub


async def _wave(stub: Any, s: Settings) -> Measurement:
    req = echo_pb2.EchoRequest(message="x")
    c0, w0 = time.process_time(), time.perf_counter()
    results = await asyncio.gather(*(stub.Unary(req, timeout=60)
                                     for _ in range(s.concurrency)), return_exceptions=True)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return Measurement(s.concurrency, sum(isinstance(r, BaseException) for r in results),
                       wall, cpu)


async def _repetition(target: str, waves: int, first: int, s: Settings
                      ) -> dict[str, Measurement]:
    """Both channels open side by side; waves alternate between them (``first`` starts),
    so both variants meet the same machine conditions within milliseconds."""
    slugs = list(VARIANTS)
    opened = {slug: await _open(slug, target, s) for slug in slugs}
    try:
        gc.collect()
        got: dict[str, list[Measurement]] = {slug: [] for slug in slugs}
        for w in range(waves):
            k = (first + w) % len(slugs)
            for slug in slugs[k:] + slugs[:k]:
                got[slug].append(await _wave(opened[slug][1], s))
        return {slug: Measurement(sum(m.calls for m in ms), sum(m.errors for m in ms),
                                  sum(m.wall for m in ms), sum(m.cpu for m in ms))
                for slug, ms in got.items()}
    finally:
        for channel, _ in opened.values():
            await channel.close()


def measure(s: Settings) -> Section:
    section = Section(TITLE)
    # One event loop for every repetition: grpc.aio's poller outlives a closed loop badly.
    with BackendProcess(3) as backends, asyncio.Runner() as loop:
        target = backends.target
        waves = s.fixed_waves
        if waves is None:   # calibrated once
            probe = loop.run(_repetition(target, 1, 0, s))["native_round_robin"]
            waves = max(s.min_waves, min(s.max_waves, round(probe.rate * s.cell_seconds
                                                            / s.concurrency)))
        reps = [loop.run(_repetition(target, waves, rep, s)) for rep in range(s.reps)]
    cells = {slug: [r[slug] for r in reps] for slug in VARIANTS}
    rate = {k: [m.rate for m in v] for k, v in cells.items()}
    cpu = {k: [m.cpu_per_call * 1e6 for m in v] for k, v in cells.items()}
    thr = paired_ratios(rate["lbclient_round_robin"], rate["native_round_robin"])
    cpr = paired_ratios(cpu["lbclient_round_robin"], cpu["native_round_robin"])
    table = Table(["variant", "calls/s", "client CPU µs/call", "calls/s ÷ native",
                   "CPU/call ÷ native", "errors"],
                  caption=f"{s.concurrency} concurrent calls per wave, {waves} waves per "
                          f"variant and repetition, alternating, {s.reps} repetitions: "
                          f"median (min–max)")
    for slug, (name, _) in VARIANTS.items():
        own_thr = paired_ratios(rate[slug], rate["native_round_robin"])
        own_cpu = paired_ratios(cpu[slug], cpu["native_round_robin"])
        table.rows.append([name, fmt_summary(summarize(rate[slug]), "{:.0f}"),
                           fmt_summary(summarize(cpu[slug]), "{:.0f}"),
                           fmt_summary(summarize(own_thr)), fmt_summary(summarize(own_cpu)),
                           str(sum(m.errors for m in cells[slug]))])
        section.metrics[f"{slug}.calls_per_s"] = summarize(rate[slug]).median
        section.metrics[f"{slug}.cpu_us_per_call"] = summarize(cpu[slug]).median
        section.metrics[f"{slug}.errors"] = float(sum(m.errors for m in cells[slug]))
    met = summarize(thr)
    section.metrics["lbclient_round_robin.throughput_vs_native"] = met.median
    section.metrics["lbclient_round_robin.cpu_vs_native"] = summarize(cpr).median
    verdict = ("met" if met.median >= GOAL_THROUGHPUT else
               "inconclusive (range straddles the goal)" if met.hi >= GOAL_THROUGHPUT else
               "not met")
    section.tables = [
        Table(["lbclient.aio round_robin calls/s ÷ grpc.aio native", f"goal ≥ {GOAL_THROUGHPUT}",
               "CPU/call ÷ native"],
              [[fmt_summary(met), verdict, fmt_summary(summarize(cpr))]],
              "Goal (median of paired per-repetition ratios, min–max in brackets)"),
        table]
    section.notes = [
        "Backends: 3 fake Echo backends (`python -m lbclient.testing serve`) in a separate "
        "process, sharing the machine's cores with the client.",
        "A repetition opens both channels (one event loop for the whole run), warms each "
        "up until all 3 backends answered, then alternates waves of "
        f"{s.concurrency} concurrent `await stub.Unary(...)` calls (`asyncio.gather`) "
        f"between them, {waves} per variant, the first variant rotating per repetition; "
        "both channels are closed before the next repetition.",
        "CPU is `time.process_time()` of the client process (all threads, grpc's included) "
        "divided by the calls; the default asyncio event loop (no uvloop).",
        "Ratios are paired within a repetition (the variants' waves alternate, "
        "milliseconds apart, so both meet the same machine load) and summarized as "
        "median (min–max).",
    ]
    return section


def run(quick: bool) -> Section:
    return measure(QUICK if quick else FULL)


def run_smoke() -> Section:
    return measure(SMOKE)


def main(argv: list[str] | None = None) -> int:
    return standalone_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
