"""etcd over mTLS: a real etcd started with --client-cert-auth --trusted-ca-file
--cert-file --key-file (certificates made here with ``cryptography``; the server's lists
IP 127.0.0.1 and DNS etcd.test). The resolver and register() work over it (PEMs and
files); a wrong CA, a wrong server name, no client certificate or one from another CA are
clear errors; rotated files are picked up at the next reconnection and the last good
endpoints stay meanwhile; etcdctl's environment variables work; keys are never logged."""

from __future__ import annotations

import itertools
import logging
import pathlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from _certs import KeyPair, Pki
from _discovery import Recorder
from _etcd import EtcdCluster, ServerTLS
from helpers import code_of, wait_ready, wait_until

import lbclient
import lbclient.etcd
from lbclient.etcd import EtcdSecurityOptions
from lbclient.resolver import parse_target
from lbclient.resolver.etcd import EtcdResolver
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")
FAST = {"backoff_initial": 0.05, "backoff_max": 0.3, "dial_timeout": 2.0}
_prefixes = itertools.count()


@dataclass(frozen=True)
class Certs:
    dir: pathlib.Path
    pki: Pki
    client: KeyPair
    other_ca: Pki                 # an unrelated CA ("the wrong CA")
    stranger: KeyPair             # a client certificate from that other CA

    @property
    def ca_file(self) -> pathlib.Path:
        return self.dir / "ca.pem"

    @property
    def files(self) -> EtcdSecurityOptions:
        """mTLS as files (resolver_options / register keywords)."""
        return {"ca_file": str(self.ca_file), "cert_file": str(self.dir / "client.pem"),
                "key_file": str(self.dir / "client.key")}

    @property
    def pems(self) -> EtcdSecurityOptions:
        return {"ca_pem": self.pki.ca_pem, "cert_pem": self.client.cert,
                "key_pem": self.client.key}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("etcd-tls")
    pki, other = Pki(), Pki("another CA")
    server = pki.server("etcd.test", ips=("127.0.0.1",))
    c = Certs(d, pki, pki.client("lbclient-test"), other, other.client("stranger"))
    for name, data in [("ca.pem", pki.ca_pem), ("server.pem", server.cert),
                       ("server.key", server.key), ("client.pem", c.client.cert),
                       ("client.key", c.client.key), ("other-ca.pem", other.ca_pem)]:
        (d / name).write_bytes(data)
    return c


@pytest.fixture(scope="module")
def etcd(certs: Certs) -> Iterator[EtcdCluster]:
    tls = ServerTLS(cert_file=certs.dir / "server.pem", key_file=certs.dir / "server.key",
                    trusted_ca_file=certs.ca_file, client_cert_auth=True)
    with EtcdCluster(certs.dir / "cluster", 1, tls=tls, client=dict(certs.files)) as cluster:
        yield cluster


@pytest.fixture
def prefix() -> str:
    return f"tls/t{next(_prefixes)}"


def _addresses(ch: lbclient.LoadBalancedChannel) -> set[str]:
    return {e.address for e in ch.endpoints()}


def _failure(ch: lbclient.LoadBalancedChannel) -> str:
    stub = echo_pb2_grpc.EchoStub(ch)
    with pytest.raises(grpc.RpcError) as info:
        stub.Unary(REQ, timeout=5)
    assert code_of(info.value) is grpc.StatusCode.UNAVAILABLE
    return str(info.value.details())


def _first_error(options: dict[str, object], etcd: EtcdCluster, prefix: str) -> str:
    """What a channel whose very first resolution fails says in its calls' UNAVAILABLE."""
    with lbclient.insecure_channel(etcd.target(prefix),
                                   resolver_options={**FAST, **options}) as ch:
        details: list[str] = []

        def failed_with_reason() -> bool:
            text = _failure(ch)
            details.append(text)
            return "no endpoints: " in text
        wait_until(failed_with_reason, 10, message="a resolver error in the calls")
        return details[-1]


