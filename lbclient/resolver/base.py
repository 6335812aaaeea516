"""Resolver contract: targets, snapshots, the listener, and the scheme registry.

Imports only the leaf modules (never the balancer or the channel). A resolver pushes
*whole snapshots* to its listener; ``resolve_now()`` is only a hint; on failure it reports
an error and the consumer keeps the last good endpoints.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..endpoint import Endpoint
from ..errors import InvalidTargetError

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed target URI: ``scheme://authority/endpoint`` or ``scheme:endpoint``."""

    scheme: str
    authority: str
    endpoint: str
    raw: str


@dataclass(frozen=True, slots=True)
class ResolverState:
    """One complete snapshot from a resolver.

    ``service_config`` is a JSON string or mapping when discovery carries one (DNS TXT,
    file, etcd), else None. An empty ``endpoints`` tuple is treated as a resolver error
    unless ``authoritative`` is true (gRPC's rule), so a glitch never empties the channel.
    """

    endpoints: tuple[Endpoint, ...]
    service_config: Mapping[str, Any] | str | None = None
    authoritative: bool = False
    attributes: Mapping[str, Any] = field(default_factory=dict, compare=False)


class ResolverListener(Protocol):
    """Where a resolver delivers results. Both methods may be called from any thread."""

    def on_resolved(self, state: ResolverState) -> None: ...

    def on_resolver_error(self, error: Exception) -> None: ...


class Resolver(ABC):
    """A source of endpoints for one target.

    Lifecycle: constructed (cheap, validates nothing further), ``start()`` once, then any
    number of ``resolve_now()`` hints, then ``close()`` (idempotent; after it the resolver
    delivers nothing more and holds no thread, socket or timer).
    """

    def __init__(self, target: Target, listener: ResolverListener,
                 options: Mapping[str, Any]) -> None:
        self.target = target
        self.listener = listener
        self.options = options

    @abstractmethod
    def start(self) -> None: ...

    def resolve_now(self) -> None:  # noqa: B027 - optional hook
        """Hint that endpoints may have changed (e.g. a connection failed)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop resolving; must be idempotent."""


ResolverFactory = Callable[[Target, ResolverListener, Mapping[str, Any]], Resolver]
TargetValidator = Callable[[Target], None]


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
    if not _SCHEME_RE.match(scheme + ":"):
        raise ValueError(f"invalid scheme {scheme!r}")
    with _lock:
        _registry[scheme.lower()] = _Registration(factory, validate)


def registered_schemes() -> list[str]:
    _load_builtins()
    return sorted(_registry)


def _load_builtins() -> None:
    # Importing the modules registers their schemes; done lazily to avoid import cycles.
    from . import static  # noqa: F401

    for optional in ("dns", "file", "etcd"):
        try:
            __import__(f"{__package__}.{optional}")
        except ImportError:
            pass


def parse_target(raw: str) -> Target:
    """Parse a target the way gRPC does.

    ``scheme:rest`` with a registered scheme is used as is; anything else (``host:port``,
    ``host``) means ``dns:///<raw>``. ``scheme://authority/endpoint`` splits the authority.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidTargetError(f"target must be a non-empty string, got {raw!r}")
    raw = raw.strip()
    _load_builtins()
    m = _SCHEME_RE.match(raw)
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
    reg = _registration(target)
    return reg.factory(target, listener, dict(options or {}))


def validate_target(target: Target) -> None:
    reg = _registration(target)
    if reg.validate is not None:
        reg.validate(target)


def _registration(target: Target) -> _Registration:
    _load_builtins()
    reg = _registry.get(target.scheme)
    if reg is None:
        hint = " (install lbclient[dns] for DNS targets)" if target.scheme == "dns" else ""
        raise InvalidTargetError(
            f"target {target.raw!r}: no resolver for scheme {target.scheme!r}{hint}; "
            f"known schemes: {', '.join(sorted(_registry))}")
    return reg
