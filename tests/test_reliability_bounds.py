"""Resource bounds: what keeps memory finite whatever the resolver, the callers or the
servers do (the limits are listed in docs/reliability.md).

* 100,000 endpoints from a resolver: bounded per-endpoint cost (tracemalloc), released
  when they go; outlier state follows the endpoint set;
* a session flood: 1,000,000 distinct session keys through ``sticky`` keep its table
  at ``maxSessions``;
* metrics: at most ``max_endpoints + 1`` address labels;
* retry buffers: 256 KiB per call, 256 MiB per channel (given back when a call commits
  or goes away); attempts capped at 5;
* an endpoints file over 64 MiB is refused without being read.
"""

from __future__ import annotations

import gc
import json
import os
import pathlib
import tracemalloc
from typing import Any

from helpers import Factory, NoTimers, wait_until

import lbclient
from lbclient import Connectivity, Endpoint, PickInfo
from lbclient._core.replay import CHANNEL_LIMIT, DEFAULT_LIMIT, ReplayBudget
from lbclient._sync.replay import SyncReplay as RequestReplay
from lbclient.balancer.balancer import Balancer
from lbclient.config import parse_service_config
from lbclient.metrics._core import MAX_ENDPOINTS, OTHER, ChannelMetrics
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

SERVICE = "lbclient.testing.echo.v1.Echo"


def _policy(raw: dict[str, Any]) -> tuple[Any, Any]:
    config = parse_service_config({"loadBalancingConfig": [raw]})
    return config.lb.spec, config.lb.config


