"""Config parsing of the group policies (priority, weighted_target, zone_aware): defaults,
accepted forms, and bad values rejected with the JSON path and the rule."""

from __future__ import annotations

from typing import Any

import pytest

from lbclient import ServiceConfigError
from lbclient.config import parse_service_config
from lbclient.policies import priority, weighted_target, zone_aware
from lbclient.policies._groups import EndpointOverride, Locality

LB = "loadBalancingConfig[0]"


def lb(name: str, cfg: Any) -> dict[str, Any]:
    return {"loadBalancingConfig": [{name: cfg}]}


def test_priority_defaults() -> None:
    sc = parse_service_config(lb("priority", {}))
    assert sc.lb.name == "priority"
    cfg = sc.lb.config
    assert isinstance(cfg, priority.Config)
    assert cfg.overprovisioning_factor == 1.4
    assert cfg.child.name == "round_robin"
    assert cfg.endpoints == ()
    # null config means the defaults too (gRPC allows {"priority": null}? we do)
    assert parse_service_config(lb("priority", None)).lb.config == cfg


def test_priority_full_config() -> None:
    cfg = parse_service_config(lb("priority", {
        "childPolicy": [{"no_such_policy": {}}, {"pick_first": {"shuffleAddressList": True}}],
        "overprovisioningFactor": 2,
        "endpoints": {
            "10.0.0.1:50051": {"priority": 0, "zone": "a"},
            "10.0.0.2:50051": {"priority": "1", "locality": "us-east/b"},
            "[::1]:50051": {"locality": {"region": "us-west"}},
        },
    })).lb.config
    assert cfg.child.name == "pick_first" and cfg.child.config.shuffle_address_list
    assert cfg.overprovisioning_factor == 2.0
    assert dict(cfg.endpoints) == {
        "10.0.0.1:50051": EndpointOverride(0, Locality("", "a")),
        "10.0.0.2:50051": EndpointOverride(1, Locality("us-east", "b")),
        "[::1]:50051": EndpointOverride(None, Locality("us-west", "")),
    }


def test_weighted_target_config() -> None:
    cfg = parse_service_config(lb("weighted_target", {
        "targets": {"east": {"weight": 70, "childPolicy": [{"pick_first": {}}]},
                    "west": {"weight": "30"}}})).lb.config
    assert isinstance(cfg, weighted_target.Config)
    assert [(t.name, t.weight, t.child.name) for t in cfg.targets] == [
        ("east", 70, "pick_first"), ("west", 30, "round_robin")]
    assert cfg.overprovisioning_factor is None


def test_zone_aware_config() -> None:
    cfg = parse_service_config(lb("zone_aware", {"localZone": " a ", "localRegion": "r1",
                                                 "overprovisioningFactor": 1.0})).lb.config
    assert isinstance(cfg, zone_aware.Config)
    assert (cfg.local_zone, cfg.local_region, cfg.overprovisioning_factor) == ("a", "r1", 1.0)
    assert cfg.child.name == "round_robin"
    empty = parse_service_config(lb("zone_aware", {})).lb.config
    assert empty.local_zone is None and empty.local_region is None


def test_group_policies_nest() -> None:
    # priority of weighted_targets, like gRPC's xDS tree (priority -> localities).
    cfg = parse_service_config(lb("priority", {"childPolicy": [{"weighted_target": {
        "targets": {"a": {"weight": 1}, "b": {"weight": 2}}}}]})).lb.config
    assert cfg.child.name == "weighted_target"
    assert [t.weight for t in cfg.child.config.targets] == [1, 2]


def test_equal_configs_compare_equal() -> None:
    # The balancer keeps the policy object when the config is unchanged (==).
    raw = {"targets": {"a": {"weight": 3}}, "endpoints": {"1.2.3.4:5": {"zone": "a"}}}
    assert (parse_service_config(lb("weighted_target", raw)).lb.config
            == parse_service_config(lb("weighted_target", raw)).lb.config)


P = f"{LB}.priority"
W = f"{LB}.weighted_target"
Z = f"{LB}.zone_aware"

