"""``lbclient probe TARGET``: resolve a target and check every endpoint, for deploy scripts.

For each resolved endpoint (probed in parallel, each step bounded by ``--timeout``):
connect (time to READY), run ``grpc.health.v1.Health/Check`` for the health service
name, and optionally ``--calls`` calls of ``--method`` with an empty request (empty bytes
is a valid protobuf message of any type). Prints one row per endpoint; exit status 0 if
at least one endpoint is healthy, 1 if none is, 2 if the target or config is invalid or
the target does not resolve.

Health (gRFC A17's reading): SERVING is healthy; UNIMPLEMENTED (no health service) is
counted healthy and shown as such; NOT_SERVING, an unknown service name and any other
error are unhealthy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .._subchannel import grpc_target
from ..config import parse_service_config
from ..endpoint import Endpoint
from ..errors import InvalidTargetError, ResolverError, ServiceConfigError
from ..resolver.base import ResolverState, create_resolver, parse_target, validate_target
from ._table import format_table, ms, percentile

_STATUS = {v: k for k, v in health_pb2.HealthCheckResponse.ServingStatus.items()}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("probe", help="resolve a target and health-check every endpoint",
                       description="Resolve TARGET, connect to every endpoint, run "
                                   "grpc.health.v1 Check and optionally a few calls.")
    p.add_argument("target", help='e.g. "dns:///orders.svc:50051" or "ipv4:10.0.0.1:50051"')
    p.add_argument("--service-config", metavar="JSON|@FILE",
                   help="service config (its healthCheckConfig.serviceName is the default "
                        "health service)")
    p.add_argument("--health-service", metavar="NAME", default=None,
                   help='health service name (default: from the service config, else "")')
    p.add_argument("--method", metavar="/pkg.Svc/Method",
                   help="also call this unary method with an empty request")
    p.add_argument("--calls", type=int, default=3, help="calls of --method (default 3)")
    p.add_argument("--timeout", type=float, default=3.0,
                   help="seconds for resolving, connecting and each RPC (default 3)")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per endpoint instead of the table")
    p.set_defaults(run=run)


@dataclass
class ProbeResult:
    address: str
    weight: int
    connect_time: float | None = None
    health: str = "-"
    healthy: bool = False
    latencies: list[float] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)
    error: str = ""


class _FirstResult:
    """A resolver listener that keeps the first snapshot or error."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.state: ResolverState | None = None
        self.error: Exception | None = None

    def on_resolved(self, state: ResolverState) -> None:
        if not self.done.is_set():
            if state.endpoints:
                self.state = state
            else:
                self.error = ResolverError("the resolver returned no endpoints")
            self.done.set()

    def on_resolver_error(self, error: Exception) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


def resolve(target: str, timeout: float) -> list[Endpoint]:
    """The target's endpoints from its resolver's first result (bounded by ``timeout``)."""
    parsed = parse_target(target)
    validate_target(parsed)
    listener = _FirstResult()
    resolver = create_resolver(parsed, listener, {})
    try:
        resolver.start()
        listener.done.wait(timeout)
    finally:
        resolver.close()
    if listener.state is not None:
        return list(listener.state.endpoints)
    if listener.error is not None:
        raise ResolverError(str(listener.error))
    raise ResolverError(f"no result from the resolver within {timeout:g}s")


def probe_endpoint(endpoint: Endpoint, health_service: str, method: str | None, calls: int,
                   timeout: float, credentials: grpc.ChannelCredentials | None = None,
                   ) -> ProbeResult:
    """Probe one endpoint on a fresh connection.

    ``connect_time`` is the time to the first health answer on a new connection (TCP,
    HTTP/2 setup and one round trip; grpc's connectivity poller is too coarse to time the
    handshake alone); the latency columns come from a second Check, or from the
    ``method`` calls when one is given."""
    result = ProbeResult(endpoint.address, endpoint.weight)
    target = grpc_target(endpoint.address)
    channel = (grpc.secure_channel(target, credentials) if credentials is not None
               else grpc.insecure_channel(target))
    try:
        t0 = time.perf_counter()
        reached = _check_health(channel, health_service, timeout, result, wait=True)
        if not reached:
            return result
        result.connect_time = time.perf_counter() - t0
        if method:
            _call(channel, method, calls, timeout, result)
        else:
            t1 = time.perf_counter()
            if _check_health(channel, health_service, timeout, ProbeResult("", 0)):
                result.latencies.append(time.perf_counter() - t1)
        return result
    finally:
        channel.close()


