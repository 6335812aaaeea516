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
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from .errors import LbclientError
from .resolver._backoff import Backoff
from .resolver._etcd_client import EtcdConnection, describe, parse_members, pb2
from .resolver._etcd_naming import encode_update, endpoint_key
from .resolver.address import split_host_port

log = logging.getLogger("lbclient.etcd")

__all__ = ["EtcdError", "Registration", "add_endpoint", "register", "remove_endpoint"]


class EtcdError(LbclientError):
    """etcd could not be reached (every member failed) or refused the request."""


class Registration:
    """A live registration; ``close()`` (idempotent) stops the keepalives and revokes the
    lease, which deletes the key. Usable as a context manager."""

    def __init__(self, members: list[str], prefix: str, address: str, metadata: Any,
                 ttl: int, credentials: grpc.ChannelCredentials | None,
                 timeout: float, backoff: Backoff) -> None:
        self.members = members
        self.prefix = prefix
        self.address = address
        self.key = endpoint_key(prefix, address)
        self.ttl = ttl
        self._value = encode_update(address, metadata)
        self._credentials = credentials
        self._timeout = timeout
        self._backoff = backoff
        self._lease_id = 0
        self._stop = threading.Event()
        self._registered = threading.Event()
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

    def _start(self, wait: float) -> None:
        self._thread.start()
        if not self._registered.wait(wait):
            error = self.last_error or "no answer"
            self.close(revoke=False)
            raise EtcdError(f"could not register {self.key} in etcd "
                            f"({', '.join(self.members)}) within {wait:g}s: {error}")

    # ----------------------------------------------------------------- the thread
    def _run(self) -> None:
        while not self._stop.is_set():
            member = self.members[self._member_index % len(self.members)]
            try:
                self._session(member)
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any failure
                if self._stop.is_set():
                    return
                if not isinstance(exc, grpc.RpcError | _LeaseLost | EtcdError):
                    log.exception("%s: unexpected failure", self.key)
                self.last_error = f"etcd member {member}: {describe(exc)}"
                if isinstance(exc, _LeaseLost):
                    log.warning("%s: %s; registering again", self.key, exc)
                    continue            # grant a new lease at once, same member
                delay = self._backoff.next()
                self._member_index += 1
                log.warning("%s: %s; trying the next member in %.2fs", self.key,
                            self.last_error, delay)
                self._stop.wait(delay)

    def _session(self, member: str) -> None:
        conn = EtcdConnection(member, self._credentials)
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
            call = conn.lease_keepalive(self._keepalives(lease_id, done))
            for resp in call:
                if resp.TTL <= 0:
                    self._lease_id = 0
                    raise _LeaseLost(f"lease {lease_id:x} expired")
                self._backoff.reset()
                self.keepalives += 1
                self.member = member
                self._registered.set()
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
            c = EtcdConnection(member, self._credentials)
            try:
                c.lease_revoke(lease_id, timeout=self._timeout)
                log.info("deregistered %s", self.key)
                return
            except grpc.RpcError as exc:
                log.warning("%s: revoking lease %x on %s failed: %s", self.key, lease_id,
                            member, describe(exc))
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
             rng: random.Random | None = None) -> Registration:
    """Register ``address`` under ``prefix`` and keep it registered until ``close()``.

    ``endpoints``: etcd members, ``"host:2379,host:2379"`` or a list. ``metadata``: any
    JSON value; a ``{"weight": n}`` object sets the endpoint's weight for lbclient
    clients. ``ttl``: lease seconds (>= 2; etcd may raise it to its minimum). Returns once
    the key is written and the first keepalive answered; raises :class:`EtcdError` if
    that does not happen within ``timeout`` + the backoff over every member.
    """
    members = parse_members(endpoints, "etcd endpoints")
    _check_prefix(prefix)
    split_host_port(address, "address")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 2:
        raise ValueError(f"ttl must be an integer >= 2 seconds, got {ttl!r}")
    reg = Registration(members, prefix, address, metadata, ttl, credentials, timeout,
                       Backoff(backoff_initial, backoff_max, rng=rng))
    reg._start(wait=timeout * len(members) + backoff_max)
    return reg


def add_endpoint(endpoints: str | Sequence[str], prefix: str, address: str, *,
                 metadata: Any = None, lease: int = 0,
                 credentials: grpc.ChannelCredentials | None = None,
                 timeout: float = 5.0) -> None:
    """Write ``<prefix>/<address>`` (no keepalive; ``lease`` optional). Tries each member
    until one accepts; :class:`EtcdError` if none does."""
    _check_prefix(prefix)
    split_host_port(address, "address")
    key = endpoint_key(prefix, address).encode()
    _on_any_member(endpoints, credentials, lambda c: c.put(
        key, encode_update(address, metadata), timeout=timeout, lease=lease))


def remove_endpoint(endpoints: str | Sequence[str], prefix: str, address: str, *,
                    credentials: grpc.ChannelCredentials | None = None,
                    timeout: float = 5.0) -> None:
    """Delete ``<prefix>/<address>``."""
    _check_prefix(prefix)
    key = endpoint_key(prefix, address).encode()
    _on_any_member(endpoints, credentials, lambda c: c.delete(key, timeout=timeout))


def _on_any_member(endpoints: str | Sequence[str],
                   credentials: grpc.ChannelCredentials | None, fn: Any) -> None:
    errors = []
    for member in parse_members(endpoints, "etcd endpoints"):
        conn = EtcdConnection(member, credentials)
        try:
            fn(conn)
            return
        except grpc.RpcError as exc:
            errors.append(f"{member}: {describe(exc)}")
        finally:
            conn.close()
    raise EtcdError("every etcd member failed: " + "; ".join(errors))


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
