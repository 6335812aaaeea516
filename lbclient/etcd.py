"""Publish a server in etcd for ``etcd://`` clients (Go naming convention compatible).

    registration = lbclient.etcd.register("10.0.0.5:2379,10.0.0.6:2379", "services/orders",
                                          "10.0.0.7:50051", metadata={"weight": 2})
    ...
    registration.close()        # on shutdown: the key is deleted at once

:func:`register` stores ``<prefix>/<address>`` = ``{"Op":0,"Addr":address,"Metadata":...}``
under a lease of ``ttl`` seconds and keeps the lease alive from a background thread
(a keepalive every ``ttl / 3`` seconds). If the process dies, the keepalives stop and etcd
deletes the key when the lease expires, so clients stop using the server within ``ttl``.
If an etcd member fails, the thread moves to the next member with backoff; if the lease
expired meanwhile (etcd unreachable for longer than ``ttl``) it is granted again and the
key written again.

:func:`add_endpoint` / :func:`remove_endpoint` write or delete one endpoint without a
lease (like Go's ``endpoints.Manager.AddEndpoint`` / ``DeleteEndpoint``).

TLS, mTLS and etcd authentication: the three functions take the keyword arguments of
:class:`EtcdSecurityOptions` (``ca_file``, ``cert_file``, ``key_file``, ``username``,
``password``...: the same names as the ``etcd://`` resolver's ``resolver_options``), and
use etcdctl's ``ETCDCTL_*`` variables when none is given (``env=False`` to ignore them).
A bad value raises :class:`EtcdOptionError` (a ``ValueError``) naming it; a wrong password
or certificate fails registration with :class:`EtcdError` saying so. With a username, the
token is kept for the registration's life and replaced when etcd refuses it (expired,
revoked); lease keepalives carry it. The password, tokens and keys are never logged.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypedDict, Unpack

import grpc

from .errors import LbclientError
from .resolver._backoff import Backoff
from .resolver._etcd_client import (
    EtcdAccessError,
    EtcdConnection,
    explain,
    is_refusal,
    parse_members,
    pb2,
)
from .resolver._etcd_naming import encode_update, endpoint_key
from .resolver._etcd_security import KEYS as _SECURITY_KEYS
from .resolver._etcd_security import EtcdOptionError, EtcdSecurity, parse_security
from .resolver.address import split_host_port

log = logging.getLogger("lbclient.etcd")

__all__ = ["EtcdError", "EtcdOptionError", "EtcdSecurityOptions", "Registration",
           "add_endpoint", "register", "remove_endpoint"]


class EtcdSecurityOptions(TypedDict, total=False):
    """TLS / mTLS / auth keyword arguments (see docs/discovery.md, "etcd over TLS")."""

    tls: bool                                #: TLS with the system's roots, without a CA
    ca_file: str | os.PathLike[str]          #: CA bundle etcd's certificate chains to
    ca_pem: str | bytes
    cert_file: str | os.PathLike[str]        #: client certificate (mTLS)
    cert_pem: str | bytes
    key_file: str | os.PathLike[str]         #: its unencrypted private key
    key_pem: str | bytes
    server_name: str                         #: name etcd's certificate is checked against
    username: str                            #: etcd v3 authentication
    password: str
    env: bool                                #: False: ignore ETCDCTL_* variables


class EtcdError(LbclientError):
    """etcd could not be reached (every member failed) or refused the request."""


class Registration:
    """A live registration; ``close()`` (idempotent) stops the keepalives and revokes the
    lease, which deletes the key. Usable as a context manager."""

    def __init__(self, members: list[str], prefix: str, address: str, metadata: Any,
                 ttl: int, security: EtcdSecurity, timeout: float,
                 backoff: Backoff) -> None:
        self.members = members
        self.prefix = prefix
        self.address = address
        self.key = endpoint_key(prefix, address)
        self.ttl = ttl
        self._value = encode_update(address, metadata)
        self.security = security
        self._auth = security.new_auth()       # the token, kept across sessions
        self._timeout = timeout
        self._backoff = backoff
        self._lease_id = 0
        self._stop = threading.Event()
        self._registered = threading.Event()
        self._settled = threading.Event()      # registered, or refused by every member
        self._refused: set[str] = set()        # members that refused the credentials
        self._lock = threading.Lock()
        self._conn: EtcdConnection | None = None
        self._member_index = 0
        self.last_error: str | None = None
        self.grants = 0                  # leases granted (1 unless a lease expired)
        self.keepalives = 0              # keepalive answers received
        self.member: str | None = None   # the member keeping the lease alive now
        self._thread = threading.Thread(target=self._run, name=f"lbclient-etcd-{self.key}",
                                        daemon=True)

    @property
    def lease_id(self) -> int:
        return self._lease_id

    @property
    def authentications(self) -> int:
        """Tokens obtained from etcd so far (0 without a username)."""
        return self._auth.authentications if self._auth else 0

    def __repr__(self) -> str:
        return (f"Registration(key={self.key!r}, members={self.members!r}, ttl={self.ttl}, "
                f"security={self.security!r})")

    def _connect(self, member: str) -> EtcdConnection:
        return EtcdConnection(member, security=self.security, auth=self._auth)

    def _start(self, wait: float) -> None:
        self._thread.start()
        self._settled.wait(wait)
        if not self._registered.is_set():
            error = self.last_error or "no answer"
            self.close(revoke=False)
            when = "every member refused" if self._refused.issuperset(self.members) \
                else f"within {wait:g}s"
            raise EtcdError(f"could not register {self.key} in etcd "
                            f"({', '.join(self.members)}) {when}: {error}")

    # ----------------------------------------------------------------- the thread
    def _run(self) -> None:
        while not self._stop.is_set():
            member = self.members[self._member_index % len(self.members)]
            try:
                self._session(member)
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any failure
                if self._stop.is_set():
                    return
                if not isinstance(exc, grpc.RpcError | _LeaseLost | EtcdError
                                  | EtcdAccessError):
                    log.exception("%s: unexpected failure", self.key)
                self.last_error = explain(exc, member, self.security)
                if is_refusal(exc):
                    self._refused.add(member)
                    if self._refused.issuperset(self.members):
                        self._settled.set()     # register() fails now, saying why
                if isinstance(exc, _LeaseLost):
                    log.warning("%s: %s; registering again", self.key, exc)
                    continue            # grant a new lease at once, same member
                delay = self._backoff.next()
                self._member_index += 1
                log.warning("%s: %s; trying the next member in %.2fs", self.key,
                            self.last_error, delay)
                self._stop.wait(delay)

    def _session(self, member: str) -> None:
        conn = self._connect(member)
        with self._lock:
            if self._stop.is_set():
                conn.close()
                return
            self._conn = conn
        done = threading.Event()
        try:
            if not self._lease_id:
                grant = conn.lease_grant(self.ttl, timeout=self._timeout)
                if grant.error:
                    raise EtcdError(f"lease grant refused: {grant.error}")
                conn.put(self.key.encode(), self._value, timeout=self._timeout,
                         lease=grant.ID)
                self._lease_id = grant.ID
                self.grants += 1
                log.info("registered %s (lease %x, ttl %ds) on %s", self.key, grant.ID,
                         grant.TTL, member)
            lease_id = self._lease_id
            token = conn.token(self._timeout)
            call = conn.lease_keepalive(self._keepalives(lease_id, done), token)
            try:
                for resp in call:
                    if resp.TTL <= 0:
                        self._lease_id = 0
                        raise _LeaseLost(f"lease {lease_id:x} expired")
                    self._backoff.reset()
                    self.keepalives += 1
                    self.member = member
                    self._refused.clear()
                    self._registered.set()
                    self._settled.set()
            except grpc.RpcError as exc:
                # A refused token is forgotten: the next session (after the backoff)
                # authenticates again.
                conn.token_refused(exc, token)
                raise
            if not self._stop.is_set():
                raise EtcdError("the keepalive stream ended")
        finally:
            done.set()
            self.member = None
            with self._lock:
                self._conn = None
            conn.close()

    def _keepalives(self, lease_id: int, done: threading.Event) -> Iterator[Any]:
        interval = max(self.ttl / 3.0, 0.2)
        while True:
            yield pb2.LeaseKeepAliveRequest(ID=lease_id)
            if done.wait(interval):
                return

    # ----------------------------------------------------------------- shutdown
    def close(self, revoke: bool = True) -> None:
        """Stop keeping the lease alive; with ``revoke`` (default) delete the key now
        (tries each member once), else it disappears when the lease expires."""
        if self._stop.is_set():
            return
        self._stop.set()
        with self._lock:
            conn = self._conn
        if conn is not None:
            conn.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self._timeout)
        lease_id, self._lease_id = self._lease_id, 0
        if not (revoke and lease_id):
            return
        for member in self.members:
            try:
                c = self._connect(member)
            except EtcdAccessError as exc:
                log.warning("%s: revoking lease %x: %s", self.key, lease_id, exc)
                continue
            try:
                c.lease_revoke(lease_id, timeout=self._timeout)
                log.info("deregistered %s", self.key)
                return
            except (grpc.RpcError, EtcdAccessError) as exc:
                log.warning("%s: revoking lease %x failed: %s", self.key, lease_id,
                            explain(exc, member, self.security))
            finally:
                c.close()

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _LeaseLost(Exception):
    pass


def register(endpoints: str | Sequence[str], prefix: str, address: str, *,
             metadata: Any = None, ttl: int = 10,
             credentials: grpc.ChannelCredentials | None = None, timeout: float = 5.0,
             backoff_initial: float = 0.5, backoff_max: float = 10.0,
             rng: random.Random | None = None,
             **security: Unpack[EtcdSecurityOptions]) -> Registration:
    """Register ``address`` under ``prefix`` and keep it registered until ``close()``.

    ``endpoints``: etcd members, ``"host:2379,host:2379"`` or a list. ``metadata``: any
    JSON value; a ``{"weight": n}`` object sets the endpoint's weight for lbclient
    clients. ``ttl``: lease seconds (>= 2; etcd may raise it to its minimum). TLS and
    auth: the :class:`EtcdSecurityOptions` keywords (or ``credentials``). Returns once
    the key is written and the first keepalive answered; raises :class:`EtcdError` if
    that does not happen within ``timeout`` + the backoff over every member, or as soon
    as every member has refused the credentials (wrong password, certificate, permission).
    """
    members = parse_members(endpoints, "etcd endpoints")
    _check_prefix(prefix)
    split_host_port(address, "address")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 2:
        raise ValueError(f"ttl must be an integer >= 2 seconds, got {ttl!r}")
    reg = Registration(members, prefix, address, metadata, ttl,
                       _security("register", credentials, security), timeout,
                       Backoff(backoff_initial, backoff_max, rng=rng))
    reg._start(wait=timeout * len(members) + backoff_max)
    return reg


def add_endpoint(endpoints: str | Sequence[str], prefix: str, address: str, *,
                 metadata: Any = None, lease: int = 0,
                 credentials: grpc.ChannelCredentials | None = None,
                 timeout: float = 5.0, **security: Unpack[EtcdSecurityOptions]) -> None:
    """Write ``<prefix>/<address>`` (no keepalive; ``lease`` optional). Tries each member
    until one accepts; :class:`EtcdError` if none does."""
    _check_prefix(prefix)
    split_host_port(address, "address")
    key = endpoint_key(prefix, address).encode()
    _on_any_member(endpoints, _security("add_endpoint", credentials, security),
                   lambda c: c.put(key, encode_update(address, metadata), timeout=timeout,
                                   lease=lease))


def remove_endpoint(endpoints: str | Sequence[str], prefix: str, address: str, *,
                    credentials: grpc.ChannelCredentials | None = None,
                    timeout: float = 5.0, **security: Unpack[EtcdSecurityOptions]) -> None:
    """Delete ``<prefix>/<address>``."""
    _check_prefix(prefix)
    key = endpoint_key(prefix, address).encode()
    _on_any_member(endpoints, _security("remove_endpoint", credentials, security),
                   lambda c: c.delete(key, timeout=timeout))


def _security(function: str, credentials: grpc.ChannelCredentials | None,
              options: EtcdSecurityOptions) -> EtcdSecurity:
    unknown = sorted(set(options) - _SECURITY_KEYS - {"credentials"})
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}")
    return parse_security({**options, "credentials": credentials})


def _on_any_member(endpoints: str | Sequence[str], security: EtcdSecurity,
                   fn: Callable[[EtcdConnection], Any]) -> None:
    errors = []
    auth = security.new_auth()
    for member in parse_members(endpoints, "etcd endpoints"):
        try:
            conn = EtcdConnection(member, security=security, auth=auth)
        except EtcdAccessError as exc:
            errors.append(str(exc))
            continue
        try:
            fn(conn)
            return
        except (grpc.RpcError, EtcdAccessError) as exc:
            errors.append(explain(exc, member, security))
        finally:
            conn.close()
    raise EtcdError("every etcd member failed: " + "; ".join(errors))


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
