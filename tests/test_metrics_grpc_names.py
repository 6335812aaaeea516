"""gRPC's own OpenTelemetry metrics (gRFC A66, A91, A94, A96 names, units and labels),
read with the OTel SDK's InMemoryMetricReader after real calls on real backends."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
from helpers import wait_ready, wait_until

import lbclient
import lbclient.aio
from lbclient.connectivity import Connectivity
from lbclient.endpoint import Endpoint
from lbclient.testing import echo_pb2, echo_pb2_grpc
from lbclient.testing.pytest_plugin import FleetFactory

pytest.importorskip("opentelemetry.sdk.metrics")
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from test_health_balancer import ADDRS, World  # noqa: E402

import lbclient.metrics.opentelemetry as lbotel  # noqa: E402

pytestmark = pytest.mark.timeout(60)

UNARY = "lbclient.testing.echo.v1.Echo/Unary"
STREAM = "lbclient.testing.echo.v1.Echo/ServerStream"
SERVICE = "lbclient.testing.echo.v1.Echo"


def metrics(reader: InMemoryMetricReader) -> dict[str, Any]:
    out: dict[str, Any] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out[metric.name] = metric
    return out


def points(reader: InMemoryMetricReader, name: str, **attrs: str) -> list[Any]:
    metric = metrics(reader).get(name)
    if metric is None:
        return []
    return [p for p in metric.data.data_points
            if all(p.attributes.get(k.replace("_", ".", 1) if k.startswith("grpc_") else k)
                   == v for k, v in attrs.items())]


def total(reader: InMemoryMetricReader, name: str, **attrs: str) -> float:
    """Sum of a counter's values, or of a histogram's counts, over matching points."""
    return sum(getattr(p, "value", None) if hasattr(p, "value") else p.count
               for p in points(reader, name, **attrs))


def retry_config(**policy: Any) -> str:
    return json.dumps({"methodConfig": [{"name": [{"service": SERVICE}], **policy}]})


RETRY = {"retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
                         "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


def test_per_attempt_and_per_call_metrics_with_retries(
        fleet_factory: FleetFactory, reader: InMemoryMetricReader) -> None:
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(3)
    fleet[0].set_error_rate(1.0)          # UNAVAILABLE: every call there is retried
    with lbclient.insecure_channel(fleet.target, service_config=retry_config(**RETRY)) as ch:
        lbotel.enable(ch, meter_provider=provider)
        wait_ready(ch, 3)
        stub = echo_pb2_grpc.EchoStub(ch)
        for i in range(30):
            stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5)
        attempts = sum(b.calls for b in fleet)
        failed = fleet[0].calls
        assert failed > 0
        base = {"grpc.method": UNARY, "grpc.target": fleet.target}
        started = points(reader, "grpc.client.attempt.started")
        assert [p.attributes for p in started] == [base]
        assert started[0].value == attempts
        assert total(reader, "grpc.client.attempt.duration", **{"grpc.status": "OK"}) == 30
        assert total(reader, "grpc.client.attempt.duration",
                     **{"grpc.status": "UNAVAILABLE"}) == failed
        (call,) = points(reader, "grpc.client.call.duration")
        assert dict(call.attributes) == {**base, "grpc.status": "OK"}
        assert call.count == 30 and call.sum > 0
        (retries,) = points(reader, "grpc.client.call.retries")
        assert dict(retries.attributes) == base
        assert retries.count == failed and retries.sum == failed   # 0 is not recorded
        assert points(reader, "grpc.client.call.hedges") == []
        found = metrics(reader)
        assert found["grpc.client.attempt.duration"].unit == "s"
        assert found["grpc.client.attempt.started"].unit == "{attempt}"
        assert found["grpc.client.call.retries"].unit == "{retry}"
        assert list(found["grpc.client.call.duration"].data.data_points[0]
                    .explicit_bounds)[:4] == [0, 0.00001, 0.00005, 0.0001]


def test_failed_calls_futures_and_streams_are_recorded(
        fleet_factory: FleetFactory, reader: InMemoryMetricReader) -> None:
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(2)
    with lbclient.insecure_channel(fleet.target) as ch:
        lbotel.enable(ch, meter_provider=provider)
        wait_ready(ch, 2)
        stub = echo_pb2_grpc.EchoStub(ch)
        fleet[0].set_error_rate(1.0)
        fleet[1].set_error_rate(1.0)
        with pytest.raises(grpc.RpcError):
            stub.Unary(echo_pb2.EchoRequest(message="x"), timeout=5)
        fleet[0].set_error_rate(0.0)
        fleet[1].set_error_rate(0.0)
        stub.Unary.future(echo_pb2.EchoRequest(message="f"), timeout=5).result()
        replies = list(stub.ServerStream(echo_pb2.EchoRequest(message="s", count=3),
                                         timeout=5))
        assert len(replies) == 3
        wait_until(lambda: total(reader, "grpc.client.call.duration") == 3,
                   message="three calls recorded")
        assert total(reader, "grpc.client.call.duration",
                     **{"grpc.status": "UNAVAILABLE", "grpc.method": UNARY}) == 1
        assert total(reader, "grpc.client.call.duration",
                     **{"grpc.status": "OK", "grpc.method": UNARY}) == 1
        assert total(reader, "grpc.client.call.duration",
                     **{"grpc.status": "OK", "grpc.method": STREAM}) == 1
        assert total(reader, "grpc.client.attempt.started") == 3


def test_unregistered_methods_are_other(
        fleet_factory: FleetFactory, reader: InMemoryMetricReader) -> None:
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(1)
    with lbclient.insecure_channel(fleet.target) as ch:
        lbotel.enable(ch, meter_provider=provider)
        wait_ready(ch, 1)
        raw = ch.unary_unary("/" + UNARY,
                             request_serializer=echo_pb2.EchoRequest.SerializeToString,
                             response_deserializer=echo_pb2.EchoReply.FromString)
        raw(echo_pb2.EchoRequest(message="x"), timeout=5)
        (p,) = points(reader, "grpc.client.call.duration")
        assert p.attributes["grpc.method"] == "other"


def test_hedges_are_counted_apart_from_retries(
        fleet_factory: FleetFactory, reader: InMemoryMetricReader) -> None:
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(3)
    for b in fleet:
        b.set_latency(0.2)
    hedging = {"hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.02s"}}
    with lbclient.insecure_channel(fleet.target, service_config=retry_config(**hedging)) as ch:
        lbotel.enable(ch, meter_provider=provider)
        wait_ready(ch, 3)
        echo_pb2_grpc.EchoStub(ch).Unary(echo_pb2.EchoRequest(message="h"), timeout=5)
        (hedges,) = points(reader, "grpc.client.call.hedges")
        assert hedges.count == 1 and hedges.sum == 1
        assert points(reader, "grpc.client.call.retries") == []
        assert total(reader, "grpc.client.attempt.started") == 2


def test_subchannel_connection_metrics(
        fleet_factory: FleetFactory, reader: InMemoryMetricReader) -> None:
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(3)
    with lbclient.insecure_channel(fleet.target) as ch:
        lbotel.enable(ch, meter_provider=provider)
        wait_ready(ch, 3)
        base = {"grpc.target": fleet.target, "grpc.lb.backend_service": "",
                "grpc.lb.locality": ""}
        (ok,) = points(reader, "grpc.subchannel.connection_attempts_succeeded")
        assert dict(ok.attributes) == base and ok.value == 3
        (open_,) = points(reader, "grpc.subchannel.open_connections")
        assert dict(open_.attributes) == {**base, "grpc.security_level": "none"}
        assert open_.value == 3
        fleet[2].stop()
        wait_until(lambda: total(reader, "grpc.subchannel.disconnections") >= 1,
                   message="a disconnection")
        (gone,) = points(reader, "grpc.subchannel.disconnections")
        assert gone.attributes["grpc.disconnect_error"] == "unknown"
        wait_until(lambda: total(reader, "grpc.subchannel.open_connections") == 2,
                   message="two open connections")
        wait_until(lambda: total(reader, "grpc.subchannel.connection_attempts_failed") >= 1,
                   message="a failed reconnection")


def test_a_removed_endpoint_is_a_subchannel_shutdown() -> None:
    world = World(3)
    world.ready()
    counts = world.bal.connections.snapshot()
    assert counts.succeeded == {"": 3} and counts.open == {"": 3}
    world.factory.handles[ADDRS[1]].on_state(Connectivity.TRANSIENT_FAILURE)
    world.bal.update_endpoints([Endpoint(ADDRS[0]),
                                Endpoint(ADDRS[2], attributes={"zone": "b"})])
    world.bal.update_endpoints([Endpoint(ADDRS[0])])
    counts = world.bal.connections.snapshot()
    # ADDRS[2] connected with no locality; it stays counted there when it gets one
    assert counts.open == {"": 1}
    assert counts.disconnections == {("", "unknown"): 1, ("", "subchannel shutdown"): 1}
    assert counts.failed == {"": 1} and counts.succeeded == {"": 3}


def test_outlier_detection_ejections_enforced_and_unenforced(
        fleet_factory: FleetFactory, reader: InMemoryMetricReader) -> None:
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(4)
    fleet[0].set_error_rate(1.0)
    fleet[1].set_error_rate(1.0)

    def config(enforcement: int) -> str:
        return json.dumps({"loadBalancingConfig": [{"outlier_detection": {
            "interval": "300s", "maxEjectionPercent": 25,
            "failurePercentageEjection": {"threshold": 50, "minimumHosts": 3,
                                          "requestVolume": 5,
                                          "enforcementPercentage": enforcement},
            "childPolicy": [{"round_robin": {}}]}}]})

    with lbclient.insecure_channel(fleet.target, service_config=config(100)) as ch:
        lbotel.enable(ch, meter_provider=provider)
        wait_ready(ch, 4)
        stub = echo_pb2_grpc.EchoStub(ch)
        for i in range(40):
            try:
                stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5)
            except grpc.RpcError:
                pass
        ch._balancer.sweep()          # the interval timer, run now
        (enforced,) = points(reader, "grpc.lb.outlier_detection.ejections_enforced")
        assert dict(enforced.attributes) == {
            "grpc.target": fleet.target, "grpc.lb.backend_service": "",
            "grpc.lb.outlier_detection.detection_method": "failure_percentage"}
        assert enforced.value == 1      # maxEjectionPercent 25 of 4: one of the two
        (over,) = points(reader, "grpc.lb.outlier_detection.ejections_unenforced")
        assert over.attributes["grpc.lb.outlier_detection.unenforced_reason"] == \
            "max_ejection_overflow"
        assert over.value == 1

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with lbclient.insecure_channel(fleet.target, service_config=config(0)) as ch:
        lbotel.enable(ch, meter_provider=provider)
        wait_ready(ch, 4)
        stub = echo_pb2_grpc.EchoStub(ch)
        for i in range(40):
            try:
                stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5)
            except grpc.RpcError:
                pass
        ch._balancer.sweep()
        reasons = {p.attributes["grpc.lb.outlier_detection.unenforced_reason"]: p.value
                   for p in points(reader, "grpc.lb.outlier_detection.ejections_unenforced")}
        assert reasons == {"enforcement_percentage": 2}     # both outliers: no draw won
        assert points(reader, "grpc.lb.outlier_detection.ejections_enforced") == []


def test_disable_stops_recording(fleet_factory: FleetFactory,
                                 reader: InMemoryMetricReader) -> None:
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(1)
    with lbclient.insecure_channel(fleet.target) as ch:
        lbotel.enable(ch, meter_provider=provider)
        wait_ready(ch, 1)
        stub = echo_pb2_grpc.EchoStub(ch)
        stub.Unary(echo_pb2.EchoRequest(message="a"), timeout=5)
        lbotel.disable(ch, meter_provider=provider)
        stub.Unary(echo_pb2.EchoRequest(message="b"), timeout=5)
        assert total(reader, "grpc.client.attempt.started") == 1
        assert ch._ctx.observer is None


def test_grpc_metrics_can_be_left_off(fleet_factory: FleetFactory,
                                      reader: InMemoryMetricReader) -> None:
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(1)
    with lbclient.insecure_channel(fleet.target) as ch:
        lbotel.enable(ch, meter_provider=provider, grpc_metrics=False)
        wait_ready(ch, 1)
        echo_pb2_grpc.EchoStub(ch).Unary(echo_pb2.EchoRequest(message="a"), timeout=5)
        assert total(reader, "grpc.client.attempt.started") == 0
        assert total(reader, "lbclient.calls") == 1


def test_aio_calls_are_recorded(fleet_factory: FleetFactory,
                                reader: InMemoryMetricReader) -> None:
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(2)
    fleet[0].set_error_rate(1.0)

    async def main() -> None:
        async with lbclient.aio.insecure_channel(
                fleet.target, service_config=retry_config(**RETRY)) as ch:
            lbotel.enable(ch, meter_provider=provider)
            stub = echo_pb2_grpc.EchoStub(ch)
            for i in range(10):
                await stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5)
            replies = [r async for r in stub.ServerStream(
                echo_pb2.EchoRequest(message="s", count=2), timeout=5)]
            assert len(replies) == 2
            slow = stub.Unary(echo_pb2.EchoRequest(message="slow"), timeout=5)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            for _ in range(200):
                if total(reader, "grpc.client.call.duration") >= 12:
                    break
                await asyncio.sleep(0.01)

    asyncio.run(main())
    assert total(reader, "grpc.client.call.duration",
                 **{"grpc.method": UNARY, "grpc.status": "OK"}) == 10
    assert total(reader, "grpc.client.call.duration",
                 **{"grpc.method": STREAM, "grpc.status": "OK"}) == 1
    assert total(reader, "grpc.client.call.duration",
                 **{"grpc.method": UNARY, "grpc.status": "CANCELLED"}) == 1
    retries = sum(p.sum for p in points(reader, "grpc.client.call.retries"))
    assert 1 <= retries <= fleet[0].calls      # every failed attempt there is retried
    assert total(reader, "grpc.client.attempt.started") >= 11 + retries


# ------------------------------------------------ A96 transparent retries and retry delay
def test_transparent_retries_count_picks_of_an_endpoint_removed_before_the_start(
        fleet_factory: FleetFactory, reader: InMemoryMetricReader,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A call whose picked endpoint is removed (by a resolver update) between the pick
    and the start of its attempt picks again: one transparent retry, no extra attempt.
    A test policy makes that moment deterministic: its picker applies the update from
    inside pick(), after choosing the endpoint."""
    from lbclient import ResolverState
    from lbclient.balancer import policy as registry
    from lbclient.balancer.picker import PickInfo, PickResult
    from lbclient.balancer.policy import Policy, PolicySpec

    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(2)
    first, second = fleet.addresses
    hooks: list[Any] = []          # run once, by the next pick of `first`

    class FirstPicker:
        def __init__(self, candidates: Any) -> None:
            self._candidates = sorted(candidates, key=lambda c: c.address != first)

        def pick(self, info: PickInfo) -> PickResult:
            chosen = self._candidates[0]
            if chosen.address == first and hooks:
                hooks.pop()()
            return chosen.result

    class FirstPolicy(Policy):
        def build_picker(self, candidates: Any) -> Any:
            return FirstPicker(candidates)

    registry.registered_policies()          # the built-ins first; then ours, for this test
    monkeypatch.setitem(registry._registry, "test_first_listed",
                        PolicySpec("test_first_listed", lambda raw, path: raw, FirstPolicy))
    config = {"loadBalancingConfig": [{"test_first_listed": {}}]}
    with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
        lbotel.enable(ch, meter_provider=provider)
        wait_ready(ch, 2)
        stub = echo_pb2_grpc.EchoStub(ch)
        assert stub.Unary(echo_pb2.EchoRequest(message="a"), timeout=5).address == first
        assert points(reader, "grpc.client.call.transparent_retries") == []   # 0: none
        hooks.append(lambda: ch.on_resolved(ResolverState((Endpoint(second),))))
        reply = stub.Unary(echo_pb2.EchoRequest(message="b"), timeout=5)
        assert not hooks and reply.address == second
        (transparent,) = points(reader, "grpc.client.call.transparent_retries")
        assert dict(transparent.attributes) == {"grpc.method": UNARY,
                                                "grpc.target": fleet.target}
        assert transparent.count == 1 and transparent.sum == 1
        assert total(reader, "grpc.client.attempt.started") == 2      # one per call
        assert total(reader, "grpc.client.call.duration", **{"grpc.status": "OK"}) == 2
        assert points(reader, "grpc.client.call.retries") == []
        assert metrics(reader)["grpc.client.call.transparent_retries"].unit == \
            "{transparent_retry}"


