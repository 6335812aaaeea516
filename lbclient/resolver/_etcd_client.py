"""A minimal etcd v3 client over grpcio: one connection to one member at a time.

Only what the etcd resolver and :mod:`lbclient.etcd` need: prefix Range, Put,
DeleteRange, Watch, the lease calls and Authenticate. Messages come from the private proto
module ``lbclient._proto.etcd.etcd_v3_pb2`` (a field-for-field subset of etcd's own
protos) and, for ``Auth/Authenticate``, two messages built below; the RPC paths are
etcd's (``etcdserverpb`` package), so any etcd >= 3.4 server works.

TLS and auth come from an :class:`~._etcd_security.EtcdSecurity`. With a username, the
connection authenticates before its first call and sends the token as the ``token``
metadata of every KV/Watch/Lease call (as Go's clientv3 does); a unary call whose token is
refused (expired, revoked, etcd restarted: ``UNAUTHENTICATED`` "invalid auth token", or
"revision of auth store is old") authenticates again and is retried once. Streams carry
the token they started with; their owner calls :meth:`EtcdConnection.token_refused` on a
refusal and starts a new stream.

Contract: :class:`EtcdConnection` methods raise ``grpc.RpcError`` on transport failures
and :class:`EtcdAccessError` (a complete sentence naming the member, never a secret) when
etcd refuses the credentials or the permission; unary calls take a timeout; streams are
returned as grpc calls (iterate them; ``cancel()`` them). ``close()`` cancels every RPC
still running on the connection. Thread-safe as grpcio is. :func:`explain` turns any
failure into the sentence the resolver and ``register`` report.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from .._proto.etcd import etcd_v3_pb2 as pb
from ..errors import InvalidTargetError
from ._etcd_security import PLAINTEXT, EtcdAuth, EtcdSecurity
from .address import split_host_port

log = logging.getLogger("lbclient.resolver.etcd")

DEFAULT_PORT = 2379
RANGE = "/etcdserverpb.KV/Range"
PUT = "/etcdserverpb.KV/Put"
DELETE_RANGE = "/etcdserverpb.KV/DeleteRange"
WATCH = "/etcdserverpb.Watch/Watch"
LEASE_GRANT = "/etcdserverpb.Lease/LeaseGrant"
LEASE_REVOKE = "/etcdserverpb.Lease/LeaseRevoke"
LEASE_KEEPALIVE = "/etcdserverpb.Lease/LeaseKeepAlive"
AUTHENTICATE = "/etcdserverpb.Auth/Authenticate"
TOKEN_KEY = "token"           # etcd's rpctypes.TokenFieldNameGRPC

# clientv3's WithRequireLeader: a member cut off from the raft leader ends the stream
# (UNAVAILABLE "no leader") instead of silently serving nothing.
REQUIRE_LEADER = (("hasleader", "true"),)

pb2 = pb  # re-exported for the resolver and lbclient.etcd


def _auth_messages() -> tuple[Any, Any]:
    """etcdserverpb.AuthenticateRequest {string name = 1; string password = 2} and
    AuthenticateResponse {ResponseHeader header = 1; string token = 2} (the header is
    not read), in a private descriptor pool so they never clash with another copy."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="lbclient/internal/etcd_auth.proto", package="lbclient.internal.etcdauth",
        syntax="proto3")
    string = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    request = fdp.message_type.add(name="AuthenticateRequest")
    request.field.add(name="name", number=1, type=string, label=optional)
    request.field.add(name="password", number=2, type=string, label=optional)
    response = fdp.message_type.add(name="AuthenticateResponse")
    response.field.add(name="token", number=2, type=string, label=optional)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(
        f"lbclient.internal.etcdauth.{name}"))
        for name in ("AuthenticateRequest", "AuthenticateResponse"))  # type: ignore[return-value]


AuthenticateRequest, AuthenticateResponse = _auth_messages()


class EtcdAccessError(Exception):
    """etcd refused the credentials or the permission; the message is a whole sentence
    that names the member and the user (never the password or a token)."""


