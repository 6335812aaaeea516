"""Service discovery: etcd propagation latency and large endpoint updates.

    python -m benchmarks.bench_discovery [--quick]          # everything (needs etcd)
    python -m benchmarks.bench_discovery [--quick] --grow   # large updates only, no etcd

* etcd propagation: one real etcd member on loopback (``lbclient.testing.etcd``); an
  endpoint is written (``lbclient.etcd.add_endpoint``) or deleted and the clock stops when
  ``channel.endpoints()`` shows the change (polled every 0.5 ms). Includes etcd's commit
  (fsync), the watch event, the balancer update and the poll.
* Grow 3 -> 10,000 (issue 17): a ``file:`` channel over 3 real backends (another process),
  one caller thread; the file is replaced by 10,000 endpoints (the 3 first), then by the 3
  again. Measured: calls/s in the 5 s from the file write against the 2 s before (goal
  >= 0.5x for round_robin with 9,997 refusing addresses, 127.1.x.y:1), per second, failed
  calls, when the update was seen, calls/s after the shrink. The random_subsetting variant
  (goal >= 0.9x) grows to 9,997 *live* endpoints (one process reached at 10,000 loopback
  addresses, ``benchmarks._wildcard``): with 9,997 refusing, a random 10 of 10,000 almost
  never holds a live backend (that row is shown without a goal; its calls fail).
* Memory per endpoint of a real channel at 10,000 endpoints (Python heap and RSS).
* Balancer alone (no grpc): ``Balancer.update_endpoints`` with N endpoints and the cost
  of one connectivity change at N endpoints, with a factory whose handles do nothing.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import grpc

import lbclient
import lbclient.etcd
from benchmarks._common import (
    BackendProcess,
    Section,
    Table,
    fmt_summary,
    standalone_main,
    summarize,
)
from benchmarks._wildcard import WildcardBackend
from lbclient.testing import echo_pb2, echo_pb2_grpc

TITLE = "Service discovery: etcd propagation, large endpoint updates"
REQ = echo_pb2.EchoRequest(message="x")


def _wait(predicate: Any, timeout: float, interval: float = 0.0005) -> float:
    t0 = time.perf_counter()
    while not predicate():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(interval)
    return time.perf_counter() - t0


def etcd_latency(n: int) -> tuple[list[float], list[float]]:
    from lbclient.testing.etcd import EtcdCluster

    with tempfile.TemporaryDirectory() as tmp, EtcdCluster(Path(tmp) / "etcd", 1) as etcd:
        with lbclient.insecure_channel(etcd.target("bench"), resolver_options={
                "backoff_initial": 0.05}) as ch:
            def has(address: str) -> bool:
                return any(e.address == address for e in ch.endpoints())
            lbclient.etcd.add_endpoint(etcd.endpoints, "bench", "127.0.0.1:1")
            _wait(lambda: has("127.0.0.1:1"), 10)
            adds, removes = [], []
            for i in range(n):
                address = f"127.3.0.{i % 250 + 1}:1"
                t0 = time.perf_counter()
                lbclient.etcd.add_endpoint(etcd.endpoints, "bench", address)
                _wait(lambda a=address: has(a), 5)
                adds.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                lbclient.etcd.remove_endpoint(etcd.endpoints, "bench", address)
                _wait(lambda a=address: not has(a), 5)
                removes.append(time.perf_counter() - t0)
    return adds, removes


class _Caller:
    """One thread making unary calls back to back; ``ok``/``failed`` count them."""

    def __init__(self, stub: Any) -> None:
        self.stub, self.ok, self.failed = stub, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.stub.Unary(REQ, timeout=10)
                self.ok += 1
            except grpc.RpcError:
                self.failed += 1

    def rate(self, seconds: float) -> float:
        start, t0 = self.ok, time.perf_counter()
        time.sleep(seconds)
        return (self.ok - start) / (time.perf_counter() - t0)

    def per_second(self, seconds: int) -> list[int]:
        """Calls completed in each of the next ``seconds`` whole seconds."""
        out, last, t0 = [], self.ok, time.perf_counter()
        for i in range(1, seconds + 1):
            time.sleep(max(0.0, t0 + i - time.perf_counter()))
            out.append(self.ok - last)
            last = self.ok
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


class _EndpointsFile:
    """The file the ``file:`` resolver watches, replaced atomically."""

    def __init__(self, directory: str) -> None:
        self.path = Path(directory) / "e.json"

    def write(self, addresses: list[str]) -> None:
        tmp_file = self.path.with_suffix(".tmp")
        tmp_file.write_text(json.dumps({"endpoints": [{"address": a} for a in addresses]}))
        os.replace(tmp_file, self.path)


def _refusing(n: int) -> list[str]:
    """``n`` loopback addresses that refuse connections (nothing listens on port 1)."""
    return [f"127.1.{i // 250}.{i % 250 + 1}:1" for i in range(n)]


def large_update(n: int, during: float, config: dict[str, Any] | None = None, *,
                 live: bool = False, kept: int | None = None,
                 before_s: float = 2.0) -> dict[str, Any]:
    """A ``file:`` channel over 3 real backends, one caller thread; the file then lists
    ``n`` endpoints (the 3 first), then the 3 again. ``live``: the n - 3 new endpoints
    accept connections too (one wildcard backend at n distinct loopback addresses);
    otherwise they refuse. ``kept``: how many endpoints the channel keeps after the grow
    (a subsetting policy's subset size; default n). Calls/s are measured for
    ``before_s`` before the write, in the ``during`` seconds from the write (per second
    too), and for 1 s after the shrink. The benchmark's own checks cost O(1) (no snapshots)."""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        if live:
            wild = stack.enter_context(WildcardBackend())
            real = [wild.address(i) for i in range(3)]
            grown = real + [wild.address(i) for i in range(3, n)]
        else:
            real = list(stack.enter_context(BackendProcess(3)).addresses)
            grown = real + _refusing(n - 3)
        file = _EndpointsFile(tmp)
        file.write(real)
        ch = stack.enter_context(lbclient.insecure_channel(
            f"file://{file.path}", service_config=config,
            resolver_options={"poll_interval": 0.02}))
        _wait(lambda: sum(e.connectivity == "READY" for e in ch.endpoints()) == 3, 20)
        balancer = ch._balancer
        expected = n if kept is None else kept
        caller = _Caller(echo_pb2_grpc.EchoStub(ch))
        try:
            time.sleep(0.5)
            before = caller.rate(before_s)
            failed0 = caller.failed
            file.write(grown)
            seen: list[float] = []
            watcher = threading.Thread(target=lambda: seen.append(_wait(
                lambda: len(balancer._records) == expected, 120, 0.01)), daemon=True)
            watcher.start()
            seconds = caller.per_second(round(during))
            failed_during = caller.failed - failed0
            watcher.join(120)
            grow = seen[0] if seen else float("nan")
            snap = ch.endpoints()
            ready = sum(e.connectivity == "READY" for e in snap)
            file.write(real)
            shrink = _wait(lambda: len(balancer._records) == 3, 120, 0.002)
            after = caller.rate(1.0)
        finally:
            caller.stop()
    during_rate = sum(seconds) / len(seconds)
    return {"grow_s": grow, "shrink_s": shrink, "calls_before": before,
            "calls_during": during_rate, "ratio": during_rate / before if before else 0.0,
            "per_second": seconds, "calls_after": after, "failed": caller.failed,
            "failed_during": failed_during, "connections": len(snap), "ready": ready}


def balancer_alone(n: int) -> dict[str, float]:
    from lbclient.balancer.balancer import Balancer
    from lbclient.config import parse_service_config
    from lbclient.connectivity import Connectivity
    from lbclient.endpoint import Endpoint

    class Handle:
        closed = False

        def request_connection(self) -> None: ...

        def shutdown(self) -> None: ...

        def poll(self) -> bool:
            return False

        def connection_error(self) -> str | None:
            return None

    class Factory:
        def set_batcher(self, batch: Any) -> None:
            pass

        def create(self, endpoint: Endpoint, on_state: Any) -> Handle:
            return Handle()

    b = Balancer(Factory())
    cfg = parse_service_config(None)
    b.set_policy(cfg.lb.spec, cfg.lb.config)
    endpoints = [Endpoint(f"127.1.{i // 250}.{i % 250 + 1}:1") for i in range(n)]
    t0 = time.perf_counter()
    b.update_endpoints(endpoints)
    grow = time.perf_counter() - t0
    records = b.records()
    for rec in records[:3]:                 # three READY endpoints, as in large_update
        b.on_connectivity(rec, Connectivity.READY)
    events = min(n - 3, 300)
    t0 = time.perf_counter()
    for rec in records[3:3 + events]:
        b.on_connectivity(rec, Connectivity.TRANSIENT_FAILURE)
    per_event = (time.perf_counter() - t0) / events
    t0 = time.perf_counter()
    b.update_endpoints(endpoints[:3])
    shrink = time.perf_counter() - t0
    b.close()
    return {"grow_s": grow, "shrink_s": shrink, "event_s": per_event}


RR = [{"round_robin": {}}]
SUBSET = 10


def _subsetting() -> dict[str, Any]:
    return {"loadBalancingConfig": [{"random_subsetting": {"subsetSize": SUBSET,
                                                           "childPolicy": RR}}]}


# name, service config, new endpoints live?, endpoints kept after the grow, goal (ratio)
CONTROL = "control: the same 3 rewritten"
GROWS: dict[str, tuple[dict[str, Any] | None, bool, int | None, float | None]] = {
    CONTROL: (None, False, 3, None),
    "round_robin, new ones refusing": (None, False, None, 0.5),
    f"random_subsetting {SUBSET}, new ones live": (_subsetting(), True, SUBSET, 0.9),
    f"random_subsetting {SUBSET}, new ones refusing": (_subsetting(), False, SUBSET, None),
}


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def endpoint_memory(n: int, config: dict[str, Any] | None) -> dict[str, float]:
    """Bytes per endpoint of a real sync channel grown from 3 to ``n`` endpoints (n - 3
    refusing), once every kept endpoint's connection is open and has failed: Python heap
    (tracemalloc) and RSS (tracemalloc's own bookkeeping subtracted; includes grpc's C
    memory per connection)."""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        real = list(stack.enter_context(BackendProcess(3)).addresses)
        file = _EndpointsFile(tmp)
        file.write(real)
        gc.collect()
        tracemalloc.start()
        stack.callback(tracemalloc.stop)
        heap0, rss0, own0 = (tracemalloc.get_traced_memory()[0], _rss(),
                             tracemalloc.get_tracemalloc_memory())
        ch = stack.enter_context(lbclient.insecure_channel(
            f"file://{file.path}", service_config=config,
            resolver_options={"poll_interval": 0.02}))
        ch._factory.opener.PAUSE = 0.0   # the pace changes when memory is used, not how much
        _wait(lambda: sum(e.connectivity == "READY" for e in ch.endpoints()) == 3, 20)
        file.write(real + _refusing(n - 3))
        kept = n if config is None else SUBSET
        balancer = ch._balancer
        _wait(lambda: len(balancer._records) == kept, 120, 0.05)
        _wait(lambda: ch._factory.opener.pending() == 0 and not any(
            r.connectivity is lbclient.Connectivity.IDLE for r in balancer.records()), 120, 0.2)
        time.sleep(1.0)
        gc.collect()
        heap = tracemalloc.get_traced_memory()[0] - heap0
        rss = _rss() - rss0 - (tracemalloc.get_tracemalloc_memory() - own0)
    return {"heap_per_endpoint": heap / n, "rss_per_endpoint": rss / n, "connections": kept}


def _etcd_part(section: Section, latency_n: int) -> None:
    adds, removes = etcd_latency(latency_n)
    t = Table(["change", "n", "median ms", "p90 ms", "max ms"],
              caption="etcd write -> visible in channel.endpoints(), one member on loopback")
    for name, values in (("add", adds), ("remove", removes)):
        q = sorted(values)
        t.rows.append([name, str(len(q)), f"{statistics.median(q) * 1e3:.1f}",
                       f"{q[int(0.9 * (len(q) - 1))] * 1e3:.1f}", f"{q[-1] * 1e3:.1f}"])
        section.metrics[f"etcd.{name}.median_ms"] = statistics.median(q) * 1e3
        section.metrics[f"etcd.{name}.max_ms"] = q[-1] * 1e3
    section.tables.append(t)
    section.notes.append("Propagation includes etcd's commit (fsync on this machine's disk) "
                         "and the 0.5 ms poll of channel.endpoints().")


def _grow_part(section: Section, n: int, during: float, reps: int,
               grows: list[str], alone: tuple[int, ...], memory: bool,
               before_s: float = 2.0) -> None:
    t = Table(["grow 3 -> n", "n", "kept", "calls/s before",
               f"calls/s {during:g} s from the write", "ratio", "goal", "per second",
               "failed calls", "update seen s", "calls/s after shrink"],
              caption=f"file: channel, one caller thread; {reps} interleaved repetition(s): "
                      "median (min-max)")
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in grows}
    for rep in range(reps):
        order = grows[rep % len(grows):] + grows[:rep % len(grows)]
        for name in order:
            config, live, kept, _ = GROWS[name]
            results[name].append(large_update(3 if name == CONTROL else n, during, config,
                                              live=live, kept=kept, before_s=before_s))
    for name in grows:
        rs, goal = results[name], GROWS[name][3]
        ratios = summarize([r["ratio"] for r in rs])
        met = "n/a" if goal is None else (f">= {goal:g}: " + (
            "met" if ratios.median >= goal else "NOT met"))
        t.rows.append([name, "3" if name == CONTROL else f"{n:,}",
                       f"{rs[0]['connections']:,}",
                       fmt_summary(summarize([r["calls_before"] for r in rs]), "{:.0f}"),
                       fmt_summary(summarize([r["calls_during"] for r in rs]), "{:.0f}"),
                       fmt_summary(ratios), met,
                       " ".join(str(x) for x in rs[len(rs) // 2]["per_second"]),
                       str(sum(r["failed_during"] for r in rs)),
                       fmt_summary(summarize([r["grow_s"] for r in rs])),
                       fmt_summary(summarize([r["calls_after"] for r in rs]), "{:.0f}")])
        key = "control" if name == CONTROL else (
            name.split(",")[0].split()[0] + ("_live" if GROWS[name][1] else ""))
        section.metrics[f"grow.{key}.ratio"] = ratios.median
        section.metrics[f"grow.{key}.failed"] = float(sum(r["failed_during"] for r in rs))
    section.tables.append(t)
    section.notes += [
        "Grow: the resolver's file goes from 3 endpoints (real backends) to n; calls/s are "
        f"counted over the {during:g} s that start with the file write (file poll, parse, "
        f"update and connections included), against the {before_s:g} s before it. 'per "
        "second' is the median repetition's calls in each second from the write. The "
        "control row rewrites the same 3 endpoints: its ratio is this machine's noise "
        "(other work shares its 2 cores), the yardstick for the others.",
        f"Why the subsetting goal is measured with live endpoints: with {n - 3:,} of {n:,} "
        f"refusing, a random {SUBSET} of them holds a live backend with probability "
        f"~{1 - (1 - SUBSET / n) ** 3:.1%}, so the channel has nothing to call (the "
        "'refusing' row: its calls fail; no goal). With the new endpoints live (one backend "
        f"process reached at {n:,} loopback addresses), the subset serves, and the ratio "
        f"shows what the grow costs a subsetting client: parsing and hashing {n:,} "
        f"endpoints, {SUBSET} connections.",
        f"round_robin keeps a connection per endpoint: {n - 3:,} refused connections retried by "
        "grpc with backoff (grpc's own threads: ~0.3-0.6 of a core here for the first "
        "seconds), opened by lbclient a slice at a time (~5% of the interpreter) so that "
        "the caller keeps its share.",
    ]
    if alone:
        b = Table(["endpoints", "update_endpoints grow ms", "shrink ms",
                   "one connectivity change ms"], caption="Balancer alone, no grpc")
        for m in alone:
            a = balancer_alone(m)
            b.rows.append([f"{m:,}", f"{a['grow_s'] * 1e3:.1f}", f"{a['shrink_s'] * 1e3:.1f}",
                           f"{a['event_s'] * 1e3:.4f}"])
            for key, value in a.items():
                section.metrics[f"balancer.{m}.{key}"] = value
        section.tables.append(b)
        section.notes.append(
            "One connectivity change: an endpoint that was not READY failing (the common "
            "event after a grow); it rebuilds no picker and reads no other endpoint, so its "
            "cost does not grow with n (it walked every record before issue 17).")
    if memory:
        m = Table(["policy", "endpoints", "connections", "Python heap per endpoint",
                   "RSS per endpoint"],
                  caption="a real sync channel after a grow from 3 (every connection open)")
        for label, config in (("round_robin", None),
                              (f"random_subsetting {SUBSET}", _subsetting())):
            r = endpoint_memory(n, config)
            m.rows.append([label, f"{n:,}", f"{r['connections']:,}",
                           f"{r['heap_per_endpoint'] / 1024:.1f} KiB",
                           f"{r['rss_per_endpoint'] / 1024:.1f} KiB"])
            key = label.split()[0]
            section.metrics[f"memory.{key}.heap_per_endpoint"] = r["heap_per_endpoint"]
            section.metrics[f"memory.{key}.rss_per_endpoint"] = r["rss_per_endpoint"]
        section.tables.append(m)
        section.notes.append("RSS includes grpc's C memory per connection (a grpc channel "
                             "per endpoint) and is what the process really pays; the heap "
                             "column is Python objects only.")


ALL_GROWS = list(GROWS)
QUICK_GROWS = ALL_GROWS[:3]


def run(quick: bool) -> Section:
    section = Section(TITLE)
    _etcd_part(section, 20 if quick else 100)
    _grow_part(section, 10_000, 5.0, 1 if quick else 3, QUICK_GROWS if quick else ALL_GROWS,
               (300, 10_000), True)
    return section


def run_grow(quick: bool) -> Section:
    """The large-update part alone (no etcd needed): ``--grow``."""
    section = Section(TITLE + " (large updates only)")
    _grow_part(section, 10_000, 5.0, 1 if quick else 3, QUICK_GROWS if quick else ALL_GROWS,
               (300, 10_000), True)
    return section


def run_smoke() -> Section:
    section = run_grow_smoke()
    _etcd_part(section, 3)
    return section


def run_grow_smoke() -> Section:
    """The large-update part, minimal (30 endpoints, 1 s windows; no etcd)."""
    section = Section(TITLE + " (large updates only)")
    _grow_part(section, 30, 1.0, 1, QUICK_GROWS, (30,), False, before_s=0.5)
    return section


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.bench_discovery [--quick] [--grow]``; ``--grow`` runs the
    large updates alone (no etcd)."""
    args = list(sys.argv[1:] if argv is None else argv)
    grow_only = "--grow" in args
    if grow_only:
        args.remove("--grow")
    return standalone_main(run_grow if grow_only else run, args)


if __name__ == "__main__":
    raise SystemExit(main())
