"""The endpoint value: one backend address as discovery reports it (stdlib only)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One backend as a resolver reports it.

    Contract: ``address`` is ``host:port`` (IPv6 hosts in brackets) and identifies the
    endpoint; two snapshots naming the same address describe the same backend, so the
    balancer keeps its connection and state. ``weight`` is a positive integer (default 1)
    used by weight-aware policies. ``attributes`` is read-only metadata from discovery
    (locality, priority, anything a resolver attaches); it does not take part in equality.
    """

    address: str
    weight: int = 1
    attributes: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or not self.address:
            raise ValueError(f"endpoint address must be a non-empty string, got {self.address!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) or self.weight < 1:
            raise ValueError(f"endpoint {self.address}: weight must be an integer >= 1, "
                             f"got {self.weight!r}")
        if not isinstance(self.attributes, MappingProxyType):
            object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))

    def with_weight(self, weight: int) -> Endpoint:
        """A copy with another weight (configs are values changed by copying)."""
        return Endpoint(self.address, weight, self.attributes)
