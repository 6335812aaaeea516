"""``weighted_target``: active-active traffic split over localities by configured weights.

Config (gRPC's ``weighted_target_experimental`` shape, gRFC A28)::

    {"weighted_target": {
        "targets": {
            "us-east-1a": {"weight": 70, "childPolicy": [{"round_robin": {}}]},
            "us-east-1b": {"weight": 30}              # childPolicy defaults to round_robin
        },
        "overprovisioningFactor": 1.4,    # optional; absent = gRPC behaviour (see below)
        "endpoints": {"10.0.0.1:50051": {"zone": "us-east-1a"}}   # per-address attributes
    }}

An endpoint belongs to the target named after its locality (``attributes["locality"]``
or the ``"endpoints"`` map, see ``_groups``): ``"region/zone"`` is tried first, then the
zone, then the region. Endpoints that match no target get no traffic (as in gRPC, where
an address outside every child is dropped). Each target is balanced by its own child.

The split: targets with at least one eligible endpoint share the traffic in proportion
to their weights (gRPC picks among READY children only). With
``overprovisioningFactor`` set, a target's weight is also scaled by its health score,
``min(1, factor x eligible / total)`` (Envoy's locality-weighted balancing), so a locality
that lost most of its endpoints stops receiving its full share before it is empty.
Differences from gRPC: the split is a deterministic low-discrepancy sequence, not
independent random draws (70/30 holds to a few calls in any run of calls).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._validate import expect_object, get_int, join, reject_unknown
from ..balancer.lb_metrics import LOCALITY_OPTION
from ..balancer.policy import LbChoice, PolicyContext, PolicySpec, register_policy
from ..endpoint import Endpoint
from ..errors import ServiceConfigError
from ._groups import (
    EndpointAttributes,
    GroupedPolicy,
    Overrides,
    group_health,
    parse_child,
    parse_factor,
    parse_overrides,
)

NAME = "weighted_target"
MAX_WEIGHT = 2**32 - 1  # gRPC's uint32


@dataclass(frozen=True)
class Target:
    name: str
    weight: int
    child: LbChoice


@dataclass(frozen=True)
class Config:
    targets: tuple[Target, ...]
    overprovisioning_factor: float | None = None
    endpoints: Overrides = ()


def parse_config(raw: Any, path: str) -> Config:
    obj = expect_object(raw if raw is not None else {}, path)
    reject_unknown(obj, path, {"targets", "overprovisioningFactor", "endpoints"})
    tpath = join(path, "targets")
    if obj.get("targets") is None:
        raise ServiceConfigError(tpath, "is required (an object of name -> "
                                 '{"weight", "childPolicy"})')
    raw_targets = expect_object(obj["targets"], tpath)
    if not raw_targets:
        raise ServiceConfigError(tpath, "must name at least one target")
    targets = []
    for name, value in raw_targets.items():
        p = f'{tpath}["{name}"]'
        if not name.strip():
            raise ServiceConfigError(p, "target names must be non-empty locality names")
        entry = expect_object(value, p)
        reject_unknown(entry, p, {"weight", "childPolicy"})
        if entry.get("weight") is None:
            raise ServiceConfigError(join(p, "weight"), "is required")
        weight = get_int(entry, "weight", p, 0, minimum=1, maximum=MAX_WEIGHT)
        targets.append(Target(name, weight, parse_child(entry, p)))
    return Config(targets=tuple(targets),
                  overprovisioning_factor=parse_factor(obj, path, None),
                  endpoints=parse_overrides(obj.get("endpoints"), f"{path}.endpoints"))


class WeightedTargetPolicy(GroupedPolicy):
    """Groups are target names; endpoints of no target are left out."""

    config: Config

    def __init__(self, config: Config, ctx: PolicyContext) -> None:
        self._targets = {t.name: t for t in config.targets}
        super().__init__(config, ctx, EndpointAttributes(config.endpoints))

    def group_of(self, endpoint: Endpoint) -> Hashable | None:
        loc = self.attributes.locality(endpoint)
        for name in (loc.key, loc.zone, loc.region):
            if name and name in self._targets:
                return name
        return None

    def child_choice(self, key: Hashable) -> LbChoice:
        return self._targets[str(key)].child

    def child_options(self, key: Hashable) -> Mapping[str, Any]:
        """gRFC A78: a child's metrics (weighted_round_robin's) carry its target's name
        as ``grpc.lb.locality``."""
        return {LOCALITY_OPTION: str(key)}

    def order(self, keys: Iterable[Hashable]) -> list[Hashable]:
        present = set(keys)
        return [name for name in self._targets if name in present]

    def shares(self, groups: Sequence[tuple[Hashable, int, int]]) -> list[float]:
        factor = self.config.overprovisioning_factor
        out = []
        for key, eligible, total in groups:
            weight = float(self._targets[str(key)].weight) if eligible else 0.0
            if factor is not None:
                weight *= group_health(eligible, total, factor)
            out.append(weight)
        return out

    def no_group_reason(self) -> str:
        names = ", ".join(self._targets)
        return f"no eligible endpoint in any weighted_target target ({names})"


SPEC = PolicySpec(NAME, parse_config, WeightedTargetPolicy)
register_policy(SPEC)
