"""``lbclient probe TARGET``: resolve a target and check every endpoint, for deploy scripts.

For each resolved endpoint (probed in parallel, each step bounded by ``--timeout``): a
TCP connect, then ``grpc.health.v1.Health/Check`` for the health service name on a new
grpc connection, and optionally ``--calls`` calls of ``--method`` with an empty request
(empty bytes is a valid protobuf message of any type). Prints one row per endpoint; exit
status 0 if at least one endpoint is healthy, 1 if none is, 2 if the target or config is
invalid or the target does not resolve.

Health (gRFC A17's reading): SERVING is healthy; UNIMPLEMENTED (no health service) is
counted healthy and shown as such; NOT_SERVING, an unknown service name and any other
error are unhealthy. An endpoint that could not be asked says why: ``REFUSED`` (nothing
listens on the port), ``TIMED_OUT`` (no TCP connection, or a connection that never
becomes gRPC, within the timeout), ``TLS_FAILED`` (the handshake or the certificate
check failed; grpc's reason is shown), ``UNREACHABLE`` (anything else, e.g. no route).
The first Check is made with ``wait_for_ready=False`` so that a failed connection ends it
at once with grpc's own account of the failure instead of waiting for the deadline.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .._core.transport import grpc_target, logical_authority
from ..config import parse_service_config
from ..endpoint import Endpoint
from ..errors import InvalidTargetError, ResolverError, ServiceConfigError
from ..resolver import ResolverState, create_resolver, parse_target, validate_target
from ..resolver.address import split_host_port
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
    p.add_argument("--ca-file", metavar="PEM",
                   help="connect with TLS, trusting the CA certificates in this file "
                        "(implies --tls)")
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
                   authority: str | None = None) -> ProbeResult:
    """Probe one endpoint: a TCP connect, then Health/Check on a fresh grpc connection.

    ``connect_time`` is the time to the first health answer on the new connection (TCP,
    HTTP/2 setup and one round trip; grpc's connectivity poller is too coarse to time the
    handshake alone); the latency columns come from a second Check, or from the
    ``method`` calls when one is given. ``authority`` is the name the connection
    presents (and checks the TLS certificate against), as the channel would use it."""
    result = ProbeResult(endpoint.address, endpoint.weight)
    if not _tcp_connect(endpoint.address, timeout, result):
        return result
    target = grpc_target(endpoint.address)
    options = [("grpc.default_authority", authority)] if authority else []
    channel = (grpc.secure_channel(target, credentials, options=options)
               if credentials is not None else grpc.insecure_channel(target, options=options))
    try:
        t0 = time.perf_counter()
        reached = _check_health(channel, health_service, timeout, result, first=True,
                                tls=credentials is not None)
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


def _tcp_connect(address: str, timeout: float, result: ProbeResult) -> bool:
    """Can a TCP connection be opened at all? Fills ``result`` and returns False if not
    (addresses that are not ``host:port`` are left to grpc)."""
    try:
        host, port = split_host_port(address, "endpoint")
    except ValueError:
        return True
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except ConnectionRefusedError:
        result.health, result.error = "REFUSED", "connection refused (nothing listens there)"
    except TimeoutError:
        result.health = "TIMED_OUT"
        result.error = f"no TCP connection within {timeout:g}s"
    except OSError as exc:
        result.health = "UNREACHABLE"
        result.error = f"cannot connect: {exc.strerror or exc}"
    return False


# grpc's account of a failed connection: "failed to connect to all addresses; last
# error: UNKNOWN: ipv4:127.0.0.1:5: Tls handshake failed (TSI_PROTOCOL_FAILURE):
# SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:
# unable to get local issuer certificate: OK"
_TLS = re.compile(r"tls|ssl|handshake|certificate|peer name", re.IGNORECASE)
_OPENSSL = re.compile(r"OPENSSL_internal:([A-Z_]+)(?::\s*([^:]+))?")
_PEER_NAME = re.compile(r"Peer name \S+ is not in peer certificate")


def connection_problem(details: str, tls: bool) -> tuple[str, str]:
    """(health, explanation) for a Check that ended UNAVAILABLE before reaching the
    server, from grpc's ``details``."""
    last = details.split("last error: ", 1)[-1]
    last = re.sub(r"^[A-Z_]+: (ipv[46]|unix|dns):\S*?: ", "", last)   # code and address
    if "Connection refused" in details:
        return "REFUSED", "connection refused (nothing listens there)"
    if _TLS.search(details):
        peer = _PEER_NAME.search(details)
        ssl = _OPENSSL.search(details)
        if peer:
            why = peer.group(0)
        elif ssl:
            why = ssl.group(1) + (f" ({ssl.group(2).strip()})" if ssl.group(2) else "")
        else:
            why = last
        if "WRONG_VERSION_NUMBER" in details:   # grpc's second phrase is misleading here
            why = "WRONG_VERSION_NUMBER: the server does not speak TLS (try without --tls)"
        return "TLS_FAILED", f"TLS handshake failed: {why}"
    if not tls and "Socket closed" in details:
        return "UNREACHABLE", ("the server closed the connection before HTTP/2 was set up "
                               "(does it want TLS? try --tls)")
    return "UNREACHABLE", last


