"""lbclient: client-side load balancing for gRPC in Python.

    channel = lbclient.insecure_channel("ipv4:10.0.0.1:50051,10.0.0.2:50051",
                                        service_config={"loadBalancingConfig":
                                                        [{"round_robin": {}}]})
    stub = MyServiceStub(channel)
"""

from . import policies as _policies  # noqa: F401 - registers the built-in policies
from .balancer import (
    CallOutcome,
    Candidate,
    EndpointStats,
    Picker,
    PickError,
    PickInfo,
    PickResult,
    Policy,
    PolicyContext,
    PolicySpec,
    register_policy,
)
from .balancer.balancer import EndpointInfo
from .channel import LoadBalancedChannel, insecure_channel, secure_channel
from .config import ServiceConfig, parse_service_config
from .connectivity import Connectivity
from .endpoint import Endpoint
from .errors import (
    InvalidTargetError,
    LbclientError,
    ResolverError,
    ServiceConfigError,
)
from .health.events import EndpointEvent
from .resolver import Resolver, ResolverListener, ResolverState, Target, register_resolver

__version__ = "0.1.0"

__all__ = [
    "CallOutcome",
    "Candidate",
    "Connectivity",
    "Endpoint",
    "EndpointEvent",
    "EndpointInfo",
    "EndpointStats",
    "InvalidTargetError",
    "LbclientError",
    "LoadBalancedChannel",
    "PickError",
    "PickInfo",
    "PickResult",
    "Picker",
    "Policy",
    "PolicyContext",
    "PolicySpec",
    "Resolver",
    "ResolverError",
    "ResolverListener",
    "ResolverState",
    "ServiceConfig",
    "ServiceConfigError",
    "Target",
    "insecure_channel",
    "parse_service_config",
    "register_policy",
    "register_resolver",
    "secure_channel",
]
