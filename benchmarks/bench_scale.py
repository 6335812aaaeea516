"""Scenario 6 — scale: pick cost and picker rebuild time per policy at 3 / 300 / 10,000
endpoints (pure, no network), and memory per endpoint. (A real channel's CPU per call at
300 endpoints, least_connections and round_robin next to grpcio's: bench_endpoints300.)

* Pick cost: ``picker.pick(PickInfo)`` alone, and "pick + done" (what the channel adds per
  call in the picker layer: ``stats.begin()`` unless the picker counted the call,
  ``stats.end()``, the pick's ``on_done``). Every PickInfo carries a hash-key header
  (1,024 distinct keys, cycled) so hash policies take their keyed path.
* Rebuild: ``policy.build_picker(candidates)`` on one policy object, as the balancer
  does on every endpoint change; median of repeated builds.
* Picker memory: bytes retained by one picker (tracemalloc), per endpoint.
* Endpoint memory: tracemalloc of N x (Endpoint + EndpointStats + Candidate); and a real
  ``LoadBalancedChannel`` over N addresses nobody listens on (Python heap by tracemalloc,
  resident memory and threads by the OS), including the time its ``close()`` takes.

Every registered policy is measured, with bench_pickers' configs and endpoints (weights
1..5, zones, priorities), so group and subsetting policies have groups and subsets.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from benchmarks import bench_pickers
from benchmarks._common import Section, Table, fake_candidates, standalone_main
from lbclient.balancer.picker import CallOutcome, PickInfo
from lbclient.balancer.policy import get_policy, registered_policies

SCENARIO = 6
TITLE = "Scale: pick cost, picker rebuild and memory per endpoint"
HASH_HEADER = "x-lb-key"
METHOD = "/lbclient.testing.echo.v1.Echo/Unary"
CONFIGS = bench_pickers.CONFIGS      # the same key header: x-lb-key


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...] = (3, 300, 10_000)
    pick_seconds: float = 0.25  # time budget per pick measurement
    rebuild_seconds: float = 0.5  # time budget per rebuild measurement (at least 1 build)
    max_rebuilds: int = 30
    memory_endpoints: int = 10_000
    channel_sizes: tuple[int, ...] = (10, 100, 300)
    settle_seconds: float = 3.0  # wait for a channel's endpoints to leave CONNECTING


FULL = Settings()
QUICK = replace(FULL, pick_seconds=0.06, rebuild_seconds=0.15, max_rebuilds=10,
                channel_sizes=(10, 30))
SMOKE = replace(QUICK, sizes=(3, 100), pick_seconds=0.01, rebuild_seconds=0.02,
                max_rebuilds=3, memory_endpoints=500, channel_sizes=(5,), settle_seconds=1.0)

_OUTCOME = CallOutcome("OK", 0.001)
_INFOS = [PickInfo(METHOD, ((HASH_HEADER, f"user-{i}"),)) for i in range(1024)]


def policies(notes: list[str]) -> list[tuple[str, str, Any]]:
    """(label, name, raw config) per distinct registered policy (aliases named in the
    label), round_robin first: the other rows are compared with it."""
    aliases: dict[str, list[str]] = {}
    for name in registered_policies():
        spec = get_policy(name)
        if spec is not None and name != spec.name:
            aliases.setdefault(spec.name, []).append(name)
    out = []
    for name, raw in bench_pickers.policies(notes):
        extra = aliases.get(name)
        out.append((name + (f" (alias {', '.join(extra)})" if extra else ""), name, raw))
    return out


def _timed(fn: Callable[[int], None], budget: float, batch: int) -> float:
    """CPU seconds of this thread per ``fn(i)``, run in batches until ``budget`` CPU
    seconds are spent (or 20x that in wall time). Thread CPU time, not wall time, so
    being descheduled on a loaded machine does not count."""
    n, c0, wall_end = 0, time.thread_time(), time.monotonic() + 20 * budget
    while True:
        for i in range(n, n + batch):
            fn(i)
        n += batch
        used = time.thread_time() - c0
        if used >= budget or time.monotonic() >= wall_end:
            return used / n


def pick_cost(picker: Any, budget: float, with_done: bool) -> float:
    infos = _INFOS

    def pick(i: int) -> None:
        picker.pick(infos[i & 1023])

    def pick_done(i: int) -> None:
        r = picker.pick(infos[i & 1023])
        stats = r.candidate.stats
        if not r.counted:
            stats.begin()
        stats.end(_OUTCOME, False)
        if r.on_done is not None:
            r.on_done(_OUTCOME)

    return _timed(pick_done if with_done else pick, budget, 32)


def rebuild_cost(policy: Any, candidates: list[Any], s: Settings) -> float:
    """Median thread CPU seconds of one ``build_picker`` (at least one build)."""
    times: list[float] = []
    wall_end = time.monotonic() + 20 * s.rebuild_seconds
    while not times or (len(times) < s.max_rebuilds and sum(times) < s.rebuild_seconds
                        and time.monotonic() < wall_end):
        t0 = time.thread_time()
        policy.build_picker(candidates)
        times.append(time.thread_time() - t0)
    return statistics.median(times)


def traced_bytes(make: Callable[[], Any]) -> int:
    """Bytes still allocated (tracemalloc) while the result of ``make()`` is alive."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        keep = make()
        used = tracemalloc.get_traced_memory()[0] - base
        del keep
        return used
    finally:
        tracemalloc.stop()


