"""``ipv4:``, ``ipv6:`` and ``static:`` targets: a fixed list of addresses.

``ipv4:10.0.0.1:50051,10.0.0.2:50051`` and ``ipv6:[::1]:50051`` take literal IPs only
(gRPC's schemes). ``static:///host:port,host:port`` also allows host names, resolved
once at start with the system resolver (every address of a name becomes an endpoint).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from ..endpoint import Endpoint
from ..errors import InvalidTargetError, ResolverError
from .address import check_ip, join_host_port, split_host_port
from .base import Resolver, ResolverListener, ResolverState, Target
from .registry import register_resolver


def _parts(target: Target) -> list[str]:
    body = target.endpoint
    if target.scheme in ("ipv4", "ipv6") and target.authority:
        raise InvalidTargetError(f"target {target.raw!r}: {target.scheme} takes no authority")
    parts = [p for p in body.split(",")]
    if not body.strip() or any(not p.strip() for p in parts):
        raise InvalidTargetError(f"target {target.raw!r}: empty address in the list")
    return parts


def parse_static(target: Target) -> list[tuple[str, int]]:
    """Validate the target and return its (host, port) pairs (hosts not yet resolved)."""
    where = f"target {target.raw!r}"
    pairs = []
    for part in _parts(target):
        host, port = split_host_port(part, where)
        if target.scheme == "ipv4":
            host = check_ip(host, 4, where)
        elif target.scheme == "ipv6":
            host = check_ip(host, 6, where)
        pairs.append((host, port))
    return pairs


class StaticResolver(Resolver):
    """Resolves once at ``start()`` and never changes."""

    def __init__(self, target: Target, listener: ResolverListener,
                 options: Mapping[str, Any]) -> None:
        super().__init__(target, listener, options)
        self._pairs = parse_static(target)

    def start(self) -> None:
        try:
            endpoints = self._resolve()
        except ResolverError as exc:
            self.listener.on_resolver_error(exc)
            return
        self.listener.on_resolved(ResolverState(endpoints=tuple(endpoints)))

    def _resolve(self) -> list[Endpoint]:
        seen: dict[str, Endpoint] = {}
        for host, port in self._pairs:
            for address in _lookup(host, port, self.target.scheme):
                seen.setdefault(address, Endpoint(address))
        return list(seen.values())


def _lookup(host: str, port: int, scheme: str) -> list[str]:
    if scheme in ("ipv4", "ipv6"):
        return [join_host_port(host, port)]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ResolverError(f"static: cannot resolve {host!r}: {exc}") from exc
    out: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = join_host_port(str(sockaddr[0]), port)
        if address not in out:
            out.append(address)
    return out


for _scheme in ("ipv4", "ipv6", "static"):
    register_resolver(_scheme, StaticResolver, validate=parse_static)
