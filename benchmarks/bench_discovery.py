"""Service discovery: etcd propagation latency and large endpoint updates.

* etcd propagation: one real etcd member on loopback (``lbclient.testing.etcd``); an
  endpoint is written (``lbclient.etcd.add_endpoint``) or deleted and the clock stops when
  ``channel.endpoints()`` shows the change (polled every 0.5 ms). Includes etcd's commit
  (fsync), the watch event, the balancer update and the poll.
* Large update: a ``file:`` channel over 3 real backends (another process) receives a
  snapshot of N endpoints (3 real + N-3 addresses that refuse connections, 127.1.x.y:1),
  then the 3-endpoint snapshot again. Measured: time until ``channel.endpoints()`` has N
  (resp. 3) entries after the file is replaced (file poll 20 ms, JSON parse, diff, one
  connection object per new endpoint), unary calls/s on one thread before, in the 5 s
  after the grow and after the shrink, and failed calls (must be 0).
* Balancer alone (no grpc): ``Balancer.update_endpoints`` with N endpoints and the cost
  of one connectivity change at N endpoints, with a factory whose handles do nothing.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

import lbclient
import lbclient.etcd
from benchmarks._common import BackendProcess, Section, Table, standalone_main
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

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def large_update(n: int, during: float) -> dict[str, float]:
    fake = [f"127.1.{i // 250}.{i % 250 + 1}:1" for i in range(n - 3)]
    with tempfile.TemporaryDirectory() as tmp, BackendProcess(3) as backends:
        path = Path(tmp) / "e.json"

        def write(addresses: list[str]) -> None:
            tmp_file = path.with_suffix(".tmp")
            tmp_file.write_text(json.dumps({"endpoints": [{"address": a}
                                                          for a in addresses]}))
            os.replace(tmp_file, path)

        real = list(backends.addresses)
        write(real)
        with lbclient.insecure_channel(f"file://{path}",
                                       resolver_options={"poll_interval": 0.02}) as ch:
            _wait(lambda: sum(e.connectivity == "READY" for e in ch.endpoints()) == 3, 20)
            caller = _Caller(echo_pb2_grpc.EchoStub(ch))
            try:
                before = caller.rate(1.0)
                write(real + fake)
                grow = _wait(lambda: len(ch.endpoints()) == n, 120, 0.002)
                during_rate = caller.rate(during)
                write(real)
                shrink = _wait(lambda: len(ch.endpoints()) == 3, 120, 0.002)
                after = caller.rate(1.0)
            finally:
                caller.stop()
    return {"grow_s": grow, "shrink_s": shrink, "calls_before": before,
            "calls_during": during_rate, "calls_after": after, "failed": caller.failed}


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


def _run(latency_n: int, sizes: tuple[int, ...], during: float) -> Section:
    section = Section(TITLE)
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

    t = Table(["endpoints", "grow s", "shrink s", "calls/s before", f"calls/s {during:g}s after "
               "grow", "calls/s after shrink", "failed calls"],
              caption="file: channel, 3 real backends + refusing addresses, one caller thread")
    b = Table(["endpoints", "update_endpoints grow ms", "shrink ms",
               "one connectivity change ms"], caption="Balancer alone, no grpc")
    for n in sizes:
        r = large_update(n, during)
        t.rows.append([f"{n:,}", f"{r['grow_s']:.2f}", f"{r['shrink_s']:.2f}",
                       f"{r['calls_before']:.0f}", f"{r['calls_during']:.0f}",
                       f"{r['calls_after']:.0f}", f"{r['failed']:.0f}"])
        for key, value in r.items():
            section.metrics[f"update.{n}.{key}"] = float(value)
        a = balancer_alone(n)
        b.rows.append([f"{n:,}", f"{a['grow_s'] * 1e3:.1f}", f"{a['shrink_s'] * 1e3:.1f}",
                       f"{a['event_s'] * 1e3:.3f}"])
        for key, value in a.items():
            section.metrics[f"balancer.{n}.{key}"] = value
    section.tables += [t, b]
    section.notes += [
        "Propagation includes etcd's commit (fsync on this machine's disk) and the 0.5 ms "
        "poll of channel.endpoints().",
        "After a large grow every new endpoint goes through connection attempts; each "
        "connectivity change rebuilds the picker over all N records under the balancer lock "
        "(the 'one connectivity change' column), which is what slows calls right after a "
        "grow to thousands of endpoints.",
    ]
    return section


def run(quick: bool) -> Section:
    return _run(20 if quick else 100, (1_000, 10_000), 3.0 if quick else 5.0)


def run_smoke() -> Section:
    return _run(3, (50,), 0.5)


def main(argv: list[str] | None = None) -> int:
    return standalone_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
