"""Endpoint health: active grpc.health.v1 probing and passive outlier detection.

Everything exported here is pure (stdlib only) and shared by the sync and asyncio
channels: outlier math (:class:`OutlierDetector`), health thresholds
(:class:`HealthTracker`), slow start and panic options, recent-window counters and
endpoint events. The grpc.health.v1 checkers are the channels' own
(``lbclient._sync.health``, ``lbclient._async.health``).
"""

from .codes import ALL_FAILURE_CODES, SERVER_FAILURE_CODES, parse_status_codes
from .events import EndpointEvent, EventBus
from .options import BalancingOptions, SlowStartConfig, parse_balancing_options
from .outlier import (
    Ejection,
    FailurePercentageEjection,
    OutlierConfig,
    OutlierDetector,
    SuccessRateEjection,
    SweepResult,
)
from .tracker import Backoff, HealthReport, HealthTracker
from .window import RecentWindow

__all__ = [
    "ALL_FAILURE_CODES",
    "Backoff",
    "BalancingOptions",
    "Ejection",
    "EndpointEvent",
    "EventBus",
    "FailurePercentageEjection",
    "HealthReport",
    "HealthTracker",
    "OutlierConfig",
    "OutlierDetector",
    "RecentWindow",
    "SERVER_FAILURE_CODES",
    "SlowStartConfig",
    "SuccessRateEjection",
    "SweepResult",
    "parse_balancing_options",
    "parse_status_codes",
]
