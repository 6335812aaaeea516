"""``priority``: active-passive failover between priority levels, Envoy-style.

Config::

    {"priority": {
        "childPolicy": [{"round_robin": {}}],   # balances within each level (default)
        "overprovisioningFactor": 1.4,          # number > 0 (Envoy's default 140%)
        "endpoints": {"10.0.0.9:50051": {"priority": 1}}   # per-address attributes
    }}

Each endpoint's level is ``attributes["priority"]`` (0 = primary; see ``_groups``), or
its entry in ``"endpoints"``. Every level is balanced by its own instance of the child
policy. Traffic follows Envoy's priority load: a level's health score is its eligible
share times the overprovisioning factor, capped at 100%, so with 1.4 a level with at
least 71.4% of its endpoints eligible takes all traffic; below that, the deficit spills
to the next level, and comes back as the level recovers (with 3 primaries of which 1 is
eligible: 1/3 x 1.4 = 46.7% stays on the primary, 53.3% goes to the standby).

Differences from gRPC's ``priority_experimental`` (gRFC A56): gRPC routes everything to
the first READY child (no proportional spill, no overprovisioning factor) and waits up to
10 s for a CONNECTING child before failing over; lbclient keeps every level connected
(warm standby), so failover is immediate and proportional. Differences from Envoy: shares
are exact fractions, not integer percents; there is no "degraded" state.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from .._validate import expect_object, reject_unknown
from ..balancer.policy import LbChoice, PolicyContext, PolicySpec, register_policy
from ..endpoint import Endpoint
from ._groups import (
    DEFAULT_OVERPROVISIONING_FACTOR,
    EndpointAttributes,
    GroupedPolicy,
    Overrides,
    group_by,
    group_health,
    parse_child,
    parse_factor,
    parse_overrides,
    priority_loads,
)

NAME = "priority"


@dataclass(frozen=True)
class Config:
    child: LbChoice
    overprovisioning_factor: float = DEFAULT_OVERPROVISIONING_FACTOR
    endpoints: Overrides = ()


def parse_config(raw: Any, path: str) -> Config:
    obj = expect_object(raw if raw is not None else {}, path)
    reject_unknown(obj, path, {"childPolicy", "overprovisioningFactor", "endpoints"})
    factor = parse_factor(obj, path, DEFAULT_OVERPROVISIONING_FACTOR)
    assert factor is not None
    return Config(child=parse_child(obj, path), overprovisioning_factor=factor,
                  endpoints=parse_overrides(obj.get("endpoints"), f"{path}.endpoints"))


class PriorityPolicy(GroupedPolicy):
    """Groups are priority levels (ints, 0 first)."""

    config: Config

    def __init__(self, config: Config, ctx: PolicyContext) -> None:
        super().__init__(config, ctx, EndpointAttributes(config.endpoints))

    def group_of(self, endpoint: Endpoint) -> Hashable:
        return self.attributes.priority(endpoint)

    def child_choice(self, key: Hashable) -> LbChoice:
        return self.config.child

    def order(self, keys: Iterable[Hashable]) -> list[Hashable]:
        return [k for k in sorted(cast("Iterable[int]", keys))]  # levels are ints

    def shares(self, groups: Sequence[tuple[Hashable, int, int]]) -> list[float]:
        factor = self.config.overprovisioning_factor
        return priority_loads([group_health(eligible, total, factor)
                               for _, eligible, total in groups])


    def available_share(self, fit: Sequence[Endpoint], connected: Sequence[Endpoint]) -> float:
        """Envoy's normalized total health: the sum of the levels' health scores
        (fit share x overprovisioning factor, capped at 1), capped at 1."""
        factor = self.config.overprovisioning_factor
        fit_by = group_by(fit, self.group)
        total = 0.0
        for key, members in group_by(connected, self.group).items():
            total += group_health(len(fit_by.get(key, ())), len(members), factor)
        return min(1.0, total)


SPEC = PolicySpec(NAME, parse_config, PriorityPolicy)
register_policy(SPEC)