BAD: list[tuple[str, Any, str, str]] = [
    # (policy, config, expected path, words from the rule)
    ("priority", [], P, "must be a JSON object"),
    ("priority", {"overprovisioningFactor": 0}, f"{P}.overprovisioningFactor",
     "greater than 0"),
    ("priority", {"overprovisioningFactor": -1.4}, f"{P}.overprovisioningFactor",
     "greater than 0"),
    ("priority", {"overprovisioningFactor": "1.4"}, f"{P}.overprovisioningFactor",
     "finite number"),
    ("priority", {"overprovisioningFactor": 1000}, f"{P}.overprovisioningFactor",
     "at most 100"),
    ("priority", {"overprovisioningFactor": True}, f"{P}.overprovisioningFactor",
     "finite number"),
    ("priority", {"childPolicy": {"round_robin": {}}}, f"{P}.childPolicy", "JSON array"),
    ("priority", {"childPolicy": []}, f"{P}.childPolicy", "no supported policy"),
    ("priority", {"childPolicy": [{"nope": {}}]}, f"{P}.childPolicy", "no supported policy"),
    ("priority", {"childPolicy": [{"pick_first": {"bogus": 1}}]},
     f"{P}.childPolicy[0].pick_first.bogus", "unknown field"),
    ("priority", {"children": {}}, f"{P}.children", "unknown field"),
    ("priority", {"endpoints": []}, f"{P}.endpoints", "JSON object"),
    ("priority", {"endpoints": {"10.0.0.1": {"priority": 1}}}, f'{P}.endpoints["10.0.0.1"]',
     "endpoint addresses"),
    ("priority", {"endpoints": {"10.0.0.1:1": {"priority": -1}}},
     f'{P}.endpoints["10.0.0.1:1"].priority', "at least 0"),
    ("priority", {"endpoints": {"10.0.0.1:1": {"priority": 1.5}}},
     f'{P}.endpoints["10.0.0.1:1"].priority', "integer"),
    ("priority", {"endpoints": {"10.0.0.1:1": {"priority": True}}},
     f'{P}.endpoints["10.0.0.1:1"].priority', "integer"),
    ("priority", {"endpoints": {"10.0.0.1:1": {"weight": 3}}},
     f'{P}.endpoints["10.0.0.1:1"].weight', "unknown field"),
    ("priority", {"endpoints": {"10.0.0.1:1": 1}}, f'{P}.endpoints["10.0.0.1:1"]',
     "JSON object"),
    ("priority", {"endpoints": {"10.0.0.1:1": {"zone": 5}}},
     f'{P}.endpoints["10.0.0.1:1"].zone', "must be a string"),
    ("priority", {"endpoints": {"10.0.0.1:1": {"locality": "r/z", "zone": "z"}}},
     f'{P}.endpoints["10.0.0.1:1"].zone', "either"),
    ("priority", {"endpoints": {"10.0.0.1:1": {"locality": {"zone": "z", "az": "x"}}}},
     f'{P}.endpoints["10.0.0.1:1"].locality.az', "unknown field"),
    ("priority", {"endpoints": {"10.0.0.1:1": {"locality": "/"}}},
     f'{P}.endpoints["10.0.0.1:1"].locality', "region or a zone"),
    ("priority", {"endpoints": {"10.0.0.1:1": {"locality": 7}}},
     f'{P}.endpoints["10.0.0.1:1"].locality', "JSON object"),
    ("weighted_target", {}, f"{W}.targets", "is required"),
    ("weighted_target", {"targets": {}}, f"{W}.targets", "at least one target"),
    ("weighted_target", {"targets": []}, f"{W}.targets", "JSON object"),
    ("weighted_target", {"targets": {"a": {}}}, f'{W}.targets["a"].weight', "is required"),
    ("weighted_target", {"targets": {"a": {"weight": 0}}}, f'{W}.targets["a"].weight',
     "at least 1"),
    ("weighted_target", {"targets": {"a": {"weight": 2**32}}}, f'{W}.targets["a"].weight',
     "at most 4294967295"),
    ("weighted_target", {"targets": {"a": {"weight": 0.5}}}, f'{W}.targets["a"].weight',
     "integer"),
    ("weighted_target", {"targets": {"a": {"weight": 1, "childPolicy": [{"x": {}}]}}},
     f'{W}.targets["a"].childPolicy', "no supported policy"),
    ("weighted_target", {"targets": {"a": {"weight": 1, "config": []}}},
     f'{W}.targets["a"].config', "unknown field"),
    ("weighted_target", {"targets": {" ": {"weight": 1}}}, f'{W}.targets[" "]', "non-empty"),
    ("weighted_target", {"targets": {"a": 70}}, f'{W}.targets["a"]', "JSON object"),
    ("weighted_target", {"targets": {"a": {"weight": 1}}, "overprovisioningFactor": 0},
     f"{W}.overprovisioningFactor", "greater than 0"),
    ("weighted_target", {"targets": {"a": {"weight": 1}}, "endpoints": {"x:y": {}}},
     f'{W}.endpoints["x:y"]', "endpoint addresses"),
    ("zone_aware", {"localZone": ""}, f"{Z}.localZone", "non-empty"),
    ("zone_aware", {"localZone": "r/z"}, f"{Z}.localZone", "without '/'"),
    ("zone_aware", {"localZone": 3}, f"{Z}.localZone", "must be a string"),
    ("zone_aware", {"localRegion": "r"}, f"{Z}.localRegion", "localZone"),
    ("zone_aware", {"localZone": "a", "localRegion": " "}, f"{Z}.localRegion", "non-empty"),
    ("zone_aware", {"localZone": "a", "overprovisioningFactor": None, "zone": "a"},
     f"{Z}.zone", "unknown field"),
    ("zone_aware", {"localZone": "a", "childPolicy": "round_robin"}, f"{Z}.childPolicy",
     "JSON array"),
]


@pytest.mark.parametrize(("name", "cfg", "path", "rule"), BAD,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_config_names_path_and_rule(name: str, cfg: Any, path: str, rule: str) -> None:
    with pytest.raises(ServiceConfigError) as info:
        parse_service_config(lb(name, cfg))
    message = str(info.value)
    assert message.startswith(path + ":"), message
    assert rule in message, message
    assert isinstance(info.value, ValueError)


def test_the_names_are_registered() -> None:
    from lbclient.balancer.policy import registered_policies

    assert {"priority", "weighted_target", "zone_aware"} <= set(registered_policies())
