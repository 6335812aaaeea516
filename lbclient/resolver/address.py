"""Parsing ``host:port`` strings (stdlib only)."""

from __future__ import annotations

import ipaddress

from ..errors import InvalidTargetError


def split_host_port(text: str, where: str, default_port: int | None = None) -> tuple[str, int]:
    """``"10.0.0.1:80"`` -> ("10.0.0.1", 80); ``"[::1]:80"`` -> ("::1", 80).

    ``where`` names the target for the error message. Without a port, ``default_port`` is
    used if given, else it is an error.
    """
    text = text.strip()
    if not text:
        raise InvalidTargetError(f"{where}: empty address")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise InvalidTargetError(f"{where}: address {text!r} has '[' without ']'")
        host, rest = text[1:close], text[close + 1:]
        if rest and not rest.startswith(":"):
            raise InvalidTargetError(f"{where}: unexpected {rest!r} after ']' in {text!r}")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") == 0:
        host, port_text = text, ""
    else:
        raise InvalidTargetError(
            f"{where}: address {text!r} is ambiguous; write IPv6 addresses as [addr]:port")
    if not host:
        raise InvalidTargetError(f"{where}: address {text!r} has no host")
    if not port_text:
        if default_port is None:
            raise InvalidTargetError(f"{where}: address {text!r} has no port")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidTargetError(
            f"{where}: port {port_text!r} in {text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_ip(host: str, version: int, where: str) -> str:
    """Validate a literal IP of the given version and return its normal form."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidTargetError(f"{where}: {host!r} is not an IPv{version} address") from None
    if ip.version != version:
        raise InvalidTargetError(f"{where}: {host!r} is not an IPv{version} address")
    return str(ip)
