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
from .policy import Policy, PolicyContext, PolicySpec, get_policy, register_policy

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
    "get_policy",
    "prefer_untried",
    "register_policy",
]
