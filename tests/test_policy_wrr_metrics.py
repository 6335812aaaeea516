"""gRFC A78's weighted round robin metrics: grpc.lb.wrr.rr_fallback,
endpoint_weight_not_yet_usable, endpoint_weight_stale and endpoint_weights, recorded on
every scheduler update (picker builds and weight-timer ticks), with grpc.lb.locality
from weighted_target. A recording sink drives the policy table-driven on a manual clock;
real backends sending ORCA reports are read with the OpenTelemetry SDK's
InMemoryMetricReader."""

from __future__ import annotations

import collections
import random
from collections.abc import Mapping
from typing import Any

import pytest
from helpers import wait_ready, wait_until
from test_policy_support import ManualClock, ManualScheduler, candidates, info

import lbclient
from lbclient._proto.orca_load_report_pb2 import OrcaLoadReport
from lbclient.balancer.lb_metrics import LOCALITY_OPTION, METRICS_OPTION, LbMetrics
from lbclient.balancer.picker import CallOutcome
from lbclient.balancer.policy import PolicyContext, get_policy
from lbclient.testing import echo_pb2, echo_pb2_grpc
from lbclient.testing.pytest_plugin import FleetFactory

pytestmark = pytest.mark.timeout(60)

FALLBACK = "grpc.lb.wrr.rr_fallback"
NOT_YET = "grpc.lb.wrr.endpoint_weight_not_yet_usable"
STALE = "grpc.lb.wrr.endpoint_weight_stale"
WEIGHTS = "grpc.lb.wrr.endpoint_weights"


class Sink:
    """Records what policies send, as (name, value, labels)."""

    def __init__(self) -> None:
        self.counts: list[tuple[str, int, dict[str, str]]] = []
        self.values: list[tuple[str, float, dict[str, str]]] = []

    def add(self, name: str, value: int, labels: Mapping[str, str]) -> None:
        self.counts.append((name, value, dict(labels)))

    def record(self, name: str, value: float, labels: Mapping[str, str]) -> None:
        self.values.append((name, value, dict(labels)))

    def take(self) -> tuple[dict[str, int], list[float]]:
        """(counter totals, weights recorded) since the last take."""
        totals: collections.Counter[str] = collections.Counter()
        for name, value, _ in self.counts:
            totals[name] += value
        weights = [v for name, v, _ in self.values if name == WEIGHTS]
        self.counts, self.values = [], []
        return dict(totals), weights


def wrr(clock: ManualClock, sink: Sink | None, scheduler: Any = None,
        rebuild: Any = lambda: None, locality: str | None = None, **raw: Any) -> Any:
    metrics = LbMetrics()
    if sink is not None:
        metrics.add_sink(sink)
    options: dict[str, Any] = {METRICS_OPTION: metrics}
    if locality is not None:
        options[LOCALITY_OPTION] = locality
    spec = get_policy("weighted_round_robin")
    assert spec is not None
    cfg = spec.parse_config({"blackoutPeriod": "5s", "weightExpirationPeriod": "60s",
                             "weightUpdatePeriod": "1s", **raw}, "wrr")
    ctx = PolicyContext(clock=clock, rng=random.Random(1), scheduler=scheduler,
                        request_rebuild=rebuild, options=options)
    return spec.create(cfg, ctx)


def report(qps: float, cpu: float) -> CallOutcome:
    rep = OrcaLoadReport(rps_fractional=qps, cpu_utilization=cpu)
    return CallOutcome("OK", 0.001, (("endpoint-load-metrics-bin", rep.SerializeToString()),))


def feed(picker: Any, reports: dict[str, CallOutcome], n: int = 30) -> None:
    for _ in range(n):
        r = picker.pick(info())
        if r.candidate.address in reports and r.on_done is not None:
            r.on_done(reports[r.candidate.address])


# ------------------------------------------------------------------ per update, table-driven
# (step, seconds to advance before it, expected counters, expected weights)
STEPS = [
    ("no report yet", 0, {FALLBACK: 1, NOT_YET: 3}, [0.0, 0.0, 0.0]),
    ("reports in the blackout period", 1, {FALLBACK: 1, NOT_YET: 3}, [0.0, 0.0, 0.0]),
    ("two usable, one never reported", 5, {NOT_YET: 1}, [400.0, 100.0, 0.0]),
    ("all reports expired", 61, {FALLBACK: 1, STALE: 2, NOT_YET: 1}, [0.0, 0.0, 0.0]),
]


def test_each_scheduler_update_records_the_a78_metrics() -> None:
    clock, sink = ManualClock(), Sink()
    policy = wrr(clock, sink)
    cands = candidates(3)
    reports = {cands[0].address: report(100, 0.25), cands[1].address: report(100, 1.0)}
    seen = []
    for name, advance, _, _ in STEPS:
        clock.advance(advance)
        picker = policy.build_picker(cands)
        seen.append((name, *sink.take()))
        feed(picker, reports if name != "all reports expired" else {})
    assert seen == [(name, counters, weights) for name, _, counters, weights in STEPS]