def parse_members(text: str | Sequence[str], where: str) -> list[str]:
    """``"h1:2379,h2"`` (or a list) -> ``["h1:2379", "h2:2379"]`` (port 2379 by default)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    members: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise InvalidTargetError(f"{where}: empty etcd member address")
        host, port = split_host_port(item, where, DEFAULT_PORT)
        member = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if member not in members:
            members.append(member)
    if not members:
        raise InvalidTargetError(f"{where}: no etcd member address")
    return members


def prefix_range_end(prefix: bytes) -> bytes:
    """etcd's ``WithPrefix`` range end: the prefix with its last byte below 0xff
    incremented (``b"a/"`` -> ``b"a0"``); ``b"\\0"`` (every key) if there is none."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def channel_options(keepalive_time: float, keepalive_timeout: float) -> list[tuple[str, Any]]:
    # Pings detect a member that vanished without closing its sockets; etcd's default
    # enforcement (--grpc-keepalive-min-time=5s, no pings without streams) allows these.
    return [
        ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.use_local_subchannel_pool", 1),
    ]


# etcd's refusals (api/v3rpc/rpctypes) that mean "this token is no longer good": fetch a
# new one (Go clientv3's shouldRefreshToken). Any UNAUTHENTICATED status counts too.
_TOKEN_REFUSED = ("invalid auth token", "revision of auth store is old",
                  "user name is empty")
_AUTH_FAILED = "authentication failed"
_AUTH_DISABLED = "authentication is not enabled"
_PERMISSION_DENIED = "permission denied"


