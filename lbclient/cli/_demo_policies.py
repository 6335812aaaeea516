"""Which policies the demo runs, and a sensible service config for each.

The list is whatever is registered when the demo starts
(:func:`lbclient.balancer.policy.registered_policies`), minus aliases and the wrapper or
group policies that only make sense around another policy. Each policy has a few
candidate configs, richest first; the first one that lbclient parses is used, so the demo
keeps working while policies gain or change fields. When ``outlier_detection`` is
registered, every policy is wrapped in it (short intervals, so the flaky backend is
visibly ejected), and active health checking (``healthCheckConfig``) is always asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..balancer.policy import get_policy, registered_policies
from ..config import parse_service_config
from ..errors import ServiceConfigError

# Every demo call carries this header (one of 64 user keys), for hashing/sticky policies.
KEY_HEADER = "x-demo-user"

# Policies that wrap or group others: not run on their own (the subsetting policies
# wrap a childPolicy and need a subsetSize, and a clientIndex, to mean anything).
WRAPPERS = frozenset({"outlier_detection", "priority", "weighted_target", "cds",
                      "xds_cluster_impl", "zone_aware", "random_subsetting",
                      "deterministic_subsetting"})

PREFERRED_ORDER = ("round_robin", "weighted_round_robin", "random", "least_connections",
                   "least_request", "peak_ewma", "ring_hash", "maglev", "sticky",
                   "pick_first")


def candidates(name: str, weights: Mapping[str, int]) -> list[dict[str, Any]]:
    """Configs to try for ``name``, richest first (``{}`` last)."""
    table: dict[str, list[dict[str, Any]]] = {
        "weighted_round_robin": [{"weights": dict(weights)}],
        "least_request": [{"choiceCount": 2}],
        "ring_hash": [{"requestHashHeader": KEY_HEADER, "minRingSize": 1024}],
        "maglev": [{"requestHashHeader": KEY_HEADER}, {"hashHeader": KEY_HEADER}],
        "sticky": [{"sessionHeader": KEY_HEADER, "childPolicy": [{"round_robin": {}}]},
                   {"sessionHeader": KEY_HEADER}],
        "peak_ewma": [{"decayTime": "5s"}],
        "pick_first": [{"shuffleAddressList": False}],
    }
    return [*table.get(name, []), {}]


def outlier_wrappers(child: dict[str, Any]) -> list[dict[str, Any]]:
    """``outlier_detection`` configs around ``child`` (a loadBalancingConfig entry)."""
    base: dict[str, Any] = {"interval": "1s", "baseEjectionTime": "3s",
                            "maxEjectionTime": "10s", "maxEjectionPercent": 50,
                            "childPolicy": [child]}
    failure = {"threshold": 20, "enforcementPercentage": 100, "minimumHosts": 3,
               "requestVolume": 20}
    return [{"outlier_detection": {**base, "failurePercentageEjection": failure}},
            {"outlier_detection": base}]


def _valid(config: dict[str, Any]) -> bool:
    try:
        parse_service_config(config)
    except ServiceConfigError:
        return False
    return True


def service_config_for(name: str, weights: Mapping[str, int], *,
                       health: bool = True) -> dict[str, Any] | None:
    """The demo's service config for policy ``name``, or None if no candidate parses."""
    for cfg in candidates(name, weights):
        entry = {name: cfg}
        options: list[dict[str, Any]] = []
        if health and get_policy("outlier_detection") is not None:
            options += [{"loadBalancingConfig": [w]} for w in outlier_wrappers(entry)]
        options.append({"loadBalancingConfig": [entry]})
        for config in options:
            if health:
                with_hc = {**config, "healthCheckConfig": {"serviceName": ""}}
                if _valid(with_hc):
                    return with_hc
            if _valid(config):
                return config
    return None


def default_policies() -> list[str]:
    """Registered policy names (no aliases, no wrappers), in a readable order."""
    names = []
    for name in registered_policies():
        spec = get_policy(name)
        if spec is None or spec.name != name or name in WRAPPERS or name.endswith(
                "_experimental"):
            continue
        names.append(name)
    rank = {n: i for i, n in enumerate(PREFERRED_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))
