"""etcd with authentication enabled (a real etcd; root, and users whose roles grant
readwrite on one prefix, created through etcdctl; tokens live 1 s when unused): the
resolver and register() log in and send the token; a refused token (revoked, expired,
etcd restarted) is replaced; a wrong password or a missing permission is a clear error
that keeps the last good endpoints; secrets never reach logs, reprs or errors."""

from __future__ import annotations

import itertools
import logging
import pathlib
import secrets
import time
from collections.abc import Iterator

import grpc
import pytest
from _discovery import Recorder
from _etcd import EtcdCluster
from helpers import code_of, wait_ready, wait_until

import lbclient
import lbclient.etcd
from lbclient.etcd import EtcdSecurityOptions
from lbclient.resolver import parse_target
from lbclient.resolver.etcd import EtcdResolver
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

REQ = echo_pb2.EchoRequest(message="x")
FAST = {"backoff_initial": 0.05, "backoff_max": 0.3, "dial_timeout": 2.0}
ROOT_PW = "root-" + secrets.token_hex(8)
ALICE_PW = "alice-" + secrets.token_hex(8)
BOB_PW = "bob-" + secrets.token_hex(8)
WRONG_PW = "wrong-" + secrets.token_hex(8)
ALICE: EtcdSecurityOptions = {"username": "alice", "password": ALICE_PW}
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    workdir = tmp_path_factory.mktemp("etcd-auth") / "cluster"
    with EtcdCluster(workdir, 1, args=["--auth-token-ttl", "1"]) as cluster:
        cluster.add_user("alice", ALICE_PW, "services/")
        cluster.add_user("bob", BOB_PW, "other/")
        cluster.enable_auth(ROOT_PW)
        yield cluster


@pytest.fixture
def prefix() -> str:
    return f"services/a{next(_prefixes)}"


def _addresses(ch: lbclient.LoadBalancedChannel) -> set[str]:
    return {e.address for e in ch.endpoints()}


def _keys(etcd: EtcdCluster, prefix: str) -> list[str]:
    conn = etcd.connection()                 # root
    try:
        return [kv.key.decode() for kv in
                conn.range_prefix(f"{prefix}/".encode(), timeout=5).kvs]
    finally:
        conn.close()


def _call_failure(ch: lbclient.LoadBalancedChannel, words: str) -> str:
    """Wait until calls fail UNAVAILABLE with ``words`` in their details; return them."""
    stub = echo_pb2_grpc.EchoStub(ch)
    seen: list[str] = []

    def fails() -> bool:
        with pytest.raises(grpc.RpcError) as info:
            stub.Unary(REQ, timeout=5)
        assert code_of(info.value) is grpc.StatusCode.UNAVAILABLE
        seen.append(str(info.value.details()))
        return words in seen[-1]
    wait_until(fails, 10, message=f"calls failing with {words!r}")
    return seen[-1]


def test_resolve_watch_and_register_with_auth(etcd: EtcdCluster, prefix: str,
                                              fleet: Fleet) -> None:
    """Everything works logged in as alice; after her tokens are revoked (a password
    change revokes them) the watch keeps delivering and close() logs in again to revoke
    the lease, so the key goes at once rather than when the lease expires."""
    a, b, c = fleet.addresses
    reg = lbclient.etcd.register(etcd.endpoints, prefix, a, ttl=5, **ALICE)
    try:
        with lbclient.insecure_channel(etcd.target(prefix),
                                       resolver_options={**FAST, **ALICE}) as ch:
            wait_ready(ch, 1)
            lbclient.etcd.add_endpoint(etcd.endpoints, prefix, b, **ALICE)
            wait_until(lambda: _addresses(ch) == {a, b}, 2, interval=0.005,
                       message="the watch to deliver b")
            resolver = ch._resolver                                   # noqa: SLF001
            assert resolver.authentications == 1 and reg.authentications == 1
            etcd.set_password("alice", ALICE_PW)      # same password: tokens revoked
            lbclient.etcd.add_endpoint(etcd.endpoints, prefix, c, **ALICE)
            wait_until(lambda: _addresses(ch) == {a, b, c}, 2, interval=0.005,
                       message="the established watch to keep delivering")
            answers = reg.keepalives
            wait_until(lambda: reg.keepalives > answers, 5, message="keepalives go on")
            reg.close()
            t0 = time.monotonic()
            wait_until(lambda: _addresses(ch) == {b, c}, 5, interval=0.005,
                       message="the registration's key to be deleted")
            assert time.monotonic() - t0 < 2.0          # a revoke, not a 5 s expiry
            assert reg.authentications == 2               # logged in again to revoke
            assert resolver.sessions == 1
            stub = echo_pb2_grpc.EchoStub(ch)
            wait_ready(ch, 2)
            assert {stub.Unary(REQ, timeout=5).address for _ in range(20)} == {b, c}
    finally:
        reg.close()
    assert _keys(etcd, prefix) == sorted([f"{prefix}/{b}", f"{prefix}/{c}"])