def _retried_with_pushback(reader: InMemoryMetricReader, fleet_factory: FleetFactory
                           ) -> tuple[Any, int, str]:
    """Four calls over a server failing UNAVAILABLE with a 300 ms pushback and a good
    backend (round robin: every other call retried there after exactly 300 ms):
    the retry_delay point, how many calls were retried, the target."""
    from retry_servers import ScriptedServer

    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(1)
    with ScriptedServer(code=grpc.StatusCode.UNAVAILABLE, pushback="300") as scripted:
        target = f"ipv4:{scripted.address},{fleet[0].address}"
        with lbclient.insecure_channel(target, service_config=retry_config(**RETRY)) as ch:
            lbotel.enable(ch, meter_provider=provider)
            wait_ready(ch, 2)
            stub = echo_pb2_grpc.EchoStub(ch)
            for i in range(4):
                assert stub.Unary(echo_pb2.EchoRequest(message=str(i)),
                                  timeout=5).address == fleet[0].address
            retried = scripted.calls
            (delay,) = points(reader, "grpc.client.call.retry_delay")
            (retries,) = points(reader, "grpc.client.call.retries")
            assert retries.count == retried and retries.sum == retried
            return delay, retried, target


def test_retry_delay_is_recorded_once_per_retried_call(reader: InMemoryMetricReader,
                                                       fleet_factory: FleetFactory) -> None:
    delay, retried, target = _retried_with_pushback(reader, fleet_factory)
    assert retried >= 1
    assert dict(delay.attributes) == {"grpc.method": UNARY, "grpc.target": target}
    assert delay.count == retried                 # calls that were not retried: none
    assert metrics(reader)["grpc.client.call.retry_delay"].unit == "s"


