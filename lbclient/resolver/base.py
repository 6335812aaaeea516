"""Resolver contract: targets, snapshots, the listener and the resolver itself.

Imports only the leaf modules (never the balancer, the channel or the scheme registry:
:mod:`lbclient.resolver.registry` builds on this module, not the other way round). A
resolver pushes *whole snapshots* to its listener; ``resolve_now()`` is only a hint; on
failure it reports an error and the consumer keeps the last good endpoints.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..endpoint import Endpoint

# ``scheme:rest``: a URI scheme (RFC 3986) and the rest of the target.
SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", re.DOTALL)


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


# What register_resolver takes: a factory (a Resolver subclass fits) and an optional
# validator that raises InvalidTargetError for a malformed target; what it returns is
# ignored (a parser returning the parsed target fits).
ResolverFactory = Callable[[Target, ResolverListener, Mapping[str, Any]], Resolver]
TargetValidator = Callable[[Target], object]
