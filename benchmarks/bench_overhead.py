"""Scenario 1 — overhead: what lbclient costs per unary call next to plain grpcio.

Variants, each over the same 3 fake backends running in a separate process:
  * ``raw``: ``grpc.insecure_channel`` to one backend (no balancing at all);
  * ``raw, 3 backends``: three ``grpc.insecure_channel``s, one per backend, the caller
    taking them in turn (the least any Python code can do to spread calls: the baseline
    the CPU goals are measured against, since one connection costs less per call than
    three, for grpcio's own round_robin too);
  * ``native round_robin``: grpcio's own round_robin over ``ipv4:a,b,c``;
  * ``lbclient <policy>`` for round_robin, least_request, ring_hash, peak_ewma and
    outlier_detection over round_robin (the ones registered; missing ones are listed as
    skipped);
  * ``lbclient round_robin + retryPolicy``: a retryPolicy (and retryThrottling) on the
    method, nothing failing: what configuring retries costs a call that succeeds.

Method: for each thread count, every repetition runs every variant once in rotated order
(interleaved). A cell opens its channel, warms it up (reaching every backend), makes the
same number of calls (calibrated once per thread count from the raw variant) and closes
the channel, so only the measured channel exists while its cell runs. Throughput is
calls / wall time; client CPU is ``time.process_time()`` of this process (all threads,
grpc's C threads included) per call. Ratios are paired per repetition, then summarized.
Every call carries the same one-pair metadata (the hash key ring_hash reads) in every
variant, so metadata costs the same everywhere.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc

import lbclient
from benchmarks._common import (
    BackendProcess,
    Measurement,
    Section,
    Table,
    fmt_summary,
    interleave,
    paired_ratios,
    run_load,
    standalone_main,
    summarize,
)
from lbclient.balancer.policy import get_policy
from lbclient.testing import echo_pb2, echo_pb2_grpc

SCENARIO = 1
TITLE = "Overhead: unary calls, 3 backends, lbclient vs grpcio"
HASH_HEADER = "x-lb-key"
LOCAL_POOL = ("grpc.use_local_subchannel_pool", 1)  # every channel has its own connections
POLICIES: dict[str, dict[str, Any]] = {
    "round_robin": {},
    "least_request": {},
    "ring_hash": {"requestHashHeader": HASH_HEADER},
    "peak_ewma": {},
    "outlier_detection": {"consecutiveFailures": 5,
                          "failurePercentageEjection": {},
                          "childPolicy": [{"round_robin": {}}]},
}
RETRY_CONFIG: dict[str, Any] = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{"name": [{"service": "lbclient.testing.echo.v1.Echo"}],
                      "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s",
                                      "maxBackoff": "0.1s", "backoffMultiplier": 2,
                                      "retryableStatusCodes": ["UNAVAILABLE"]}}],
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
}
GOAL_RETRY_CPU = 1.10  # ... with a retryPolicy configured, nothing failing
GOAL_POLICY_CPU = 1.10  # least_request, ring_hash, outlier_detection vs lbclient round_robin
GOAL_THROUGHPUT = 0.97  # lbclient round_robin calls/s >= 0.97 x native round_robin
GOAL_CPU = 1.05  # lbclient round_robin CPU per call <= 1.05 x raw channels (3 backends)


@dataclass(frozen=True)
class Settings:
    threads: tuple[int, ...] = (1, 4, 8)
    reps: int = 9
    cell_seconds: float = 1.0  # target wall time of one measured cell
    min_calls: int = 200
    max_calls: int = 20_000
    fixed_calls: int | None = None  # skip calibration and use this count
    warmup_calls: int = 60
    policies: tuple[str, ...] = tuple(POLICIES)


FULL = Settings()
QUICK = replace(FULL, reps=5, cell_seconds=0.3)
SMOKE = replace(FULL, threads=(1, 2), reps=2, fixed_calls=150, warmup_calls=20,
                policies=("round_robin",))


@dataclass(frozen=True)
class Variant:
    name: str
    slug: str
    open: Callable[[list[str]], grpc.Channel]
    expected_backends: int


@dataclass(frozen=True)
class Cell:
    m: Measurement
    reached: int


class _Rotating:
    """Three raw grpc channels taken in turn: what a caller spreading calls by hand does
    (implements just what a generated stub and this benchmark use)."""

    def __init__(self, addresses: list[str]) -> None:
        self._channels = [grpc.insecure_channel("ipv4:" + a, options=[LOCAL_POOL])
                          for a in addresses]

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None, _registered_method: bool = False
                    ) -> Any:
        calls = [ch.unary_unary(method, request_serializer, response_deserializer,
                                _registered_method=_registered_method)
                 for ch in self._channels]
        turn = itertools.cycle(calls)

        def call(request: Any, **kwargs: Any) -> Any:
            return next(turn)(request, **kwargs)
        return call

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._channels[0].unary_stream(*args, **kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self._channels[0].stream_unary(*args, **kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._channels[0].stream_stream(*args, **kwargs)

    def close(self) -> None:
        for ch in self._channels:
            ch.close()


def _native_config() -> str:
    return json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def variants(policies: Sequence[str], notes: list[str]) -> list[Variant]:
    """raw, native round_robin and every registered lbclient policy of ``policies``
    (the others are explained in ``notes``)."""
    out = [
        Variant("raw grpc channel (1 backend)", "raw1",
                lambda a: grpc.insecure_channel("ipv4:" + a[0], options=[LOCAL_POOL]), 1),
        Variant("raw grpc channels (3 backends, taken in turn)", "raw",
                lambda a: _Rotating(a), 3),  # type: ignore[arg-type,return-value]
        Variant("grpcio native round_robin", "native_round_robin",
                lambda a: grpc.insecure_channel(
                    "ipv4:" + ",".join(a),
                    options=[LOCAL_POOL, ("grpc.service_config", _native_config())]), 3),
    ]
    for name in policies:
        spec = get_policy(name)
        if spec is None:
            notes.append(f"lbclient `{name}`: not registered in this build — skipped.")
            continue
        raw = POLICIES.get(name, {})
        try:
            spec.parse_config(raw, f"loadBalancingConfig[0].{name}")
        except ValueError as exc:
            notes.append(f"lbclient `{name}`: rejects the benchmark config {raw}: {exc} — "
                         "skipped.")
            continue
        config = {"loadBalancingConfig": [{name: raw}]}
        out.append(Variant(f"lbclient {name}", f"lbclient_{name}",
                           lambda a, c=config: lbclient.insecure_channel(
                               "ipv4:" + ",".join(a), service_config=c), 3))
        if name == "round_robin":
            out.append(Variant("lbclient round_robin + retryPolicy", "lbclient_rr_retry",
                               lambda a: lbclient.insecure_channel(
                                   "ipv4:" + ",".join(a), service_config=RETRY_CONFIG), 3))
    return out


class _Runner:
    """Runs cells against one backend process (one thread count at a time)."""

    def __init__(self, addresses: list[str], settings: Settings) -> None:
        self.addresses = addresses
        self.s = settings
        self.request = echo_pb2.EchoRequest(message="x")
        self.metadata = [((HASH_HEADER, f"key-{k}"),) for k in range(1024)]

    def cell(self, variant: Variant, calls: int, threads: int) -> Cell:
        channel = variant.open(self.addresses)
        try:
            stub = echo_pb2_grpc.EchoStub(channel)
            req, md = self.request, self.metadata
            seen: set[str] = set()
            for i in range(self.s.warmup_calls * 20):  # bounded: stops once all are seen
                reply = stub.Unary(req, timeout=10, metadata=md[i & 1023], wait_for_ready=True)
                seen.add(reply.address)
                if i + 1 >= self.s.warmup_calls and len(seen) >= variant.expected_backends:
                    break

            def call(i: int) -> Any:
                return stub.Unary(req, timeout=10, metadata=md[i & 1023])

            return Cell(run_load(call, calls, threads), len(seen))
        finally:
            channel.close()

    def calibrate(self, raw: Variant, threads: int) -> int:
        if self.s.fixed_calls is not None:
            return self.s.fixed_calls
        probe = self.cell(raw, self.s.min_calls, threads).m
        n = int(probe.rate * self.s.cell_seconds)
        return max(self.s.min_calls, min(self.s.max_calls, n))


def _ratio_cell(values: list[float]) -> str:
    return fmt_summary(summarize(values)) if values else "—"


def measure(settings: Settings) -> Section:
    notes: list[str] = []
    vs = variants(settings.policies, notes)
    section = Section(TITLE)
    goal_rows: list[list[str]] = []
    with BackendProcess(3) as backends:
        runner = _Runner(backends.addresses, settings)
        for threads in settings.threads:
            calls = runner.calibrate(vs[0], threads)
            cells = interleave({v.slug: (lambda v=v, n=calls, t=threads: runner.cell(v, n, t))
                                for v in vs}, settings.reps)
            table, goals = _tables(vs, cells, threads, calls, settings.reps, section.metrics)
            section.tables.append(table)
            goal_rows += goals
    section.tables.insert(0, Table(
        ["threads", "variant", "calls/s ÷ native rr", f"goal ≥ {GOAL_THROUGHPUT}",
         "client CPU/call ratio", "goal"],
        goal_rows, "Goals (median of paired per-repetition ratios, min–max in brackets)"))
    section.notes = notes + _method_notes(settings)
    return section


def _tables(vs: list[Variant], cells: dict[str, list[Cell]], threads: int, calls: int,
            reps: int, metrics: dict[str, float]) -> tuple[Table, list[list[str]]]:
    rate = {slug: [c.m.rate for c in cs] for slug, cs in cells.items()}
    cpu = {slug: [c.m.cpu_per_call * 1e6 for c in cs] for slug, cs in cells.items()}
    table = Table(["variant", "calls/s", "client CPU µs/call", "calls/s ÷ native rr",
                   "CPU/call ÷ raw (3 backends)", "backends reached", "errors"],
                  caption=f"{threads} client thread(s), {calls} calls per cell, "
                          f"{reps} interleaved repetitions: median (min–max)")
    goals: list[list[str]] = []
    for v in vs:
        thr = paired_ratios(rate[v.slug], rate["native_round_robin"])
        cpr = paired_ratios(cpu[v.slug], cpu["raw"])
        reached = min(c.reached for c in cells[v.slug])
        errors = sum(c.m.errors for c in cells[v.slug])
        table.rows.append([v.name, fmt_summary(summarize(rate[v.slug]), "{:.0f}"),
                           fmt_summary(summarize(cpu[v.slug]), "{:.0f}"),
                           _ratio_cell(thr), _ratio_cell(cpr),
                           f"{reached}/{v.expected_backends}", str(errors)])
        key = f"t{threads}.{v.slug}"
        metrics[f"{key}.calls_per_s"] = summarize(rate[v.slug]).median
        metrics[f"{key}.cpu_us_per_call"] = summarize(cpu[v.slug]).median
        metrics[f"{key}.throughput_vs_native"] = summarize(thr).median if thr else math.nan
        metrics[f"{key}.cpu_vs_raw"] = summarize(cpr).median if cpr else math.nan
        metrics[f"{key}.errors"] = float(errors)
        if v.slug == "lbclient_round_robin":
            t, c = summarize(thr).median, summarize(cpr).median
            goals.append([str(threads), "lbclient round_robin", _ratio_cell(thr),
                          "met" if t >= GOAL_THROUGHPUT else "**not met**",
                          _ratio_cell(cpr), f"≤ {GOAL_CPU} × raw 3: "
                          + ("met" if c <= GOAL_CPU else "**not met**")])
    base = cpu.get("lbclient_round_robin")
    for v in vs:
        if base is None or v.slug in ("raw1", "raw", "native_round_robin",
                                      "lbclient_round_robin"):
            continue
        if v.slug == "lbclient_rr_retry":
            ratios, goal, what = paired_ratios(cpu[v.slug], cpu["raw"]), GOAL_RETRY_CPU, "raw"
        else:
            ratios, goal, what = paired_ratios(cpu[v.slug], base), GOAL_POLICY_CPU, "rr"
        if not ratios or v.slug == "lbclient_peak_ewma":
            continue
        c = summarize(ratios).median
        metrics[f"t{threads}.{v.slug}.cpu_vs_{what}"] = c
        goals.append([str(threads), v.name, "", "", _ratio_cell(ratios),
                      f"≤ {goal} × {'raw 3' if what == 'raw' else 'lbclient rr'}: "
                      + ("met" if c <= goal else "**not met**")])
    return table, goals


def _method_notes(s: Settings) -> list[str]:
    return [
        "Backends: 3 fake Echo servers (`python -m lbclient.testing serve --count 3`, no "
        "added latency) in a separate process; client CPU is `time.process_time()` of the "
        "client process only (all its threads, grpc's C-core threads included).",
        f"Interleaving: each repetition runs every variant once, order rotated per "
        f"repetition (A B C…, B C … A, …); {s.reps} repetitions; ratios are computed per "
        "repetition (variants measured seconds apart), then the median and min–max are shown.",
        "Each cell opens a fresh channel (own TCP connections: "
        "`grpc.use_local_subchannel_pool`), warms it up until every backend answered, "
        "measures, and closes it; connection setup is not measured.",
        f"Every call sends the same one-pair metadata (`{HASH_HEADER}`, the key "
        "ring_hash hashes) in every variant.",
        "Noise: this is a 2-core machine shared with other engineers' test runs, and the "
        "backend process competes with the client for the same cores, so absolute "
        "calls/s move a lot between runs; compare the paired ratios, and read a goal "
        "'not met' within the min–max spread as inconclusive rather than as a verdict.",
        "asyncio channels (`lbclient.aio`) are not measured by this scenario yet.",
    ]


def run(quick: bool) -> Section:
    return measure(QUICK if quick else FULL)


def run_smoke() -> Section:
    return measure(SMOKE)


def main(argv: Sequence[str] | None = None) -> int:
    return standalone_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
