"""``zone_aware``: prefer endpoints in the client's own zone while it has the capacity.

Config::

    {"zone_aware": {
        "localZone": "us-east-1a",       # the client's zone (or the channel option below)
        "localRegion": "us-east-1",      # optional: same-region zones come next
        "overprovisioningFactor": 1.4,   # number > 0
        "childPolicy": [{"round_robin": {}}],
        "endpoints": {"10.0.0.1:50051": {"zone": "us-east-1a"}}   # per-address attributes
    }}

Endpoints fall in up to three tiers, in this order: the local zone (same zone, and same
region when both sides name one), the rest of the local region (only with
``localRegion``), then everything else (including endpoints with no locality). Each tier
is balanced by its own child policy, and the tiers share traffic the way ``priority``
levels do: the local zone takes all traffic while at least 1/factor of its endpoints
(71.4% with 1.4) are eligible; below that the deficit spills to the next tier in
proportion, and comes back as the zone recovers.

Without ``localZone`` the policy reads ``PolicyContext.options["lbclient.local_zone"]``
(and ``"lbclient.local_region"``); with neither it has no preference and balances over
every endpoint with one child.

Differences from Envoy's zone-aware routing: Envoy also knows how the *calling* cluster
is spread over zones and sends only as much traffic locally as keeps every upstream host
evenly loaded; a client library does not know its peers, so lbclient prefers the local
zone outright while it is healthy enough. Envoy's ``min_cluster_size`` has no equivalent.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from .._validate import expect_object, get_str, join, reject_unknown
from ..balancer.policy import LbChoice, PolicyContext, PolicySpec, register_policy
from ..endpoint import Endpoint
from ..errors import ServiceConfigError
from ._groups import (
    DEFAULT_OVERPROVISIONING_FACTOR,
    EndpointAttributes,
    GroupedPolicy,
    Locality,
    Overrides,
    group_health,
    parse_child,
    parse_factor,
    parse_overrides,
    priority_loads,
)

NAME = "zone_aware"
OPTION_ZONE = "lbclient.local_zone"
OPTION_REGION = "lbclient.local_region"

LOCAL_ZONE, LOCAL_REGION, ELSEWHERE = 0, 1, 2


@dataclass(frozen=True)
class Config:
    child: LbChoice
    local_zone: str | None = None
    local_region: str | None = None
    overprovisioning_factor: float = DEFAULT_OVERPROVISIONING_FACTOR
    endpoints: Overrides = ()


def _name(obj: Any, key: str, path: str) -> str | None:
    value = get_str(obj, key, path, None)
    if value is not None and (not value.strip() or "/" in value):
        raise ServiceConfigError(join(path, key), "must be a non-empty name without '/', "
                                 f"got {value!r}")
    return value.strip() if value is not None else None


def parse_config(raw: Any, path: str) -> Config:
    obj = expect_object(raw if raw is not None else {}, path)
    reject_unknown(obj, path, {"localZone", "localRegion", "overprovisioningFactor",
                               "childPolicy", "endpoints"})
    zone, region = _name(obj, "localZone", path), _name(obj, "localRegion", path)
    if region is not None and zone is None:
        raise ServiceConfigError(join(path, "localRegion"), 'needs "localZone" too')
    factor = parse_factor(obj, path, DEFAULT_OVERPROVISIONING_FACTOR)
    assert factor is not None
    return Config(child=parse_child(obj, path), local_zone=zone, local_region=region,
                  overprovisioning_factor=factor,
                  endpoints=parse_overrides(obj.get("endpoints"), f"{path}.endpoints"))


class ZoneAwarePolicy(GroupedPolicy):
    """Groups are tiers: LOCAL_ZONE, LOCAL_REGION, ELSEWHERE."""

    config: Config

    def __init__(self, config: Config, ctx: PolicyContext) -> None:
        zone, region = config.local_zone, config.local_region
        if zone is None:
            zone = _option(ctx, OPTION_ZONE)
            region = _option(ctx, OPTION_REGION) if zone else None
        self.local = Locality(region or "", zone or "")
        super().__init__(config, ctx, EndpointAttributes(config.endpoints))

    def group_of(self, endpoint: Endpoint) -> Hashable:
        local = self.local
        if not local.zone:
            return ELSEWHERE
        loc = self.attributes.locality(endpoint)
        same_region = bool(local.region and loc.region == local.region)
        region_ok = same_region or not (local.region and loc.region)
        if loc.zone == local.zone and region_ok:
            return LOCAL_ZONE
        return LOCAL_REGION if same_region else ELSEWHERE

    def child_choice(self, key: Hashable) -> LbChoice:
        return self.config.child

    def order(self, keys: Iterable[Hashable]) -> list[Hashable]:
        return [k for k in sorted(cast("Iterable[int]", keys))]

    def shares(self, groups: Sequence[tuple[Hashable, int, int]]) -> list[float]:
        factor = self.config.overprovisioning_factor
        return priority_loads([group_health(eligible, total, factor)
                               for _, eligible, total in groups])


def _option(ctx: PolicyContext, key: str) -> str | None:
    value = ctx.options.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None


SPEC = PolicySpec(NAME, parse_config, ZoneAwarePolicy)
register_policy(SPEC)
