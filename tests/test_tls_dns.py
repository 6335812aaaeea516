"""TLS through a ``dns:`` target: ``orders.test`` has three A records (127.0.0.2-4, one
port), served by a real DNS server (dnsmasq); each address runs a TLS Echo + health
server whose certificate names only ``orders.test``. lbclient connects to each IP and
must verify each connection against the target's host, as a plain grpc channel to
``dns:///orders.test`` would, with health probes on the same connections."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from _certs import Pki
from _dns import DnsServer, free_port
from grpc_health.v1 import health, health_pb2_grpc
from helpers import code_of, wait_until

import lbclient
from lbclient.testing import echo_pb2, echo_pb2_grpc

IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
REQ = echo_pb2.EchoRequest(message="x")


class _Echo(echo_pb2_grpc.EchoServicer):
    def __init__(self, address: str) -> None:
        self.address = address

    def Unary(self, request: echo_pb2.EchoRequest,  # noqa: N802 - grpc method name
              context: grpc.ServicerContext) -> echo_pb2.EchoReply:
        return echo_pb2.EchoReply(message=request.message, address=self.address)


class TlsServers:
    """A TLS Echo + grpc.health.v1 server on each of ``hosts``, all on one port."""

    def __init__(self, hosts: list[str], creds: grpc.ServerCredentials) -> None:
        self.port = free_port()
        self.servers: list[grpc.Server] = []
        self.health: list[health.HealthServicer] = []
        try:
            for host in hosts:
                server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
                echo_pb2_grpc.add_EchoServicer_to_server(_Echo(f"{host}:{self.port}"), server)
                hs = health.HealthServicer()
                health_pb2_grpc.add_HealthServicer_to_server(hs, server)
                if server.add_secure_port(f"{host}:{self.port}", creds) == 0:
                    raise RuntimeError(f"cannot bind {host}:{self.port}")
                server.start()
                self.servers.append(server)
                self.health.append(hs)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for server in self.servers:
            server.stop(None).wait(5)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def servers(pki: Pki) -> Iterator[TlsServers]:
    pair = pki.server("orders.test")      # no IP SANs: only the name can verify it
    s = TlsServers(IPS, grpc.ssl_server_credentials([(pair.key, pair.cert)]))
    yield s
    s.close()


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    workdir: pathlib.Path = tmp_path_factory.mktemp("dns")
    with DnsServer(workdir, {"orders.test": IPS, "elsewhere.test": IPS}) as server:
        yield server


def test_each_ip_endpoint_verifies_the_dns_name(pki: Pki, servers: TlsServers,
                                                 dns: DnsServer) -> None:
    config = {"healthCheckConfig": {"serviceName": ""}}
    with lbclient.secure_channel(dns.target("orders.test", servers.port),
                                 grpc.ssl_channel_credentials(pki.ca_pem),
                                 service_config=config) as ch:
        stub = echo_pb2_grpc.EchoStub(ch)
        stub.Unary(REQ, timeout=5)
        wait_until(lambda: [e.health for e in ch.endpoints()] == ["healthy"] * 3, timeout=10,
                   message="three endpoints healthy through TLS health probes")
        assert sorted(e.address for e in ch.endpoints()) == [f"{ip}:{servers.port}"
                                                             for ip in IPS]
        seen = {stub.Unary(REQ, timeout=5).address for _ in range(30)}
        assert seen == {f"{ip}:{servers.port}" for ip in IPS}


def test_a_name_the_certificate_does_not_cover_fails_fast(pki: Pki, servers: TlsServers,
                                                         dns: DnsServer) -> None:
    with lbclient.secure_channel(dns.target("elsewhere.test", servers.port),
                                 grpc.ssl_channel_credentials(pki.ca_pem)) as ch:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            echo_pb2_grpc.EchoStub(ch).Unary(REQ, timeout=10)
        assert time.monotonic() - t0 < 5
        assert code_of(info.value) is grpc.StatusCode.UNAVAILABLE
        assert "Hostname Verification" in (info.value.details() or "")
