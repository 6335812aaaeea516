"""The scheme registry: which resolver serves ``scheme:`` targets, and how a target
string maps onto the registered schemes (gRPC's parsing rule).

The built-in schemes register themselves when their modules are imported; the package
``lbclient.resolver`` imports them all, so they are known whenever this module is usable.
This module imports the contract (:mod:`.base`) and never a resolver module.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidTargetError
from .base import SCHEME_RE, Resolver, ResolverFactory, ResolverListener, Target, TargetValidator


@dataclass(frozen=True, slots=True)
class _Registration:
    factory: ResolverFactory
    validate: TargetValidator | None


_registry: dict[str, _Registration] = {}
_lock = threading.Lock()


def register_resolver(scheme: str, factory: ResolverFactory, *,
                      validate: TargetValidator | None = None) -> None:
    """Make ``scheme:`` targets resolve with ``factory``.

    ``validate(target)`` (optional) runs when a channel is created and should raise
    :class:`InvalidTargetError` for a malformed target, so bad input fails at once.
    Registering a scheme again replaces the previous factory.
    """
    if not SCHEME_RE.match(scheme + ":"):
        raise ValueError(f"invalid scheme {scheme!r}")
    with _lock:
        _registry[scheme.lower()] = _Registration(factory, validate)


def registered_schemes() -> list[str]:
    """The registered schemes, sorted."""
    return sorted(_registry)


def parse_target(raw: str) -> Target:
    """Parse a target the way gRPC does.

    ``scheme:rest`` with a registered scheme is used as is; anything else (``host:port``,
    ``host``) means ``dns:///<raw>``. ``scheme://authority/endpoint`` splits the authority.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidTargetError(f"target must be a non-empty string, got {raw!r}")
    raw = raw.strip()
    m = SCHEME_RE.match(raw)
    # "dns" is always a scheme (the default one), even before its resolver is installed.
    if m and (m.group(1).lower() in _registry or m.group(1).lower() == "dns"):
        scheme, rest = m.group(1).lower(), m.group(2)
    else:
        scheme, rest = "dns", "///" + raw
    if rest.startswith("//"):
        authority, sep, endpoint = rest[2:].partition("/")
        if not sep:
            raise InvalidTargetError(
                f"target {raw!r}: expected {scheme}://[authority]/endpoint, missing '/' "
                "after the authority")
    else:
        authority, endpoint = "", rest
    return Target(scheme, authority, endpoint, raw)


def create_resolver(target: Target, listener: ResolverListener,
                    options: Mapping[str, Any] | None = None) -> Resolver:
    """A new (not yet started) resolver for ``target``'s scheme."""
    reg = _registration(target)
    return reg.factory(target, listener, dict(options or {}))


def validate_target(target: Target) -> None:
    """Raise :class:`InvalidTargetError` if no resolver serves ``target`` or its scheme's
    validator rejects it."""
    reg = _registration(target)
    if reg.validate is not None:
        reg.validate(target)


def _registration(target: Target) -> _Registration:
    reg = _registry.get(target.scheme)
    if reg is None:
        hint = " (install lbclient[dns] for DNS targets)" if target.scheme == "dns" else ""
        raise InvalidTargetError(
            f"target {target.raw!r}: no resolver for scheme {target.scheme!r}{hint}; "
            f"known schemes: {', '.join(sorted(_registry))}")
    return reg