def picker_table(s: Settings, section: Section) -> Table:
    table = Table(["policy", "endpoints", "pick µs", "pick + done µs", "pick ÷ round_robin",
                   "rebuild ms", "picker bytes/endpoint"],
                  caption="Pure: one policy object per row, fake candidates, one thread")
    rr_pick: dict[int, float] = {}
    for label, name, raw in policies(section.notes):
        for n in s.sizes:
            world = bench_pickers.World(name, raw, bench_pickers.endpoints(n))
            policy = world.policy
            subset = getattr(policy, "subset", None)   # subsetting: the child's share
            candidates = ([world.by_address[a] for a in subset] if subset
                          else list(world.by_address.values()))
            rebuild = rebuild_cost(policy, candidates, s)
            picker = policy.build_picker(candidates)
            pick = pick_cost(picker, s.pick_seconds, False)
            done = pick_cost(policy.build_picker(candidates), s.pick_seconds, True)
            def build(p: Any = policy, c: list[Any] = candidates) -> Any:
                return p.build_picker(c)
            mem = traced_bytes(build) / n
            if name == "round_robin":
                rr_pick[n] = pick
            ratio = f"{pick / rr_pick[n]:.1f}×" if n in rr_pick else "—"
            table.rows.append([label, f"{n:,}", f"{pick * 1e6:.2f}", f"{done * 1e6:.2f}",
                               ratio, f"{rebuild * 1e3:.3f}", f"{mem:,.0f}"])
            key = f"{name}.n{n}"
            section.metrics[f"{key}.pick_us"] = pick * 1e6
            section.metrics[f"{key}.pick_done_us"] = done * 1e6
            section.metrics[f"{key}.rebuild_ms"] = rebuild * 1e3
            section.metrics[f"{key}.picker_bytes_per_endpoint"] = mem
    return table


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def channel_row(n: int, s: Settings) -> dict[str, float]:
    """Build a real channel over ``n`` refused addresses (127.1.x.y:port) and measure."""
    import lbclient

    port = _closed_port()
    target = "ipv4:" + ",".join(f"127.1.{i // 250}.{i % 250 + 1}:{port}" for i in range(n))
    threads0, rss0 = threading.active_count(), _rss()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        channel = lbclient.insecure_channel(target)
        deadline = time.monotonic() + s.settle_seconds
        while time.monotonic() < deadline and any(
                e.connectivity in ("IDLE", "CONNECTING") for e in channel.endpoints()):
            time.sleep(0.05)
        heap = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    rss, threads = _rss() - rss0, threading.active_count() - threads0
    t0 = time.perf_counter()
    channel.close()
    closing = time.perf_counter() - t0
    deadline = time.monotonic() + 10.0
    while threading.active_count() > threads0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"heap": heap / n, "rss": rss / n, "threads": threads / n, "close": closing / n}


def memory_tables(s: Settings, section: Section) -> list[Table]:
    from lbclient import Endpoint, EndpointStats

    n = s.memory_endpoints
    parts: list[tuple[str, str, Callable[[], Any]]] = [
        ("Endpoint", "endpoint",
         lambda: [Endpoint(f"10.0.{i // 250}.{i % 250}:50051") for i in range(n)]),
        ("EndpointStats", "endpoint_stats",
         lambda: [EndpointStats(time.monotonic) for _ in range(n)]),
        ("Endpoint + EndpointStats + Candidate", "candidate_total",
         lambda: fake_candidates(n)),
    ]
    objects = Table(["objects", "bytes/endpoint"], caption=f"tracemalloc, {n:,} endpoints")
    for label, key, make in parts:
        per = traced_bytes(make) / n
        objects.rows.append([label, f"{per:,.0f}"])
        section.metrics[f"memory.{key}_bytes"] = per
    channels = Table(["endpoints", "Python heap bytes/endpoint", "RSS KiB/endpoint",
                      "threads/endpoint", "close() ms/endpoint"],
                     caption="A real LoadBalancedChannel (round_robin) over refused addresses")
    channel_row(2, replace(s, settle_seconds=0.2))  # one-time costs (imports, caches)
    for size in s.channel_sizes:
        row = channel_row(size, s)
        channels.rows.append([f"{size:,}", f"{row['heap']:,.0f}", f"{row['rss'] / 1024:,.1f}",
                              f"{row['threads']:.2f}", f"{row['close'] * 1e3:.0f}"])
        for k, v in row.items():
            section.metrics[f"channel.n{size}.{k}"] = v
    return [objects, channels]


def measure(s: Settings) -> Section:
    section = Section(TITLE)
    section.tables.append(picker_table(s, section))
    section.tables += memory_tables(s, section)
    section.notes += [
        "Pick and rebuild are CPU time of the measuring thread (`time.thread_time()`), "
        "single-threaded, so time spent descheduled on this shared 2-core machine is not "
        "counted; cache and frequency effects remain (expect ±20% between runs: compare "
        "rows of the same run). Endpoints and configs are bench_pickers': weights 1..5, "
        "four zones, every fourth endpoint priority 1; wrapper policies wrap round_robin; "
        "subsetting rows pick from their 10-endpoint subset.",
        "'pick + done' adds what the channel does per call around the pick "
        "(EndpointStats.begin/end and the pick's on_done).",
        "Channel memory: the Python heap is what tracemalloc sees (grpc's C-core memory is "
        "not in it; RSS is, but RSS also moves with the allocator and is rough for small N). "
        "Each endpoint is a grpc channel whose connectivity subscription runs a polling "
        "thread (grpcio's design).",
        f"Channel sizes: {', '.join(f'{n:,}' for n in s.channel_sizes)} (the full run goes "
        f"to {max(FULL.channel_sizes):,}), not 1,000: grpcio's `Channel.close()` on a "
        "subscribed channel waits for its connectivity poller (up to 0.2 s), and lbclient "
        "closes endpoint connections one after another, so 1,000 endpoints would take "
        "minutes to close (see the close() column).",
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
