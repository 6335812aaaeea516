"""gRPC's OpenTelemetry metrics, named as the gRFCs name them, from an lbclient channel
(``pip install lbclient[opentelemetry] opentelemetry-sdk``).

    python examples/opentelemetry_metrics.py

``lbclient.metrics.opentelemetry.enable(channel, meter_provider=...)`` records
lbclient's own instruments (``lbclient.*``) and gRPC's (``grpc.client.attempt.*``,
``grpc.client.call.*``, ``grpc.subchannel.*``, ``grpc.lb.outlier_detection.*``,
``grpc.lb.wrr.*``), so dashboards made for gRPC's OpenTelemetry plugin work unchanged.
Here three local backends serve, one of them failing every call: the retry policy
moves those calls to another backend, outlier detection ejects the failing one, and the
SDK's in-memory reader shows every metric name with its unit and what it counted.
"""

from __future__ import annotations

import json
import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import lbclient
import lbclient.metrics.opentelemetry
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

CONFIG = {
    "loadBalancingConfig": [{"outlier_detection": {
        "interval": "0.2s", "baseEjectionTime": "30s",
        "failurePercentageEjection": {"threshold": 50, "minimumHosts": 3,
                                      "requestVolume": 10},
        "childPolicy": [{"round_robin": {}}]}}],
    "methodConfig": [{"name": [{"service": "lbclient.testing.echo.v1.Echo"}],
                      "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s",
                                      "maxBackoff": "0.1s", "backoffMultiplier": 2,
                                      "retryableStatusCodes": ["UNAVAILABLE"]}}],
}


def summary(point: object) -> str:
    if hasattr(point, "value"):
        return f"value {point.value}"
    return f"count {point.count}"          # type: ignore[attr-defined]


def main() -> int:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with Fleet(3) as fleet:
        fleet[0].set_error_rate(1.0)
        with lbclient.insecure_channel(fleet.target, service_config=json.dumps(CONFIG)) as ch:
            lbclient.metrics.opentelemetry.enable(ch, meter_provider=provider)
            stub = echo_pb2_grpc.EchoStub(ch)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                    e.ejected_until is not None for e in ch.endpoints()):
                stub.Unary(echo_pb2.EchoRequest(message="hello"), timeout=5)
            data = reader.get_metrics_data()
    names: dict[str, str] = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    labels = ", ".join(f"{k}={v}" for k, v in sorted(p.attributes.items())
                                       if k not in ("grpc.target", "lbclient.target"))
                    print(f"{metric.name} [{metric.unit}] {{{labels}}}: {summary(p)}")
                names[metric.name] = metric.unit or ""
    wanted = {"grpc.client.attempt.started", "grpc.client.attempt.duration",
              "grpc.client.call.duration", "grpc.client.call.retries",
              "grpc.subchannel.connection_attempts_succeeded",
              "grpc.subchannel.open_connections",
              "grpc.lb.outlier_detection.ejections_enforced"}
    missing = wanted - names.keys()
    print(f"\n{len(names)} metric names; missing: {sorted(missing) or 'none'}")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
