"""DNS lookups for the ``dns:`` resolver: address records and the gRFC A2 TXT record.

* No DNS server in the target (``dns:///host:port``): the operating system's resolver
  (``getaddrinfo``: /etc/hosts, search domains, nsswitch), as grpc-go and c-ares do.
* A server in the target (``dns://10.0.0.53:53/host:port``): dnspython asks that server
  directly for A and AAAA records (the ``lbclient[dns]`` extra).
* TXT service config (``_grpc_config.<host>``) always needs dnspython; without a server in
  the target it uses the system's nameservers (/etc/resolv.conf).

Every failure is a :class:`ResolverError` whose message names the host and the DNS error
(NXDOMAIN, timeout, refused...), because that text reaches failing calls.
"""

from __future__ import annotations

import socket
from typing import Any

from ..errors import ResolverError
from .address import join_host_port


def have_dnspython() -> bool:
    try:
        import dns.resolver  # noqa: F401
    except ImportError:
        return False
    return True


def system_lookup(host: str, port: int) -> list[str]:
    """Addresses of ``host`` from the OS resolver, in its preference order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ResolverError(f"DNS lookup of {host!r} failed: {exc}") from exc
    out: list[str] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = join_host_port(str(sockaddr[0]), port)
        if address not in out:
            out.append(address)
    if not out:
        raise ResolverError(f"DNS lookup of {host!r} returned no IPv4 or IPv6 address")
    return out


class ServerLookup:
    """Asks one DNS server (dnspython) for A, AAAA and TXT records."""

    def __init__(self, server: str | None, port: int, timeout: float) -> None:
        import dns.resolver

        if server is None:
            self._resolver = dns.resolver.Resolver()       # /etc/resolv.conf
        else:
            self._resolver = dns.resolver.Resolver(configure=False)
            self._resolver.nameservers = [server]
            self._resolver.port = port
        self._resolver.lifetime = timeout
        self._resolver.timeout = timeout
        self._where = f"DNS server {join_host_port(server, port)}" if server else "DNS"

    def addresses(self, host: str, port: int) -> list[str]:
        """A records then AAAA records. One family failing is fine if the other answers;
        the error names both failures otherwise."""
        out: list[str] = []
        errors: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = self._query(host, rdtype)
            except _NoRecords:
                continue
            except ResolverError as exc:
                errors.append(str(exc))
                continue
            for rr in answer:
                address = join_host_port(rr.to_text(), port)
                if address not in out:
                    out.append(address)
        if out:
            return out
        if errors:
            raise ResolverError("; ".join(dict.fromkeys(errors)))
        raise ResolverError(f"{self._where}: {host!r} has no A or AAAA records")

    def txt(self, name: str) -> list[str]:
        """Every TXT record of ``name``, each record's strings joined (RFC 1035 allows a
        record to be split into strings of up to 255 bytes). No record: empty list."""
        try:
            answer = self._query(name, "TXT")
        except _NoRecords:
            return []
        return [b"".join(rr.strings).decode("utf-8", "replace") for rr in answer]

    def _query(self, name: str, rdtype: str) -> Any:
        import dns.exception
        import dns.resolver

        try:
            return self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN as exc:
            raise ResolverError(f"{self._where}: {name!r} does not exist (NXDOMAIN)") from exc
        except dns.resolver.NoAnswer:
            raise _NoRecords() from None
        except dns.resolver.LifetimeTimeout as exc:
            raise ResolverError(
                f"{self._where}: {rdtype} lookup of {name!r} timed out after "
                f"{self._resolver.lifetime:g}s") from exc
        except dns.resolver.NoNameservers as exc:
            raise ResolverError(f"{self._where}: {rdtype} lookup of {name!r} failed: "
                                f"{exc}") from exc
        except dns.exception.DNSException as exc:
            raise ResolverError(f"{self._where}: {rdtype} lookup of {name!r} failed: "
                                f"{exc}") from exc


class _NoRecords(Exception):
    """The name exists but has no record of the asked type."""
