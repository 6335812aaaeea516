"""Balancer layer: the picker contract, the policy registry and the endpoint-set balancer."""

from .picker import (
    CallOutcome,
    Candidate,
    EndpointStats,
    FailingPicker,
    Picker,
    PickError,
    PickInfo,
    PickResult,
    prefer_untried,
)
from .policy import (
    LbChoice,
    Policy,
    PolicyContext,
    PolicySpec,
    get_policy,
    parse_lb_config_list,
    register_policy,
)

__all__ = [
    "CallOutcome",
    "Candidate",
    "EndpointStats",
    "FailingPicker",
    "PickError",
    "PickInfo",
    "PickResult",
    "Picker",
    "Policy",
    "PolicyContext",
    "PolicySpec",
    "LbChoice",
    "get_policy",
    "parse_lb_config_list",
    "prefer_untried",
    "register_policy",
]
