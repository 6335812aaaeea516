"""dns: resolver against a real DNS server (dnsmasq on a 127.0.0.1 high port) and real
Echo servers on loopback addresses. Intervals are shortened through resolver_options."""

from __future__ import annotations

import collections
import json
import logging
import pathlib
import time
from collections.abc import Iterator

import grpc
import pytest
from _discovery import Recorder
from _dns import DnsServer, LoopbackEcho
from helpers import code_of, wait_until

import lbclient
from lbclient.resolver import parse_target
from lbclient.resolver.dns import DnsResolver
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")
FAST = {"refresh_interval": 0.2, "min_resolve_interval": 0.1, "timeout": 0.2}


@pytest.fixture
def dns_server(tmp_path: pathlib.Path) -> Iterator[DnsServer]:
    with DnsServer(tmp_path / "dns", {"svc.test": ["127.0.0.2", "127.0.0.3"]}) as server:
        yield server


@pytest.fixture
def echo() -> Iterator[LoopbackEcho]:
    servers = LoopbackEcho(["127.0.0.2", "127.0.0.3"])
    try:
        yield servers
    finally:
        servers.close()


def _resolver(raw: str, rec: Recorder, **options: object) -> DnsResolver:
    return DnsResolver(parse_target(raw), rec, options)


def test_a_and_aaaa_records_become_endpoints(dns_server: DnsServer) -> None:
    dns_server.set_hosts("dual.test", ["127.0.0.5", "::1"])
    rec = Recorder()
    resolver = _resolver(dns_server.target("dual.test", 4000), rec)
    resolver.start()
    try:
        rec.wait_addresses({"127.0.0.5:4000", "[::1]:4000"})
    finally:
        resolver.close()
    assert rec.addresses() == ["127.0.0.5:4000", "[::1]:4000"]   # A before AAAA
    assert rec.last is not None and rec.last.service_config is None


def test_channel_spreads_calls_over_every_address(dns_server: DnsServer,
                                                  echo: LoopbackEcho) -> None:
    with lbclient.insecure_channel(dns_server.target("svc.test", echo.port)) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        wait_until(lambda: sum(e.connectivity == "READY" for e in ch.endpoints()) == 2,
                   message="both DNS addresses READY")
        counts = collections.Counter(stub.Unary(REQ, timeout=5).address for _ in range(200))
    assert counts == {f"127.0.0.2:{echo.port}": 100, f"127.0.0.3:{echo.port}": 100}


def test_reresolution_picks_up_a_changed_record(dns_server: DnsServer,
                                                echo: LoopbackEcho) -> None:
    echo.add("127.0.0.4")
    with lbclient.insecure_channel(dns_server.target("svc.test", echo.port),
                                   resolver_options=FAST) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        wait_until(lambda: len(ch.endpoints()) == 2)
        dns_server.set_hosts("svc.test", ["127.0.0.3", "127.0.0.4"])
        want = {f"127.0.0.3:{echo.port}", f"127.0.0.4:{echo.port}"}
        wait_until(lambda: {e.address for e in ch.endpoints()} == want, 10,
                   message="the channel to follow the DNS change")
        wait_until(lambda: all(e.connectivity == "READY" for e in ch.endpoints()))
        seen = {stub.Unary(REQ, timeout=5).address for _ in range(20)}
    assert seen == want