def _endpoints(n: int) -> list[Endpoint]:
    return [Endpoint(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:50051") for i in range(n)]


def _rss() -> int:
    """Resident set size in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- endpoints


def _grow_and_shrink(bal: Balancer, factory: Factory, endpoints: list[Endpoint]) -> None:
    bal.update_endpoints(endpoints)
    with bal.batch():                       # the connectivity sweep's single rebuild
        for handle in factory.handles.values():
            handle.on_state(Connectivity.READY)
    seen = {bal.picker.pick(PickInfo("/svc/M")).candidate.address for _ in range(100)}
    assert len(seen) == 100
    bal.update_endpoints(endpoints[:3])
    factory.handles = {a: h for a, h in factory.handles.items()
                       if a in {e.address for e in endpoints[:3]}}


def test_per_endpoint_memory_is_bounded_and_released() -> None:
    """tracemalloc over 10,000 endpoints (a representative sample: the cost is linear)."""
    factory = Factory()
    bal = Balancer(factory, scheduler=NoTimers())
    bal.set_policy(*_policy({"outlier_detection": {
        "consecutiveFailures": 5, "childPolicy": [{"round_robin": {}}]}}))
    endpoints = _endpoints(10_000)
    bal.update_endpoints(endpoints[:3])
    tracemalloc.start()
    try:
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        bal.update_endpoints(endpoints)
        with bal.batch():
            for handle in factory.handles.values():
                handle.on_state(Connectivity.READY)
        gc.collect()
        per_endpoint = (tracemalloc.get_traced_memory()[0] - base) / len(endpoints)
        detector = bal._fitness.outliers
        assert detector is not None and len(detector.addresses()) == 10_000
        _grow_and_shrink(bal, factory, endpoints)
        gc.collect()
        left = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        bal.close()
    print(f"\n{per_endpoint:.0f} bytes per endpoint; {left} bytes left after shrinking")
    assert per_endpoint < 4096, per_endpoint         # ~2 KB measured (docs/reliability.md)
    assert left < 200 * 1024, left                    # nothing per endpoint is kept
    assert len(detector.addresses()) == 3             # outlier state follows the endpoints


def test_a_resolver_returning_100000_endpoints() -> None:
    factory = Factory()
    bal = Balancer(factory, scheduler=NoTimers())
    bal.set_policy(*_policy({"round_robin": {}}))
    endpoints = _endpoints(100_000)
    gc.collect()
    rss0 = _rss()
    try:
        _grow_and_shrink(bal, factory, endpoints)
        assert len(bal.records()) == 3
    finally:
        bal.close()
    # ~2 KB per endpoint while they exist (the sample above); far below the machine's
    # memory, and mostly returned: a generous bound that an unbounded leak would break
    grown = _rss() - rss0
    print(f"\nRSS after 100,000 endpoints came and went: +{grown / 2**20:.0f} MiB")
    assert grown < 600 * 1024 * 1024


# --------------------------------------------------------------------------- sessions


def test_a_million_distinct_sessions_keep_the_sticky_table_bounded() -> None:
    factory = Factory()
    bal = Balancer(factory, scheduler=NoTimers())
    bal.set_policy(*_policy({"sticky": {"sessionHeader": "x-session"}}))   # maxSessions 10k
    bal.update_endpoints(_endpoints(5))
    for handle in factory.handles.values():
        handle.on_state(Connectivity.READY)
    policy = bal.policy
    picker = bal.picker
    gc.collect()
    rss0 = _rss()
    try:
        for i in range(1_000_000):
            picker.pick(PickInfo("/svc/M", (("x-session", f"session-{i}"),)))
        assert len(policy.sessions) == 10_000   # type: ignore[union-attr]
        # the newest sessions are the ones remembered (least recently used go first)
        assert policy.session_endpoint("session-999999") is not None  # type: ignore[union-attr]
        assert policy.session_endpoint("session-0") is None  # type: ignore[union-attr]
    finally:
        bal.close()
    # 1,000,000 remembered sessions would take ~250 MB; 10,000 take ~2.5 MB
    grown = _rss() - rss0
    print(f"\nRSS after 1,000,000 sessions: +{grown / 2**20:.0f} MiB")
    assert grown < 64 * 1024 * 1024


# --------------------------------------------------------------------------- metrics


def test_metrics_export_at_most_max_endpoints_plus_other() -> None:
    metrics = ChannelMetrics("t")
    for i in range(5_000):
        address = f"10.2.{i >> 8}.{i & 255}:1"
        metrics.endpoint_event(address, "added")
        metrics.call_ended(address, "OK" if i % 3 else "NO_SUCH_CODE", 0.001)
        if i % 2:
            metrics.endpoint_event(address, "removed")
    snap = metrics.snapshot()
    addresses = {row.address for row in snap.endpoints}
    assert len(addresses) <= MAX_ENDPOINTS + 1 and OTHER in addresses
    assert set(snap.calls) <= {"OK", "UNKNOWN"}                 # codes are a fixed set
    assert sum(snap.calls.values()) == 5_000                    # nothing lost by folding


# --------------------------------------------------------------------------- retries


def test_replay_budget_commits_calls_past_the_channel_limit() -> None:
    budget = ReplayBudget(limit=1_000)
    msg = b"x" * 300
    first = RequestReplay(iter([msg] * 3), limit=DEFAULT_LIMIT, budget=budget)
    view = first.view()
    assert view is not None and [next(view) for _ in range(3)] == [msg] * 3
    assert budget.used == 900 and not first.committed
    second = RequestReplay(iter([msg] * 2), limit=DEFAULT_LIMIT, budget=budget)
    view2 = second.view()
    assert view2 is not None
    assert next(view2) == msg                   # 1,200 > 1,000: this call commits
    assert second.committed and budget.used == 900
    assert list(view2) == [msg]                 # the committed attempt goes on unbuffered
    del first, view
    gc.collect()
    assert budget.used == 0                     # a finished call gives its share back
    assert CHANNEL_LIMIT == 256 * 1024 * 1024


def test_retried_streams_give_their_buffer_back(fleet: Fleet) -> None:
    config = {"methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": {
        "maxAttempts": 100, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}
    with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        reqs = [echo_pb2.EchoRequest(message="m", payload=b"p" * 1000)] * 5
        assert stub.ClientStream(iter(reqs), timeout=5).index == 5
        future = stub.ClientStream.future(iter(reqs), timeout=5)
        assert future.result().index == 5
        budget = ch._ctx.replay_budget
        assert budget.limit == CHANNEL_LIMIT
        del future
        gc.collect()
        assert budget.used == 0
        policy = ch.service_config.method_configs[0].retry_policy  # type: ignore[union-attr]
        assert policy is not None and policy.max_attempts == 5   # maxAttempts is capped


# --------------------------------------------------------------------------- resolver input


def test_an_endpoints_file_over_64_mib_is_refused_unread(fleet: Fleet,
                                                         tmp_path: pathlib.Path) -> None:
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps({"endpoints": [{"address": a} for a in fleet.addresses]}))
    errors: list[Any] = []
    with lbclient.insecure_channel(f"file://{path}",
                                   resolver_options={"poll_interval": 0.02}) as ch:
        ch.add_resolver_listener(lambda state, error: errors.append(error) if error else None)
        echo_pb2_grpc.EchoStub(ch).Unary(echo_pb2.EchoRequest(), timeout=5)
        huge = tmp_path / "huge.json"
        with open(huge, "wb") as f:
            f.truncate(65 * 1024 * 1024)        # sparse: costs no disk, must not be read
        huge.replace(path)
        wait_until(lambda: bool(errors), timeout=5, message="the resolver's error")
        assert "too large" in str(errors[0])
        assert len(ch.endpoints()) == 3          # the last good endpoints are kept
        echo_pb2_grpc.EchoStub(ch).Unary(echo_pb2.EchoRequest(), timeout=5)
