"""Prometheus metrics for a channel (``pip install lbclient[prometheus]``).

    python examples/prometheus_metrics.py

``lbclient.metrics.prometheus.enable(channel, registry)`` exports per-endpoint picks,
in-flight calls, call outcomes by status code, a latency histogram, endpoint events
(ejections, health changes) and resolver updates. Here the registry is served on a free
local port with prometheus_client's own HTTP server and scraped once, the way Prometheus
would. Without any code: ``LBCLIENT_METRICS=prometheus LBCLIENT_PROMETHEUS_PORT=9464``.
"""

from __future__ import annotations

import time
import urllib.request

import grpc
from prometheus_client import CollectorRegistry, start_http_server

import lbclient
import lbclient.metrics.prometheus
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc


def main() -> int:
    registry = CollectorRegistry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        with Fleet(3) as fleet:
            fleet[2].set_error_rate(0.5)         # some UNAVAILABLE outcomes to count
            with lbclient.insecure_channel(fleet.target) as channel:
                lbclient.metrics.prometheus.enable(channel, registry)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and not all(
                        e.connectivity == "READY" for e in channel.endpoints()):
                    time.sleep(0.01)
                stub = echo_pb2_grpc.EchoStub(channel)
                for i in range(60):
                    try:
                        stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5)
                    except grpc.RpcError:
                        pass
                with urllib.request.urlopen(url, timeout=10) as response:
                    text = response.read().decode()
        lines = [ln for ln in text.splitlines()
                 if ln.startswith(("lbclient_calls_total", "lbclient_picks_total"))]
        print(f"scraped {url}:")
        print("\n".join(lines))
        return 0 if len(lines) >= 4 else 1
    finally:
        server.shutdown()
        thread.join(5)


if __name__ == "__main__":
    raise SystemExit(main())