def test_failed_lookup_keeps_the_last_endpoints(dns_server: DnsServer, echo: LoopbackEcho,
                                                caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    resolver = _resolver(dns_server.target("svc.test", echo.port), rec, **FAST)
    with lbclient.insecure_channel(dns_server.target("svc.test", echo.port),
                                   resolver_options=FAST) as ch:
        resolver.start()
        try:
            stub = echo_pb2_grpc.EchoStub(ch)
            wait_until(lambda: len(ch.endpoints()) == 2)
            rec.wait_addresses({f"127.0.0.2:{echo.port}", f"127.0.0.3:{echo.port}"})
            with caplog.at_level(logging.WARNING, logger="lbclient"):
                dns_server.stop()
                rec.wait_for(lambda r: len(r.errors) >= 2, what="two failed lookups")
                wait_until(lambda: "keeping the last 2 endpoints" in caplog.text,
                           message="the resolver to log the failure")
            assert len(rec.states) == 1                   # nothing but the first snapshot
            assert "127.0.0.1" in str(rec.errors[-1])     # names the DNS server
            assert len(ch.endpoints()) == 2
            seen = {stub.Unary(REQ, timeout=5).address for _ in range(10)}
            assert len(seen) == 2
        finally:
            resolver.close()


def test_first_lookup_failing_fails_calls_with_the_dns_error(dns_server: DnsServer,
                                                             echo: LoopbackEcho) -> None:
    with lbclient.insecure_channel(dns_server.target("missing.test", echo.port),
                                   resolver_options=FAST) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)

        def failed_with_nxdomain() -> bool:
            try:
                stub.Unary(REQ, timeout=5)
            except grpc.RpcError as exc:
                assert code_of(exc) is grpc.StatusCode.UNAVAILABLE
                return "NXDOMAIN" in exc.details() and "missing.test" in exc.details()
            return False

        wait_until(failed_with_nxdomain, 10, message="UNAVAILABLE naming NXDOMAIN")
        dns_server.set_hosts("missing.test", ["127.0.0.2"])      # the name appears
        wait_until(lambda: len(ch.endpoints()) == 1, 10)
        reply = stub.Unary(REQ, timeout=5, wait_for_ready=True)
    assert reply.address == f"127.0.0.2:{echo.port}"


def test_connection_failure_triggers_resolve_now(dns_server: DnsServer,
                                                 echo: LoopbackEcho) -> None:
    # Refresh far away: only resolve_now (from the failing connection) can pick up the move.
    opts = {"refresh_interval": 600, "min_resolve_interval": 0.2}
    dns_server.set_hosts("move.test", ["127.0.0.2"])
    with lbclient.insecure_channel(dns_server.target("move.test", echo.port),
                                   resolver_options=opts) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        assert stub.Unary(REQ, timeout=5, wait_for_ready=True).address.startswith("127.0.0.2")
        dns_server.set_hosts("move.test", ["127.0.0.3"])
        echo.stop(f"127.0.0.2:{echo.port}")
        wait_until(lambda: [e.address for e in ch.endpoints()] == [f"127.0.0.3:{echo.port}"],
                   10, message="re-resolution after the connection failed")
        assert stub.Unary(REQ, timeout=5, wait_for_ready=True).address.startswith("127.0.0.3")


def _queries(server: DnsServer, name: str) -> int:
    return server.log_file.read_text().count(f"query[A] {name} ")


def test_resolve_now_bursts_are_rate_limited(dns_server: DnsServer) -> None:
    rec = Recorder()
    resolver = _resolver(dns_server.target("svc.test", 80), rec, refresh_interval=600,
                         min_resolve_interval=0.5)
    resolver.start()
    try:
        rec.wait_for(lambda r: bool(r.states))
        queries0, lookups0 = _queries(dns_server, "svc.test"), resolver.lookups
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.6:
            resolver.resolve_now()
            time.sleep(0.005)
        elapsed = time.monotonic() - t0
        wait_until(lambda: resolver.lookups >= 3, 5, message="rate-limited re-resolutions")
    finally:
        resolver.close()
    # one initial lookup plus at most one per 0.5 s of hints (+1 for the boundary)
    assert 3 <= resolver.lookups <= 1 + int(elapsed / 0.5) + 1
    assert _queries(dns_server, "svc.test") - queries0 == resolver.lookups - lookups0


