"""``etcd://host:2379[,host:2379...]/service-prefix``: endpoints registered in etcd.

Compatible with etcd's Go naming convention (``go.etcd.io/etcd/client/v3/naming``): keys
``<prefix>/<addr>`` holding ``{"Op":0,"Addr":"10.0.0.1:50051","Metadata":...}`` (see
:mod:`lbclient.resolver._etcd_naming`), so services registered by Go's
``endpoints.Manager`` or by :func:`lbclient.etcd.register` are found, and vice versa.

How it follows the prefix:

1. Range over ``<prefix>/`` on one member (linearizable), deliver the snapshot.
2. Watch ``<prefix>/`` from the Range's revision + 1; deliver a new snapshot after every
   watch response that changes the endpoint set.
3. When the member fails (stream error, no leader, keepalive timeout), move to the next
   listed member after a backoff and resume the watch from the last revision seen, so no
   event is lost or replayed; the channel keeps the last endpoints meanwhile. If that
   revision has been compacted, Range again.

The endpoint list is authoritative: every key deleted means no endpoints (calls then fail
with UNAVAILABLE rather than go to deregistered servers).

``resolver_options`` (defaults in brackets): ``dial_timeout`` [5 s] for Range,
``backoff_initial`` [0.5 s] and ``backoff_max`` [30 s] between attempts (x1.6, 20 %
jitter, reset once a watch is established), ``keepalive_time`` [10 s] and
``keepalive_timeout`` [5 s] for the gRPC pings that detect a vanished member; TLS, mTLS
and username/password settings (``tls``, ``ca_file``/``ca_pem``, ``cert_file``/
``cert_pem``, ``key_file``/``key_pem``, ``server_name``, ``username``, ``password``,
``env``, ``credentials``) as :mod:`lbclient.resolver._etcd_security` describes (plaintext
and no auth by default; etcdctl's ``ETCDCTL_*`` variables are used when set).

With a username, each session authenticates (once; the token is kept across sessions) and
sends the token with the Range and the Watch; a token etcd refuses (expired, revoked,
etcd restarted) is replaced at once, once per session; a wrong password, a permission
refused or a TLS failure is reported as a ResolverError saying so, and retried with the
backoff like any other failure, the channel keeping its endpoints. Secrets are never in
``repr()``, logs or errors (``self.options`` hides them too).

Threading: one daemon thread per resolver; ``close()`` cancels the running stream.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import grpc

from ..errors import InvalidTargetError, ResolverError, ServiceConfigError
from . import _options
from ._backoff import Backoff
from ._etcd_client import (
    EtcdAccessError,
    EtcdConnection,
    explain,
    parse_members,
    pb2,
    prefix_range_end,
)
from ._etcd_naming import NamingTable, fingerprint
from ._etcd_security import KEYS as SECURITY_OPTIONS
from ._etcd_security import parse_security, redacted
from ._worker import Worker
from .base import Resolver, ResolverListener, ResolverState, Target
from .registry import register_resolver

log = logging.getLogger("lbclient.resolver.etcd")

OPTIONS = {"dial_timeout", "backoff_initial", "backoff_max", "keepalive_time",
           "keepalive_timeout", *SECURITY_OPTIONS}


def parse_etcd_target(target: Target) -> tuple[list[str], str]:
    """(members, prefix) of an ``etcd://members/prefix`` target."""
    if "@" in target.authority:
        # Never echo it: the part before '@' would be a user name and password.
        raise InvalidTargetError(
            "etcd target: credentials in the target (user:password@...) are not supported "
            "(and would be logged); give resolver_options username and password")
    where = f"target {target.raw!r}"
    if not target.authority:
        raise InvalidTargetError(f"{where}: expected etcd://host:2379[,host:2379...]/prefix "
                                 "(the etcd members are missing)")
    if not target.endpoint:
        raise InvalidTargetError(f"{where}: the service prefix after the members is empty")
    return parse_members(target.authority, where), target.endpoint


def validate_etcd_target(target: Target) -> None:
    parse_etcd_target(target)


class _Restart(Exception):
    """End this session and try again (on the next member, after a backoff)."""


class _TokenRefused(Exception):
    """The watch was refused for its token: watch again at once with a new one."""