class EtcdConnection:
    """One grpc channel to one etcd member (TLS and auth from ``security``/``auth``:
    ``auth`` is the token holder shared by the successive connections of one owner)."""

    def __init__(self, member: str, credentials: grpc.ChannelCredentials | None = None, *,
                 keepalive_time: float = 10.0, keepalive_timeout: float = 5.0,
                 security: EtcdSecurity | None = None, auth: EtcdAuth | None = None) -> None:
        self.member = member
        if security is None:
            security = PLAINTEXT if credentials is None else EtcdSecurity(
                credentials=credentials)
        self.security = security
        self.auth = auth
        options = channel_options(keepalive_time, keepalive_timeout)
        options += security.channel_options()
        try:
            creds = security.channel_credentials()     # reads the PEM files now
        except OSError as exc:
            raise EtcdAccessError(f"etcd member {member}: cannot read a TLS file: "
                                  f"{exc}") from None
        if creds is None:
            self.channel = grpc.insecure_channel(member, options=options)
        else:
            self.channel = grpc.secure_channel(member, creds, options=options)
        ch = self.channel
        self._range = ch.unary_unary(RANGE, pb.RangeRequest.SerializeToString,
                                     pb.RangeResponse.FromString)
        self._put = ch.unary_unary(PUT, pb.PutRequest.SerializeToString,
                                   pb.PutResponse.FromString)
        self._delete = ch.unary_unary(DELETE_RANGE, pb.DeleteRangeRequest.SerializeToString,
                                      pb.DeleteRangeResponse.FromString)
        self._watch = ch.stream_stream(WATCH, pb.WatchRequest.SerializeToString,
                                       pb.WatchResponse.FromString)
        self._grant = ch.unary_unary(LEASE_GRANT, pb.LeaseGrantRequest.SerializeToString,
                                     pb.LeaseGrantResponse.FromString)
        self._revoke = ch.unary_unary(LEASE_REVOKE, pb.LeaseRevokeRequest.SerializeToString,
                                      pb.LeaseRevokeResponse.FromString)
        self._keepalive = ch.stream_stream(LEASE_KEEPALIVE,
                                           pb.LeaseKeepAliveRequest.SerializeToString,
                                           pb.LeaseKeepAliveResponse.FromString)
        self._authenticate = ch.unary_unary(AUTHENTICATE,
                                            AuthenticateRequest.SerializeToString,
                                            AuthenticateResponse.FromString)

    # ----------------------------------------------------------------- KV and leases
    def range_prefix(self, prefix: bytes, timeout: float) -> Any:
        """Every key under ``prefix`` (linearizable read, sorted by key)."""
        request = pb.RangeRequest(key=prefix, range_end=prefix_range_end(prefix))
        return self._unary(self._range, request, timeout, f"read {prefix.decode()!r}*",
                           REQUIRE_LEADER)

    def put(self, key: bytes, value: bytes, timeout: float, lease: int = 0) -> Any:
        return self._unary(self._put, pb.PutRequest(key=key, value=value, lease=lease),
                           timeout, f"write {key.decode()!r}")

    def delete(self, key: bytes, timeout: float, prefix: bool = False) -> Any:
        end = prefix_range_end(key) if prefix else b""
        return self._unary(self._delete, pb.DeleteRangeRequest(key=key, range_end=end),
                           timeout, f"delete {key.decode()!r}")

    def watch(self, requests: Iterator[Any], token: str | None = None) -> Any:
        """The Watch stream (a grpc call: iterate for WatchResponses, ``cancel()``);
        ``token`` from :meth:`token` (etcd checks it when each watch is created)."""
        return self._watch(requests, metadata=self._metadata(token, REQUIRE_LEADER))

    def lease_grant(self, ttl: int, timeout: float) -> Any:
        return self._unary(self._grant, pb.LeaseGrantRequest(TTL=ttl), timeout,
                           "grant a lease")

    def lease_revoke(self, lease_id: int, timeout: float) -> Any:
        return self._unary(self._revoke, pb.LeaseRevokeRequest(ID=lease_id), timeout,
                           f"revoke lease {lease_id:x}")

    def lease_keepalive(self, requests: Iterator[Any], token: str | None = None) -> Any:
        return self._keepalive(requests, metadata=self._metadata(token, REQUIRE_LEADER))

    def close(self) -> None:
        self.channel.close()

    # ----------------------------------------------------------------- auth
    def token(self, timeout: float) -> str | None:
        """The token to send: None without auth, ``""`` if the server has authentication
        disabled; authenticates first when no token is held (:class:`EtcdAccessError`
        for a wrong user name or password, ``grpc.RpcError`` if the member fails)."""
        auth = self.auth
        if auth is None:
            return None
        token = auth.token()
        if token is not None:
            return token
        request = AuthenticateRequest(name=auth.username, password=auth.password.reveal())
        try:
            response = self._authenticate(request, timeout=timeout)
        except grpc.RpcError as exc:
            text = _details(exc)
            if _AUTH_DISABLED in text:
                log.info("etcd %s: authentication is not enabled; connecting without "
                         "logging in as %r", self.member, auth.username)
                auth.store("")
                return ""
            if _AUTH_FAILED in text:
                raise EtcdAccessError(
                    f"etcd authentication failed for user {auth.username!r} on "
                    f"{self.member}: wrong user name or password") from None
            raise
        log.info("etcd %s: authenticated as %r", self.member, auth.username)
        auth.store(response.token)
        return str(response.token)

    def token_refused(self, failure: BaseException | str, token: str | None) -> bool:
        """True if ``failure`` (an error, or a watch's cancel reason) says etcd refused
        ``token``; it is then forgotten, so the next :meth:`token` authenticates again."""
        if self.auth is None or token is None:
            return False
        text = failure if isinstance(failure, str) else _details(failure)
        unauthenticated = isinstance(failure, grpc.Call) \
            and failure.code() is grpc.StatusCode.UNAUTHENTICATED
        if not (unauthenticated or any(p in text for p in _TOKEN_REFUSED)):
            return False
        log.info("etcd %s: the auth token of user %r was refused (%s); authenticating "
                 "again", self.member, self.auth.username, _etcd_reason(text))
        self.auth.invalidate(token)
        return True

    def refusal(self, failure: BaseException | str, action: str) -> EtcdAccessError | None:
        """The sentence for a permission or authentication refusal, else None."""
        text = failure if isinstance(failure, str) else _details(failure)
        user = self.auth.username if self.auth else None
        if _PERMISSION_DENIED in text:
            who = f"etcd user {user!r}" if user else "an anonymous etcd client"
            return EtcdAccessError(f"{who} may not {action} on {self.member} "
                                   "(etcdserver: permission denied)")
        if "user name is empty" in text and user is None:
            return EtcdAccessError(f"etcd {self.member} requires authentication "
                                   "(etcdserver: user name is empty): give username and "
                                   "password")
        return None

    def _metadata(self, token: str | None,
                  extra: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, str], ...]:
        return (*extra, (TOKEN_KEY, token)) if token else extra

    def _unary(self, fn: Callable[..., Any], request: Any, timeout: float, action: str,
               extra: tuple[tuple[str, str], ...] = ()) -> Any:
        for attempt in (1, 2):
            token = self.token(timeout)
            try:
                return fn(request, timeout=timeout, metadata=self._metadata(token, extra))
            except grpc.RpcError as exc:
                if attempt == 1 and self.token_refused(exc, token):
                    continue                      # once, with a fresh token
                refusal = self.refusal(exc, action)
                if refusal is not None:
                    raise refusal from None
                raise
        raise AssertionError("unreachable")