def test_txt_service_config_is_used_only_when_enabled(dns_server: DnsServer,
                                                      echo: LoopbackEcho) -> None:
    choices = [{"clientLanguage": ["go"], "serviceConfig": {"loadBalancingConfig": [
                   {"round_robin": {}}]}},
               {"clientLanguage": ["python"], "serviceConfig": {"loadBalancingConfig": [
                   {"pick_first": {}}]}}]
    dns_server.restart(txt={"_grpc_config.svc.test": "grpc_config=" + json.dumps(choices)})
    target = dns_server.target("svc.test", echo.port)
    with lbclient.insecure_channel(target, resolver_options={"service_config": True}) as ch:
        wait_until(lambda: ch.service_config is not None
                   and ch.service_config.lb.name == "pick_first", 10,
                   message="the TXT service config applied")
        stub = echo_pb2_grpc.EchoStub(ch)
        seen = {stub.Unary(REQ, timeout=5, wait_for_ready=True).address for _ in range(10)}
        assert len(seen) == 1
    assert "query[TXT] _grpc_config.svc.test" in dns_server.log_file.read_text()

    dns_server.restart(txt={"_grpc_config.svc.test": "grpc_config=" + json.dumps(choices)})
    with lbclient.insecure_channel(target) as ch:
        wait_until(lambda: len(ch.endpoints()) == 2)
        assert ch.service_config is not None and ch.service_config.lb.name == "round_robin"
    assert "query[TXT]" not in dns_server.log_file.read_text().split("started")[-1]


def test_malformed_txt_is_logged_and_ignored(dns_server: DnsServer, echo: LoopbackEcho,
                                             caplog: pytest.LogCaptureFixture) -> None:
    dns_server.restart(txt={"_grpc_config.svc.test":
                            'grpc_config=[{"percentage": 500, "serviceConfig": {}}]'})
    with caplog.at_level(logging.WARNING, logger="lbclient"):
        with lbclient.insecure_channel(dns_server.target("svc.test", echo.port),
                                       resolver_options={"service_config": True}) as ch:
            wait_until(lambda: len(ch.endpoints()) == 2)
            assert ch.service_config is not None and ch.service_config.lb.name == "round_robin"
    assert "grpc_config[0].percentage" in caplog.text


def test_no_server_uses_the_system_resolver(fleet: Fleet) -> None:
    port = fleet[0].address.rsplit(":", 1)[1]
    for target in (f"dns:///localhost:{port}", f"localhost:{port}"):
        rec = Recorder()
        resolver = DnsResolver(parse_target(target), rec, {})
        resolver.start()
        try:
            rec.wait_for(lambda r: f"127.0.0.1:{port}" in r.addresses(), what="/etc/hosts")
        finally:
            resolver.close()
    with lbclient.insecure_channel(f"localhost:{port}") as ch:
        reply = echo_pb2_grpc.EchoStub(ch).Unary(REQ, timeout=5, wait_for_ready=True)
    assert reply.address == fleet[0].address


def test_ip_literal_needs_no_lookup(fleet: Fleet) -> None:
    rec = Recorder()
    resolver = DnsResolver(parse_target(f"dns:///{fleet[0].address}"), rec, {})
    resolver.start()                    # delivers synchronously: no thread, no DNS
    assert rec.addresses() == [fleet[0].address]
    resolver.resolve_now()
    resolver.close()
    assert len(rec.states) == 1


def test_close_stops_lookups(dns_server: DnsServer) -> None:
    rec = Recorder()
    resolver = _resolver(dns_server.target("svc.test", 80), rec, **FAST)
    resolver.start()
    rec.wait_for(lambda r: bool(r.states))
    resolver.close()
    resolver.close()                    # idempotent
    n = resolver.lookups
    dns_server.set_hosts("svc.test", ["127.0.0.9"])
    time.sleep(0.6)                     # three refresh intervals
    assert resolver.lookups == n and len(rec.states) == 1


def test_bad_resolver_options_fail_channel_creation() -> None:
    with pytest.raises(lbclient.ServiceConfigError, match="resolver_options.refresh_intrval"):
        lbclient.insecure_channel("dns:///svc.test:1",
                                  resolver_options={"refresh_intrval": 1})