def test_resolve_watch_and_register_over_mtls(etcd: EtcdCluster, certs: Certs,
                                              prefix: str, fleet: Fleet,
                                              caplog: pytest.LogCaptureFixture) -> None:
    a, b, c = fleet.addresses
    caplog.set_level(logging.DEBUG)
    # register over mTLS with files; the channel's resolver with PEMs.
    with lbclient.etcd.register(etcd.endpoints, prefix, a, ttl=2, **certs.files) as reg:
        assert reg.security.tls and reg.security.client_cert
        with lbclient.insecure_channel(etcd.target(prefix),
                                       resolver_options={**FAST, **certs.pems}) as ch:
            wait_ready(ch, 1)
            lbclient.etcd.add_endpoint(etcd.endpoints, prefix, b, metadata={"weight": 2},
                                       **certs.files)
            lbclient.etcd.add_endpoint(etcd.endpoints, prefix, c, **certs.pems)
            wait_until(lambda: _addresses(ch) == {a, b, c}, 2, interval=0.005,
                       message="the watch to deliver b and c")
            wait_ready(ch, 3)
            stub = echo_pb2_grpc.EchoStub(ch)
            assert {stub.Unary(REQ, timeout=5).address for _ in range(30)} == {a, b, c}
            lbclient.etcd.remove_endpoint(etcd.endpoints, prefix, c, **certs.files)
            wait_until(lambda: _addresses(ch) == {a, b}, 2, interval=0.005,
                       message="the watch to deliver the removal")
            assert {e.address: e.weight for e in ch.endpoints()} == {a: 1, b: 2}
            # The registration keeps its lease past its ttl over TLS.
            answers = reg.keepalives
            wait_until(lambda: reg.keepalives >= answers + 1, 5,
                       message="keepalives over TLS")
            assert ch._resolver.sessions == 1      # one watch, never restarted  # noqa: SLF001
            text = repr(ch._resolver)              # noqa: SLF001
        reg.close()
    conn = etcd.connection()
    try:
        assert conn.range_prefix(f"{prefix}/{a}".encode(), timeout=5).kvs == []
    finally:
        conn.close()
    # Key material is never shown: not in logs, nor in reprs.
    body = certs.client.key.decode().splitlines()[1]
    assert body not in caplog.text and body not in text and body not in repr(reg)
    assert "key=<hidden>" in text and "key=file " in repr(reg)


def test_server_name_override(etcd: EtcdCluster, certs: Certs, prefix: str,
                              fleet: Fleet) -> None:
    a = fleet.addresses[0]
    lbclient.etcd.add_endpoint(etcd.endpoints, prefix, a, **certs.files)
    good = Recorder()
    resolver = EtcdResolver(parse_target(etcd.target(prefix)), good,
                            {**FAST, **certs.files, "server_name": "etcd.test"})
    resolver.start()
    try:
        good.wait_addresses({a})
    finally:
        resolver.close()
    details = _first_error({**certs.files, "server_name": "nope.test"}, etcd, prefix)
    assert (f"TLS handshake with etcd {etcd.endpoints} failed: its certificate is not "
            "valid for the name 'nope.test' (set server_name") in details, details


def test_wrong_ca_is_a_clear_error_and_retried(etcd: EtcdCluster, certs: Certs,
                                               prefix: str) -> None:
    rec = Recorder()
    options = {**FAST, **certs.pems, "ca_pem": certs.other_ca.ca_pem}
    resolver = EtcdResolver(parse_target(etcd.target(prefix)), rec, options)
    resolver.start()
    try:
        rec.wait_for(lambda r: len(r.errors) >= 3, what="three attempts (backing off)")
    finally:
        resolver.close()
    assert rec.states == []
    message = str(rec.errors[0])
    assert isinstance(rec.errors[0], lbclient.ResolverError)
    assert message.startswith(f"TLS handshake with etcd {etcd.endpoints} failed: "
                              "certificate verify failed: unable to get local issuer "
                              "certificate; etcd's certificate is not signed by the CA in "
                              "ca_pem"), message
    details = _first_error({**certs.files, "ca_file": str(certs.dir / "other-ca.pem")},
                           etcd, prefix)
    assert f"no endpoints: TLS handshake with etcd {etcd.endpoints} failed: certificate " \
           "verify failed" in details and "other-ca.pem" in details, details


def test_missing_or_foreign_client_certificate(etcd: EtcdCluster, certs: Certs,
                                               prefix: str) -> None:
    details = _first_error({"ca_file": str(certs.ca_file)}, etcd, prefix)
    assert (f"TLS handshake with etcd {etcd.endpoints} failed: the server closed the "
            "connection after the handshake: it requires a client certificate (etcd "
            "--client-cert-auth); give cert_file and key_file") in details, details
    details = _first_error({"ca_pem": certs.pki.ca_pem, "cert_pem": certs.stranger.cert,
                            "key_pem": certs.stranger.key}, etcd, prefix)
    assert "the server rejected the client certificate" in details, details
    details = _first_error({}, etcd, prefix)            # plaintext to a TLS member
    assert "(if it serves TLS, give ca_file, ca_pem or tls=True)" in details, details