def test_retry_delay_is_the_time_between_attempts(reader: InMemoryMetricReader,
                                                  fleet_factory: FleetFactory) -> None:
    """A server's pushback (grpc-retry-pushback-ms) fixes the delay before the retry
    (every other call path: tests/test_metrics_a96.py)."""
    delay, retried, _ = _retried_with_pushback(reader, fleet_factory)
    assert 0.3 <= delay.min and delay.max < 0.3 + 1.0, (delay.min, delay.max)


def test_backend_service_label_when_given(fleet_factory: FleetFactory,
                                          reader: InMemoryMetricReader) -> None:
    """``enable(..., backend_service=...)`` fills grpc.lb.backend_service on the metrics
    whose gRFCs define it (A94 subchannel, A91 outlier detection), not on A66's."""
    provider = MeterProvider(metric_readers=[reader])
    fleet = fleet_factory(4)
    fleet[0].set_error_rate(1.0)
    config = {"loadBalancingConfig": [{"outlier_detection": {
        "interval": "300s", "maxEjectionPercent": 25,
        "failurePercentageEjection": {"threshold": 50, "minimumHosts": 3,
                                      "requestVolume": 5},
        "childPolicy": [{"round_robin": {}}]}}]}
    with lbclient.insecure_channel(fleet.target, service_config=config) as ch:
        lbotel.enable(ch, meter_provider=provider, backend_service="orders-backend")
        wait_ready(ch, 4)
        stub = echo_pb2_grpc.EchoStub(ch)
        for i in range(24):
            try:
                stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5)
            except grpc.RpcError:
                pass
        ch._balancer.sweep()
        labelled = {"grpc.target": fleet.target, "grpc.lb.backend_service": "orders-backend"}
        (opened,) = points(reader, "grpc.subchannel.open_connections")
        assert dict(opened.attributes) == {**labelled, "grpc.lb.locality": "",
                                           "grpc.security_level": "none"}
        (ok,) = points(reader, "grpc.subchannel.connection_attempts_succeeded")
        assert dict(ok.attributes) == {**labelled, "grpc.lb.locality": ""}
        (enforced,) = points(reader, "grpc.lb.outlier_detection.ejections_enforced")
        assert dict(enforced.attributes) == {
            **labelled, "grpc.lb.outlier_detection.detection_method": "failure_percentage"}
        for name in ("grpc.client.attempt.started", "grpc.client.attempt.duration",
                     "grpc.client.call.duration"):
            assert all("grpc.lb.backend_service" not in p.attributes
                       for p in points(reader, name)), name