def _check_health(channel: grpc.Channel, service: str, timeout: float,
                  result: ProbeResult, wait: bool = False) -> bool:
    """One Health/Check into ``result``; False if the endpoint was not reached."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout,
                           wait_for_ready=wait)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code is grpc.StatusCode.UNIMPLEMENTED:
            result.health, result.healthy = "UNIMPLEMENTED (assumed healthy)", True
        elif code is grpc.StatusCode.NOT_FOUND:
            result.health = "SERVICE_UNKNOWN"
        elif code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
            result.health = "UNREACHABLE"
            result.error = f"no answer within {timeout:g}s ({code.name})"
            return False
        else:
            result.health = code.name if code is not None else "ERROR"
            result.error = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        return True
    result.health = _STATUS.get(reply.status, str(reply.status))
    result.healthy = reply.status == health_pb2.HealthCheckResponse.SERVING
    return True


def _call(channel: grpc.Channel, method: str, calls: int, timeout: float,
          result: ProbeResult) -> None:
    # No serializers: the request and response are raw bytes, and b"" is a valid empty
    # protobuf message, so any unary method can be called without its stubs.
    mc = channel.unary_unary(method)
    for _ in range(max(calls, 0)):
        t0 = time.perf_counter()
        try:
            mc(b"", timeout=timeout)
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
        result.latencies.append(time.perf_counter() - t0)
        result.codes[code] = result.codes.get(code, 0) + 1


def render(results: Sequence[ProbeResult], with_calls: bool) -> str:
    headers = ["address", "weight", "health", "connect", "p50", "max"]
    if with_calls:
        headers.append("calls")
    rows = []
    for r in results:
        lat = sorted(r.latencies)
        row = [r.address, str(r.weight), r.health, ms(r.connect_time),
               ms(percentile(lat, 0.5)), ms(lat[-1] if lat else None)]
        if with_calls:
            row.append(" ".join(f"{k}:{v}" for k, v in sorted(r.codes.items())) or "-")
        rows.append(row)
    return format_table(headers, rows, right=(1, 3, 4, 5))


def run(args: argparse.Namespace) -> int:
    health_service = args.health_service
    if args.service_config:
        raw = args.service_config
        try:
            if raw.startswith("@"):
                with open(raw[1:], encoding="utf-8") as f:
                    raw = f.read()
            config = parse_service_config(raw)
        except OSError as exc:
            print(f"error: cannot read {raw[1:]}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        except ServiceConfigError as exc:
            print(f"error: service config: {exc}", file=sys.stderr)
            return 2
        if health_service is None and config.health_check is not None:
            health_service = config.health_check.service_name
        print(f"policy: {config.lb.name}")
    try:
        endpoints = resolve(args.target, args.timeout)
    except (InvalidTargetError, ResolverError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    creds = grpc.ssl_channel_credentials() if args.tls else None
    with ThreadPoolExecutor(max_workers=min(16, len(endpoints))) as pool:
        results = list(pool.map(
            lambda e: probe_endpoint(e, health_service or "", args.method, args.calls,
                                     args.timeout, creds), endpoints))
    healthy = sum(r.healthy for r in results)
    if args.json:
        for r in results:
            print(json.dumps(dataclasses.asdict(r), sort_keys=True))
        return 0 if healthy else 1
    print(render(results, bool(args.method)))
    print(f"{healthy}/{len(results)} endpoints healthy"
          f" (health service {health_service or '(server)'!s})")
    for r in results:
        if r.error:
            print(f"  {r.address}: {r.error}")
    return 0 if healthy else 1