def test_refused_token_wrong_password_and_recovery(etcd: EtcdCluster, prefix: str,
                                                   fleet: Fleet,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """etcd restarts twice, alice's tokens revoked each time. First: the resolver's stale
    token is refused when it watches again, it logs in again and the watch resumes in
    the same session, with no auth error reported. Then alice's password has changed:
    logging in fails, which is reported as such and retried with the channel's endpoints
    kept; with the password back, the resolver logs in and catches up."""
    a, b, c = fleet.addresses
    lbclient.etcd.add_endpoint(etcd.endpoints, prefix, a, **ALICE)
    caplog.set_level(logging.DEBUG)
    with lbclient.insecure_channel(etcd.target(prefix),
                                   resolver_options={**FAST, **ALICE}) as ch:
        wait_ready(ch, 1)
        rec = Recorder()                       # what the channel's listeners are told
        ch.add_resolver_listener(lambda state, error: rec.on_resolved(state)
                                 if state is not None else rec.on_resolver_error(
                                     error or Exception("?")))
        resolver = ch._resolver                                       # noqa: SLF001
        wait_until(lambda: resolver.sessions == 1, 5, message="the watch")
        tokens = [resolver._auth.token()]                             # noqa: SLF001

        # etcd replays its log on restart, which brings simple tokens back: revoke them.
        etcd.set_password("alice", ALICE_PW)
        etcd.kill(0)
        etcd.restart(0)
        wait_until(lambda: resolver.sessions == 2, 10, message="the watch again")
        assert (resolver.authentications, resolver._auth.rejections) == (2, 1)  # noqa: SLF001
        assert not any("auth" in str(e) for e in rec.errors), rec.errors
        tokens.append(resolver._auth.token())                         # noqa: SLF001
        lbclient.etcd.add_endpoint(etcd.endpoints, prefix, b, **ALICE)
        wait_until(lambda: _addresses(ch) == {a, b}, 5, message="b, after the restart")

        etcd.set_password("alice", WRONG_PW)
        etcd.kill(0)
        etcd.restart(0)
        wanted = "etcd authentication failed for user 'alice' on"
        rec.wait_for(lambda r: sum(wanted in str(e) for e in r.errors) >= 2,
                     what="the login failure, reported and retried")
        errors = [e for e in rec.errors if wanted in str(e)]
        assert str(errors[0]) == (f"{wanted} {etcd.endpoints}: wrong user name or password")
        assert isinstance(errors[0], lbclient.ResolverError)
        assert _addresses(ch) == {a, b}                           # the last good list
        stub = echo_pb2_grpc.EchoStub(ch)
        wait_ready(ch, 2)
        assert {stub.Unary(REQ, timeout=5).address for _ in range(10)} == {a, b}
        lbclient.etcd.add_endpoint(etcd.endpoints, prefix, c, username="root",
                                   password=ROOT_PW)
        etcd.set_password("alice", ALICE_PW)
        wait_until(lambda: _addresses(ch) == {a, b, c}, 10,
                   message="the resolver to log in again and catch up")
        assert resolver.authentications == 3
        assert resolver.sessions == 3
    assert "the auth token of user 'alice' was refused (etcdserver: invalid auth token)" \
        in caplog.text
    for secret in (ALICE_PW, WRONG_PW, ROOT_PW, *(t or "no token?" for t in tokens)):
        assert secret not in caplog.text
        assert not any(secret in str(e) for e in rec.errors)


def test_first_resolution_with_a_wrong_password_fails_calls(etcd: EtcdCluster,
                                                            prefix: str) -> None:
    options = {**FAST, "username": "alice", "password": WRONG_PW}
    with lbclient.insecure_channel(etcd.target(prefix), resolver_options=options) as ch:
        details = _call_failure(ch, "authentication failed")
        assert details == (f"no endpoints: etcd authentication failed for user 'alice' on "
                           f"{etcd.endpoints}: wrong user name or password")
        assert WRONG_PW not in repr(ch._resolver) and WRONG_PW not in str(  # noqa: SLF001
            ch._resolver.options)                                            # noqa: SLF001


def test_register_with_a_wrong_password_fails_at_once(etcd: EtcdCluster,
                                                      prefix: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(lbclient.etcd.EtcdError) as info:
        lbclient.etcd.register(etcd.endpoints, prefix, "127.0.0.1:1", timeout=5,
                               backoff_max=5, username="alice", password=WRONG_PW)
    assert time.monotonic() - t0 < 4.0
    assert "every member refused: etcd authentication failed for user 'alice'" in str(
        info.value)
    assert WRONG_PW not in str(info.value)
    with pytest.raises(lbclient.etcd.EtcdError, match="authentication failed"):
        lbclient.etcd.add_endpoint(etcd.endpoints, prefix, "127.0.0.1:1",
                                   username="alice", password=WRONG_PW)


def test_permission_and_missing_credentials(etcd: EtcdCluster, prefix: str) -> None:
    rec = Recorder()
    resolver = EtcdResolver(parse_target(etcd.target(prefix)), rec,
                            {**FAST, "username": "bob", "password": BOB_PW})
    resolver.start()
    try:
        rec.wait_for(lambda r: len(r.errors) >= 2, what="two refused attempts")
    finally:
        resolver.close()
    assert str(rec.errors[0]) == (f"etcd user 'bob' may not read '{prefix}/'* on "
                                  f"{etcd.endpoints} (etcdserver: permission denied)")
    with lbclient.insecure_channel(etcd.target(prefix), resolver_options=FAST) as ch:
        details = _call_failure(ch, "requires authentication")
        assert details == (f"no endpoints: etcd {etcd.endpoints} requires authentication "
                           "(etcdserver: user name is empty): give username and password")
    with pytest.raises(lbclient.etcd.EtcdError, match="'bob' may not write"):
        lbclient.etcd.add_endpoint(etcd.endpoints, prefix, "127.0.0.1:1", username="bob",
                                   password=BOB_PW)


def test_environment_credentials(etcd: EtcdCluster, prefix: str, fleet: Fleet,
                                 monkeypatch: pytest.MonkeyPatch,
                                 caplog: pytest.LogCaptureFixture) -> None:
    a = fleet.addresses[0]
    monkeypatch.setenv("ETCDCTL_USER", "alice")
    monkeypatch.setenv("ETCDCTL_PASSWORD", ALICE_PW)
    lbclient.etcd.add_endpoint(etcd.endpoints, prefix, a)
    monkeypatch.delenv("ETCDCTL_PASSWORD")
    monkeypatch.setenv("ETCDCTL_USER", f"alice:{ALICE_PW}")
    caplog.set_level(logging.INFO)
    with lbclient.insecure_channel(etcd.target(prefix), resolver_options=FAST) as ch:
        wait_until(lambda: _addresses(ch) == {a}, 5, message="resolution as alice (env)")
    assert "using ETCDCTL_USER from the environment" in caplog.text
    assert ALICE_PW not in caplog.text


def test_token_kept_across_calls_and_replaced_when_expired(etcd: EtcdCluster,
                                                           tmp_path: pathlib.Path) -> None:
    """One connection, one login for many calls; when etcd refuses the token the next
    call logs in again by itself and succeeds (no error reaches the caller)."""
    from lbclient.resolver._etcd_client import EtcdConnection
    from lbclient.resolver._etcd_security import parse_security

    security = parse_security(ALICE)
    auth = security.new_auth()
    conn = EtcdConnection(etcd.endpoints, security=security, auth=auth)
    try:
        for _ in range(5):
            conn.range_prefix(b"services/", timeout=5)
        assert auth is not None and auth.authentications == 1
        etcd.set_password("alice", ALICE_PW)          # revokes the token
        conn.range_prefix(b"services/", timeout=5)
        assert (auth.authentications, auth.rejections) == (2, 1)
    finally:
        conn.close()