def _details(exc: BaseException) -> str:
    if isinstance(exc, grpc.Call):
        return str(exc.details() or "")
    return str(exc)


def _etcd_reason(text: str) -> str:
    """``"rpc error: code = X desc = etcdserver: why"`` -> ``"etcdserver: why"``."""
    return text.rsplit("desc = ", 1)[-1]


def describe(exc: BaseException) -> str:
    """A short text for an etcd failure (status code and details for grpc errors)."""
    if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__


def explain(exc: BaseException, member: str, security: EtcdSecurity = PLAINTEXT) -> str:
    """The sentence reported for a failure talking to ``member``: etcd's refusals as
    they are, TLS failures in plain words (what failed and what to check), else
    ``etcd member <m>: <CODE>: <details>``."""
    if isinstance(exc, EtcdAccessError):
        return str(exc)
    details = _details(exc)
    if isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.UNAVAILABLE:
        tls = _tls_problem(details, member, security)
        if tls is not None:
            return tls
        if not security.tls and details.startswith("failed to connect") \
                and details.endswith("Socket closed"):
            return (f"etcd member {member}: UNAVAILABLE: {details} (if it serves TLS, "
                    "give ca_file, ca_pem or tls=True)")
    return f"etcd member {member}: {describe(exc)}"


# grpc's words for TLS failures that are configuration problems (not an outage).
_TLS_REFUSALS = ("CERTIFICATE_VERIFY_FAILED", "Hostname Verification",
                 "not in peer certificate", "security handshaker", "TSI_DATA_CORRUPTED",
                 "BAD_CERTIFICATE", "CERTIFICATE_REQUIRED")


def is_refusal(exc: BaseException) -> bool:
    """etcd refused the credentials (password, permission, certificate): retrying the
    same member soon will not help, unlike a member that is down."""
    if isinstance(exc, EtcdAccessError):
        return True
    return isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.UNAVAILABLE \
        and any(word in _details(exc) for word in _TLS_REFUSALS)


_GRPC_PREFIX = re.compile(r"^failed to connect to all addresses; last error: "
                          r"[A-Z_]+: (?:ipv4|ipv6|unix)?:?\S+: ")


def _tls_problem(details: str, member: str, security: EtcdSecurity) -> str | None:
    tail = _GRPC_PREFIX.sub("", details)
    head = f"TLS handshake with etcd {member} failed"
    verify = re.search(r"CERTIFICATE_VERIFY_FAILED(?:: ([^:]+))?", details)
    if verify:
        why = f": {verify.group(1).strip()}" if verify.group(1) else ""
        if security.ca is not None:
            ca = f"the CA in {security.ca.option} ({security.ca!r})"
        elif security.tls and not security.custom_credentials:
            ca = "a CA of the system's trust store (give ca_file or ca_pem)"
        else:
            ca = "the CA of the given credentials"
        return f"{head}: certificate verify failed{why}; etcd's certificate is not " \
               f"signed by {ca}"
    if "Hostname Verification" in details or "not in peer certificate" in details:
        name = security.server_name or split_host_port(member, "member", DEFAULT_PORT)[0]
        return (f"{head}: its certificate is not valid for the name {name!r} (set "
                "server_name to a name the certificate lists)")
    if "security handshaker" in details:
        return (f"TLS setup for etcd {member} failed: the client certificate and key "
                f"cannot be used together ({tail})")
    if "TSI_DATA_CORRUPTED" in details or "BAD_CERTIFICATE" in details \
            or "CERTIFICATE_REQUIRED" in details:
        if not security.client_cert and not security.custom_credentials:
            return (f"{head}: the server closed the connection after the handshake: it "
                    "requires a client certificate (etcd --client-cert-auth); give "
                    f"cert_file and key_file ({tail})")
        return (f"{head}: the server rejected the client certificate (is it signed by a "
                f"CA of etcd's --trusted-ca-file?) ({tail})")
    if security.tls and ("andshake" in details or "SSL" in details):
        hint = " (does this member serve TLS?)" if "reset" in details \
            or "WRONG_VERSION" in details else ""
        return f"{head}: {tail}{hint}"
    return None