def status_of(exc: BaseException) -> tuple[grpc.StatusCode | None, str]:
    """A failed call's status code and details; ``(None, str(exc))`` for an RpcError
    that is not a ``grpc.Call`` (the grpc stubs type every RpcError as if it were one,
    hence the ``Any``)."""
    call: Any = exc
    if isinstance(call, grpc.Call):
        return call.code(), call.details() or str(exc)
    return None, str(exc)


def _is_ready(channel: grpc.Channel) -> bool:
    future = grpc.channel_ready_future(channel)
    try:
        future.result(timeout=0.05)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        future.cancel()


def _check_health(channel: grpc.Channel, service: str, timeout: float,
                  result: ProbeResult, first: bool = False, tls: bool = False) -> bool:
    """One Health/Check into ``result``; False if the endpoint was not reached. The
    ``first`` Check (on a new connection) does not wait for the connection to be ready:
    if it fails, the call ends at once with grpc's reason."""
    stub: Any = health_pb2_grpc.HealthStub(channel)   # grpcio-health-checking: untyped
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout,
                           wait_for_ready=False)
    except grpc.RpcError as exc:
        code, details = status_of(exc)
        if code is grpc.StatusCode.UNIMPLEMENTED:
            result.health, result.healthy = "UNIMPLEMENTED (assumed healthy)", True
        elif code is grpc.StatusCode.NOT_FOUND:
            result.health = "SERVICE_UNKNOWN"
            result.error = f"the health service does not know service {service!r}"
        elif first and code is grpc.StatusCode.DEADLINE_EXCEEDED:
            result.health = "TIMED_OUT"
            if _is_ready(channel):
                result.error = f"connected, but no health answer within {timeout:g}s"
            else:
                result.error = (f"TCP connected, but no {'TLS + ' if tls else ''}HTTP/2 "
                                f"handshake within {timeout:g}s (not a gRPC server?)")
            return False
        elif first and code is grpc.StatusCode.UNAVAILABLE:
            result.health, result.error = connection_problem(details, tls)
            return False
        elif code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
            result.health = "UNREACHABLE"
            result.error = f"no answer within {timeout:g}s ({code.name})"
            return False
        else:
            result.health = code.name if code is not None else "ERROR"
            result.error = details
        return True
    result.health = _STATUS.get(reply.status, str(reply.status))
    result.healthy = reply.status == health_pb2.HealthCheckResponse.SERVING
    if not result.healthy:
        result.error = f"the health service reports {result.health}"
    return True


def _call(channel: grpc.Channel, method: str, calls: int, timeout: float,
          result: ProbeResult) -> None:
    # No serializers: the request and response are raw bytes, and b"" is a valid empty
    # protobuf message, so any unary method can be called without its stubs.
    mc: Any = channel.unary_unary(method)
    for _ in range(max(calls, 0)):
        t0 = time.perf_counter()
        try:
            mc(b"", timeout=timeout)
            code = "OK"
        except grpc.RpcError as exc:
            status = status_of(exc)[0]
            code = status.name if status is not None else "UNKNOWN"
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
    creds = None
    if args.ca_file:
        try:
            with open(args.ca_file, "rb") as f:
                creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        except OSError as exc:
            print(f"error: cannot read {args.ca_file}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 2
    elif args.tls:
        creds = grpc.ssl_channel_credentials()
    authority = logical_authority(parse_target(args.target))
    with ThreadPoolExecutor(max_workers=min(16, len(endpoints))) as pool:
        results = list(pool.map(
            lambda e: probe_endpoint(e, health_service or "", args.method, args.calls,
                                     args.timeout, creds, authority), endpoints))
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
