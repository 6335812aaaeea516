"""``dns:`` targets: ``dns:///host:port`` and ``dns://dns-server[:53]/host:port``.

A target without a scheme (``host:port``) means ``dns:///host:port``. The port defaults to
443 (gRPC's rule). An IP literal host is returned as is, without any lookup.

Behaviour (the ``resolver_options`` keys, defaults in brackets):

* ``refresh_interval`` [30 s]: re-resolve this long after each successful lookup.
* ``min_resolve_interval`` [30 s]: ``resolve_now()`` (the channel calls it when an
  endpoint's connection fails) re-resolves at once, but never sooner than this after the
  previous lookup started (gRPC's rate limit).
* ``service_config`` [false]: also read the gRFC A2 TXT record ``_grpc_config.<host>``.
* ``timeout`` [10 s]: per-lookup timeout when dnspython asks a server.

A failed lookup is reported to the listener (the channel keeps its last good endpoints, and
calls fail with UNAVAILABLE naming the DNS error while it has none) and retried with
exponential backoff (1 s x 1.6, capped at ``refresh_interval``).

Threading: one daemon thread per resolver, started by ``start()``, sleeping between
lookups; ``resolve_now()`` only sets a flag and wakes it, so it never blocks.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..endpoint import Endpoint
from ..errors import InvalidTargetError, ResolverError, ServiceConfigError
from . import _options
from ._backoff import Backoff, ResolveSchedule
from ._dns_lookup import ServerLookup, have_dnspython, system_lookup
from ._txt_config import choose_service_config, txt_name
from ._worker import Worker
from .address import join_host_port, split_host_port
from .base import Resolver, ResolverListener, ResolverState, Target
from .registry import register_resolver

log = logging.getLogger("lbclient.resolver.dns")

DEFAULT_PORT = 443
DNS_PORT = 53
OPTIONS = {"refresh_interval", "min_resolve_interval", "service_config", "timeout"}


@dataclass(frozen=True, slots=True)
class DnsTarget:
    host: str
    port: int
    server: str | None          # DNS server IP from the authority, or None for the OS resolver
    server_port: int
    literal: bool               # host is an IP address: no lookup


@dataclass(frozen=True, slots=True)
class DnsOptions:
    refresh_interval: float = 30.0
    min_resolve_interval: float = 30.0
    service_config: bool = False
    timeout: float = 10.0


def parse_dns_target(target: Target) -> DnsTarget:
    where = f"target {target.raw!r}"
    if not target.endpoint or "/" in target.endpoint:
        raise InvalidTargetError(f"{where}: expected dns:///host:port or "
                                 "dns://dns-server:port/host:port")
    host, port = split_host_port(target.endpoint, where, DEFAULT_PORT)
    literal = _is_ip(host)
    server, server_port = None, DNS_PORT
    if target.authority:
        server, server_port = split_host_port(target.authority, f"{where} (DNS server)",
                                              DNS_PORT)
        if not _is_ip(server):
            raise InvalidTargetError(
                f"{where}: the DNS server {server!r} must be an IP address")
        server = str(ipaddress.ip_address(server))
    return DnsTarget(host, port, server, server_port, literal)


def parse_dns_options(options: Mapping[str, Any]) -> DnsOptions:
    _options.check_known(options, "dns", OPTIONS)
    return DnsOptions(
        refresh_interval=_options.seconds(options, "refresh_interval", 30.0),
        min_resolve_interval=_options.seconds(options, "min_resolve_interval", 30.0,
                                              positive=False),
        service_config=_options.flag(options, "service_config", False),
        timeout=_options.seconds(options, "timeout", 10.0))


def validate_dns_target(target: Target) -> None:
    parsed = parse_dns_target(target)
    if parsed.server is not None and not parsed.literal and not have_dnspython():
        raise InvalidTargetError(
            f"target {target.raw!r}: asking a chosen DNS server needs dnspython "
            "(pip install 'lbclient[dns]')")


class DnsResolver(Resolver):
    """Resolves one ``dns:`` target periodically on its own thread (see the module doc).

    ``clock`` and ``rng`` (jitter, gRFC A2 percentages) are arguments for tests.
    """

    def __init__(self, target: Target, listener: ResolverListener,
                 options: Mapping[str, Any], *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        super().__init__(target, listener, options)
        self.dns = parse_dns_target(target)
        self.settings = parse_dns_options(options)
        needs_dnspython = not self.dns.literal and (self.dns.server is not None
                                                    or self.settings.service_config)
        if needs_dnspython and not have_dnspython():
            if self.dns.server is not None:
                validate_dns_target(target)          # raises InvalidTargetError
            raise ServiceConfigError("resolver_options.service_config",
                                     "TXT service configs need dnspython "
                                     "(pip install 'lbclient[dns]')")
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._schedule = ResolveSchedule(
            self.settings.refresh_interval, self.settings.min_resolve_interval,
            Backoff(1.0, max(1.0, self.settings.refresh_interval), rng=self._rng), clock)
        self._server: ServerLookup | None = None
        if needs_dnspython:
            self._server = ServerLookup(self.dns.server, self.dns.server_port,
                                        self.settings.timeout)
        self._last: tuple[tuple[str, ...], Any] | None = None
        self._failed = False
        self._config: Mapping[str, Any] | None = None
        self.lookups = 0            # completed lookups (successful or not), for visibility
        self._worker = Worker(f"lbclient-dns-{self.dns.host}", listener, self._run)

    # ----------------------------------------------------------------- Resolver API
    def start(self) -> None:
        if self.dns.literal:
            address = join_host_port(self.dns.host, self.dns.port)
            self.listener.on_resolved(ResolverState(endpoints=(Endpoint(address),)))
            return
        self._worker.start()

    def resolve_now(self) -> None:
        if self.dns.literal:
            return
        with self._lock:
            self._schedule.request_now()
        self._worker.wake()

    def close(self) -> None:
        self._worker.stop()

    # ----------------------------------------------------------------- the thread
    def _run(self, worker: Worker) -> None:
        while not worker.stopped:
            with self._lock:
                wait = self._schedule.seconds_until_due()
                if wait <= 0:
                    self._schedule.started()
            if wait > 0:
                worker.wait(wait)
                continue
            try:
                addresses = self._lookup_addresses()
            except ResolverError as exc:
                with self._lock:
                    self._schedule.finished(False)
                    self.lookups += 1
                self._failed = True
                kept = len(self._last[0]) if self._last else 0
                log.warning("dns: %s (keeping the last %d endpoints)", exc, kept)
                worker.fail(exc)
                continue
            config = self._lookup_config() if self.settings.service_config else None
            with self._lock:
                self._schedule.finished(True)
                self.lookups += 1
            current = (tuple(addresses), config)
            if current != self._last or self._failed:
                self._last, self._failed = current, False
                worker.deliver(ResolverState(
                    endpoints=tuple(Endpoint(a) for a in addresses), service_config=config))

    def _lookup_addresses(self) -> list[str]:
        if self._server is not None and self.dns.server is not None:
            return self._server.addresses(self.dns.host, self.dns.port)
        return system_lookup(self.dns.host, self.dns.port)

    def _lookup_config(self) -> Mapping[str, Any] | None:
        """The TXT service config; a failed TXT lookup keeps the previous one, a malformed
        record is logged (with its JSON path) and ignored."""
        assert self._server is not None
        name = txt_name(self.dns.host)
        try:
            records = self._server.txt(name)
        except ResolverError as exc:
            log.warning("dns: TXT lookup failed, keeping the previous service config: %s", exc)
            return self._config
        try:
            self._config = choose_service_config(records, hostname=socket.gethostname(),
                                                 rng=self._rng)
        except ServiceConfigError as exc:
            log.warning("dns: ignoring the service config in TXT %s: %s", name, exc)
            self._config = None
        return self._config


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


register_resolver("dns", DnsResolver, validate=validate_dns_target)