def test_the_timer_records_unchanged_updates_and_rebuilds_changed_ones() -> None:
    clock, sink = ManualClock(), Sink()
    sched = ManualScheduler(clock)
    rebuilds: list[int] = []
    policy = wrr(clock, sink, sched, lambda: rebuilds.append(1), blackoutPeriod="0s")
    cands = candidates(2)
    picker = policy.build_picker(cands)             # metrics on: the timer starts
    assert len(sched.timers) == 1
    assert sink.take() == ({FALLBACK: 1, NOT_YET: 2}, [0.0, 0.0])
    clock.advance(1)
    assert sched.run_due() == 1 and rebuilds == []  # nothing changed: recorded here
    assert sink.take() == ({FALLBACK: 1, NOT_YET: 2}, [0.0, 0.0])
    feed(picker, {cands[0].address: report(90, 0.3), cands[1].address: report(90, 0.9)})
    clock.advance(1)
    assert sched.run_due() == 1 and rebuilds == [1]  # changed: the rebuild records
    assert sink.take() == ({}, [])
    policy.build_picker(cands)
    assert sink.take() == ({}, [300.0, 100.0])
    policy.close()


def test_nothing_is_recorded_or_scheduled_without_a_sink() -> None:
    clock = ManualClock()
    sched = ManualScheduler(clock)
    policy = wrr(clock, None, sched)
    policy.build_picker(candidates(3))
    assert sched.timers == []


def test_the_locality_label_comes_from_the_context() -> None:
    sink = Sink()
    wrr(ManualClock(), sink, locality="us-east-1a").build_picker(candidates(2))
    assert {tuple(sorted(labels.items())) for _, _, labels in sink.counts + sink.values} \
        == {(("grpc.lb.locality", "us-east-1a"),)}
    sink = Sink()
    wrr(ManualClock(), sink).build_picker(candidates(2))
    assert {labels["grpc.lb.locality"] for _, _, labels in sink.counts} == {""}


# ------------------------------------------------------------------ OpenTelemetry, real backends
pytest.importorskip("opentelemetry.sdk.metrics")
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402

import lbclient.metrics.opentelemetry as lbotel  # noqa: E402


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    return list(metric.data.data_points)
    return []


def total(reader: InMemoryMetricReader, name: str) -> float:
    return sum(getattr(p, "value", 0) or getattr(p, "count", 0) for p in points(reader, name))


def test_real_backends_with_orca_reports(fleet_factory: FleetFactory) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(3)
    for backend, cpu in zip(fleet, (0.2, 0.4, 0.8), strict=True):
        backend.set_orca(True, cpu_utilization=cpu, rps_fractional=100)   # 500/250/125
    cfg = {"loadBalancingConfig": [{"weighted_round_robin": {
        "blackoutPeriod": "0s", "weightUpdatePeriod": "0.1s"}}]}
    with lbclient.insecure_channel(fleet.target, service_config=cfg) as ch:
        lbotel.enable(ch, meter_provider=provider, backend_service="orders")
        wait_ready(ch, 3)
        stub = echo_pb2_grpc.EchoStub(ch)
        for i in range(30):
            stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5)

        def weights_recorded() -> bool:
            return any(p.count >= 3 and p.max == 500 for p in points(reader, WEIGHTS))
        wait_until(weights_recorded, 10, message="ORCA weights recorded")
        (hist,) = points(reader, WEIGHTS)
        assert dict(hist.attributes) == {"grpc.target": fleet.target,
                                         "grpc.lb.backend_service": "orders",
                                         "grpc.lb.locality": ""}
        assert hist.min >= 0 and hist.max == 500
        metrics = {m.name: m for rm in reader.get_metrics_data().resource_metrics
                   for sm in rm.scope_metrics for m in sm.metrics}
        assert metrics[WEIGHTS].unit == "{weight}"
        assert metrics[FALLBACK].unit == "{update}"
        assert metrics[NOT_YET].unit == "{endpoint}"
        # Before the first reports the updates fell back to round robin.
        assert total(reader, FALLBACK) >= 1 and total(reader, NOT_YET) >= 3
        assert total(reader, STALE) == 0


def test_weighted_target_children_carry_their_locality(fleet_factory: FleetFactory) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(2)
    a, b = fleet.addresses
    cfg = {"loadBalancingConfig": [{"weighted_target": {
        "targets": {"east": {"weight": 1, "childPolicy": [{"weighted_round_robin": {}}]},
                    "west": {"weight": 1, "childPolicy": [{"weighted_round_robin": {}}]}},
        "endpoints": {a: {"zone": "east"}, b: {"zone": "west"}}}}]}
    with lbclient.insecure_channel(fleet.target, service_config=cfg) as ch:
        lbotel.enable(ch, meter_provider=provider)
        wait_ready(ch, 2)
        ch._balancer.rebuild()           # a scheduler update with the sink attached
        localities = {p.attributes["grpc.lb.locality"] for p in points(reader, FALLBACK)}
        assert localities == {"east", "west"}