class EtcdResolver(Resolver):
    def __init__(self, target: Target, listener: ResolverListener,
                 options: Mapping[str, Any], *, rng: random.Random | None = None) -> None:
        super().__init__(target, listener, redacted(options))
        self.members, self.prefix = parse_etcd_target(target)
        _options.check_known(options, "etcd", OPTIONS)
        self.dial_timeout = _options.seconds(options, "dial_timeout", 5.0)
        initial = _options.seconds(options, "backoff_initial", 0.5)
        maximum = _options.seconds(options, "backoff_max", 30.0)
        if maximum < initial:
            raise ServiceConfigError("resolver_options.backoff_max",
                                     f"must be at least backoff_initial ({initial:g})")
        self.keepalive_time = _options.seconds(options, "keepalive_time", 10.0)
        self.keepalive_timeout = _options.seconds(options, "keepalive_timeout", 5.0)
        self.security = parse_security(options, _options.ROOT)
        if self.security.from_env:
            log.info("etcd %s: using %s from the environment", self.prefix,
                     ", ".join(self.security.from_env))
        self._auth = self.security.new_auth()   # the token, kept across sessions
        self._rng = rng or random.Random()
        self._backoff = Backoff(initial, maximum, rng=self._rng)
        self._key = (self.prefix + "/").encode()
        self._table = NamingTable()
        self._revision = 0              # last revision applied (0: Range needed)
        self._delivered: tuple[Any, ...] | None = None
        self._active: EtcdConnection | None = None
        self._active_lock = threading.Lock()
        self.member: str | None = None  # the member currently watched (visibility/tests)
        self.sessions = 0               # watch streams established
        self._worker = Worker(f"lbclient-etcd-{self.prefix}", listener, self._run)
        self._worker.on_stop.append(self._cancel_active)

    # ----------------------------------------------------------------- Resolver API
    def start(self) -> None:
        self._worker.start()

    def resolve_now(self) -> None:
        """Nothing to do: the watch already delivers every change as it happens."""

    def close(self) -> None:
        self._worker.stop()

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def authentications(self) -> int:
        """Tokens obtained from etcd so far (0 without a username)."""
        return self._auth.authentications if self._auth else 0

    def __repr__(self) -> str:
        return (f"EtcdResolver(members={self.members!r}, prefix={self.prefix!r}, "
                f"security={self.security!r})")

    # ----------------------------------------------------------------- the thread
    def _run(self, worker: Worker) -> None:
        index = 0
        while not worker.stopped:
            member = self.members[index % len(self.members)]
            try:
                self._session(worker, member)
                reason = "the watch stream ended"
            except (grpc.RpcError, EtcdAccessError) as exc:
                reason = explain(exc, member, self.security)
            except _Restart as exc:
                reason = f"etcd member {member}: {exc}"
            if worker.stopped:
                return
            self.member = None
            index += 1
            delay = self._backoff.next()
            nxt = self.members[index % len(self.members)]
            error = ResolverError(reason)
            log.warning("%s; trying %s in %.2fs (keeping %d endpoints, revision %d)",
                        error, nxt, delay, len(self._delivered or ()), self._revision)
            worker.fail(error)
            worker.wait(delay)

    def _session(self, worker: Worker, member: str) -> None:
        conn = EtcdConnection(member, keepalive_time=self.keepalive_time,
                              keepalive_timeout=self.keepalive_timeout,
                              security=self.security, auth=self._auth)
        streams: list[threading.Event] = []      # each watch's request side, released
        with self._active_lock:
            if worker.stopped:
                conn.close()
                return
            self._active = conn
        try:
            if self._revision == 0:
                resp = conn.range_prefix(self._key, timeout=self.dial_timeout)
                self._table.reset((kv.key, kv.value) for kv in resp.kvs)
                self._revision = resp.header.revision
                self._publish(worker)
            for attempt in (1, 2):
                create = pb2.WatchRequest(create_request=pb2.WatchCreateRequest(
                    key=self._key, range_end=prefix_range_end(self._key),
                    start_revision=self._revision + 1, progress_notify=True))
                token = conn.token(self.dial_timeout)
                streams.append(threading.Event())
                call = conn.watch(_requests(create, streams[-1]), token)
                try:
                    for resp in call:
                        if worker.stopped:
                            return
                        if resp.created and resp.canceled:
                            self._watch_refused(conn, resp, token, retry=attempt == 1)
                        self._on_watch_response(worker, member, resp)
                    return
                except _TokenRefused:
                    call.cancel()
                    streams[-1].set()               # and watch again with a new token
        finally:
            for done in streams:
                done.set()
            with self._active_lock:
                self._active = None
            conn.close()

    def _watch_refused(self, conn: EtcdConnection, resp: Any, token: str | None,
                       retry: bool) -> None:
        """etcd refused to create the watch (it checks the token and the permission)."""
        reason = resp.cancel_reason or "refused by the server"
        if conn.token_refused(reason, token):
            if retry:
                raise _TokenRefused()
            raise _Restart(f"etcd refused a fresh auth token for the watch ({reason})")
        refusal = conn.refusal(reason, f"watch {self.prefix + '/'!r}")
        if refusal is not None:
            raise refusal

    def _on_watch_response(self, worker: Worker, member: str, resp: Any) -> None:
        if resp.canceled:
            if resp.compact_revision:
                log.warning("etcd: revision %d was compacted (oldest kept: %d); reading "
                            "%s again", self._revision + 1, resp.compact_revision,
                            self.prefix)
                self._revision = 0          # Range again on the next session
            raise _Restart(f"watch canceled: {resp.cancel_reason or 'by the server'}")
        if resp.created:
            self._backoff.reset()
            self.member = member
            self.sessions += 1
            log.info("etcd: watching %s/ on %s from revision %d", self.prefix, member,
                     self._revision + 1)
        if resp.events:
            for event in resp.events:
                if event.type == pb2.Event.PUT:
                    self._table.put(event.kv.key, event.kv.value)
                else:
                    self._table.delete(event.kv.key)
            self._revision = max(self._revision, resp.events[-1].kv.mod_revision)
            self._publish(worker)
        elif not resp.created and resp.header.revision > self._revision:
            # A progress notification: every later event has a higher revision.
            self._revision = resp.header.revision

    def _publish(self, worker: Worker) -> None:
        endpoints = self._table.endpoints()
        mark = fingerprint(endpoints)
        if mark == self._delivered:
            return
        self._delivered = mark
        log.info("etcd: %s/ has %d endpoints (revision %d)", self.prefix, len(endpoints),
                 self._revision)
        worker.deliver(ResolverState(endpoints=endpoints, authoritative=True,
                                     attributes={"revision": self._revision}))

    def _cancel_active(self) -> None:
        with self._active_lock:
            conn = self._active
        if conn is not None:
            conn.close()


def _requests(first: Any, done: threading.Event) -> Iterator[Any]:
    """The request side of a stream: one request, then stay open until the session ends
    (grpc consumes this on its own thread; ``done`` is always set by the session)."""
    yield first
    done.wait()


register_resolver("etcd", EtcdResolver, validate=validate_etcd_target)
