"""What both flavours' endpoint connections share: the grpc target of an address, the
authority TLS is checked against, the options every endpoint connection gets, and the
connectivity state maps between grpc and lbclient.

Channel options lbclient itself acts on are not handed to the endpoint connections:
``grpc.service_config`` (lbclient applies it; given to an endpoint's own channel it would
make grpc core retry inside that one connection) and
``grpc.service_config_disable_resolution``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import grpc

from ..connectivity import Connectivity
from ..resolver.address import split_host_port
from ..resolver.base import Target

ChannelOptions = Sequence[tuple[str, Any]]

TO_LBCLIENT = {
    grpc.ChannelConnectivity.IDLE: Connectivity.IDLE,
    grpc.ChannelConnectivity.CONNECTING: Connectivity.CONNECTING,
    grpc.ChannelConnectivity.READY: Connectivity.READY,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE: Connectivity.TRANSIENT_FAILURE,
    grpc.ChannelConnectivity.SHUTDOWN: Connectivity.SHUTDOWN,
}
TO_GRPC = {v: k for k, v in TO_LBCLIENT.items()}

# Options naming the server a connection presents and verifies TLS against; if the user
# gives either, lbclient adds neither.
AUTHORITY_OPTIONS = frozenset({"grpc.default_authority", "grpc.ssl_target_name_override"})
# Options lbclient consumes itself (see the module docstring).
CHANNEL_ONLY_OPTIONS = frozenset({"grpc.service_config",
                                  "grpc.service_config_disable_resolution"})


def grpc_target(address: str) -> str:
    """An address as a single-endpoint grpc target (IP literals skip DNS)."""
    try:
        host, port = split_host_port(address, "endpoint")
        ip = ipaddress.ip_address(host)
    except ValueError:
        return address
    return f"ipv4:{host}:{port}" if ip.version == 4 else f"ipv6:[{host}]:{port}"


def logical_authority(target: Target) -> str | None:
    """The authority every endpoint connection of ``target`` should use: the target's
    ``host[:port]`` for ``dns:`` targets and for ``static:`` targets naming one host
    (what a plain grpc channel to that target would send and verify TLS against), None
    for the others (``ipv4:``/``ipv6:``, ``file:``, ``etcd:``..., or a ``static:`` list
    of several hosts): endpoints are IP addresses, so without it TLS would check the
    certificate against each IP."""
    if target.scheme == "dns":
        return target.endpoint.strip() or None
    if target.scheme == "static":
        try:
            pairs = [split_host_port(p, "static") for p in target.endpoint.split(",")]
        except ValueError:
            return None
        if pairs and len({host for host, _ in pairs}) == 1:
            return target.endpoint.split(",")[0].strip()
    return None


def with_authority(options: ChannelOptions, target: Target | None) -> list[tuple[str, Any]]:
    """``options`` plus ``("grpc.default_authority", logical_authority(target))`` unless
    the user set the authority or ``grpc.ssl_target_name_override`` (grpc core checks
    the server certificate against the default authority)."""
    opts = list(options)
    if target is not None and not any(k in AUTHORITY_OPTIONS for k, _ in opts):
        authority = logical_authority(target)
        if authority:
            opts.append(("grpc.default_authority", authority))
    return opts


def endpoint_options(options: ChannelOptions | None, target: Target) -> list[tuple[str, Any]]:
    """The grpc options of every endpoint connection of a channel given ``options``:
    the user's (minus the ones lbclient consumes), the target's authority, and a local
    subchannel pool, so two lbclient channels to the same backend don't share (and
    don't close) each other's connection."""
    opts = [(k, v) for k, v in (options or ()) if k not in CHANNEL_ONLY_OPTIONS]
    if "grpc.use_local_subchannel_pool" not in {k for k, _ in opts}:
        opts.append(("grpc.use_local_subchannel_pool", 1))
    return with_authority(opts, target)