def test_register_with_a_wrong_ca_fails_at_once(etcd: EtcdCluster, certs: Certs,
                                                prefix: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(lbclient.etcd.EtcdError) as info:
        lbclient.etcd.register(etcd.endpoints, prefix, "127.0.0.1:1", timeout=5,
                               backoff_max=5, cert_file=certs.dir / "client.pem",
                               key_file=certs.dir / "client.key",
                               ca_file=str(certs.dir / "other-ca.pem"))
    assert time.monotonic() - t0 < 4.0               # refused: no waiting for 10 s
    assert "every member refused: TLS handshake with etcd" in str(info.value)
    assert "certificate verify failed" in str(info.value)


def test_etcdctl_environment_variables(etcd: EtcdCluster, certs: Certs, prefix: str,
                                       fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    a = fleet.addresses[0]
    monkeypatch.setenv("ETCDCTL_CACERT", str(certs.ca_file))
    monkeypatch.setenv("ETCDCTL_CERT", str(certs.dir / "client.pem"))
    monkeypatch.setenv("ETCDCTL_KEY", str(certs.dir / "client.key"))
    lbclient.etcd.add_endpoint(etcd.endpoints, prefix, a)       # no TLS keyword: env
    with lbclient.insecure_channel(etcd.target(prefix), resolver_options=FAST) as ch:
        wait_until(lambda: _addresses(ch) == {a}, 5, message="resolution from env TLS")
        assert ch._resolver.security.from_env == (              # noqa: SLF001
            "ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY")
    details = _first_error({"env": False}, etcd, prefix)         # env ignored: plaintext
    assert "(if it serves TLS" in details, details


def test_rotated_files_are_read_again_and_the_last_endpoints_stay(
        etcd: EtcdCluster, certs: Certs, prefix: str, fleet: Fleet,
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    """The CA file is replaced by a wrong one and etcd restarts: the reconnection fails
    verification (a clear error, retried), the channel keeps its endpoints and calls keep
    working; once the right CA is back the resolver reconnects and catches up."""
    a, b, _ = fleet.addresses
    ca = tmp_path / "ca.pem"
    shutil.copy(certs.ca_file, ca)
    lbclient.etcd.add_endpoint(etcd.endpoints, prefix, a, **certs.files)
    options = {**FAST, **certs.files, "ca_file": str(ca)}
    with lbclient.insecure_channel(etcd.target(prefix), resolver_options=options) as ch:
        wait_ready(ch, 1)
        resolver = ch._resolver                                    # noqa: SLF001
        wait_until(lambda: resolver.sessions == 1, 5, message="the watch")
        ca.write_bytes(certs.other_ca.ca_pem)                      # a bad rotation
        with caplog.at_level(logging.WARNING, logger="lbclient"):
            etcd.kill(0)
            etcd.restart(0)
            wait_until(lambda: "certificate verify failed" in caplog.text, 10,
                       message="the verification failure to be reported")
        stub = echo_pb2_grpc.EchoStub(ch)
        assert {stub.Unary(REQ, timeout=5).address for _ in range(5)} == {a}
        assert _addresses(ch) == {a}
        lbclient.etcd.add_endpoint(etcd.endpoints, prefix, b, **certs.files)
        shutil.copy(certs.ca_file, ca)                             # fixed
        wait_until(lambda: _addresses(ch) == {a, b}, 10,
                   message="the resolver to reconnect with the fixed CA file")
        assert resolver.sessions == 2


def test_credentials_for_an_etcd_without_auth_are_not_needed(
        etcd: EtcdCluster, certs: Certs, prefix: str, fleet: Fleet,
        caplog: pytest.LogCaptureFixture) -> None:
    """As Go's client: etcd saying "authentication is not enabled" is not an error."""
    a = fleet.addresses[0]
    caplog.set_level(logging.INFO, logger="lbclient")
    options: EtcdSecurityOptions = {**certs.files, "username": "alice",
                                    "password": "unused-pw"}
    lbclient.etcd.add_endpoint(etcd.endpoints, prefix, a, **options)
    rec = Recorder()
    resolver = EtcdResolver(parse_target(etcd.target(prefix)), rec, {**FAST, **options})
    resolver.start()
    try:
        rec.wait_addresses({a})
    finally:
        resolver.close()
    assert resolver.authentications == 0 and rec.errors == []
    assert "authentication is not enabled; connecting without logging in as 'alice'" \
        in caplog.text
    assert "unused-pw" not in caplog.text
