"""The ``"lbclient"`` top-level service config block: panic threshold and slow start.

gRPC ignores unknown top-level fields, so one service config can serve grpcio and lbclient::

    {"loadBalancingConfig": [...],
     "lbclient": {"panicThreshold": 50,
                  "slowStartConfig": {"slowStartWindow": "30s", "aggression": 1.0,
                                      "minWeightPercent": 10}}}

Both apply to every policy, so they live beside ``healthCheckConfig`` rather than inside
one policy's config. Pure (stdlib only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._validate import (
    expect_object,
    get_duration,
    get_int,
    get_number,
    get_object,
    reject_unknown,
)
from ..errors import ServiceConfigError

FIELD = "lbclient"


@dataclass(frozen=True)
class SlowStartConfig:
    """Envoy's ``slowStartConfig``: a new or readmitted endpoint's weight ramps up over
    ``window`` seconds::

        factor = max(min_weight_percent / 100, time_factor ** (1 / aggression))
        time_factor = max(elapsed, 1 s) / window

    (the 1-second floor is Envoy's). After the window the factor is 1."""

    window: float
    aggression: float = 1.0
    min_weight_percent: float = 10.0

    def factor(self, elapsed: float) -> float:
        if elapsed >= self.window:
            return 1.0
        time_factor = min(max(elapsed, 1.0) / self.window, 1.0)
        ramp: float = time_factor ** (1.0 / self.aggression)
        return max(self.min_weight_percent / 100.0, ramp)


@dataclass(frozen=True)
class BalancingOptions:
    """``panic_threshold`` in percent (0 disables); ``slow_start`` None disables it.
    Circuit breakers (Envoy's; gRFC A32's ``maxRequests``): ``max_requests`` attempts in
    flight on the whole channel, ``max_concurrent_requests`` on any one endpoint (None:
    no limit)."""

    panic_threshold: float = 50.0
    slow_start: SlowStartConfig | None = None
    max_requests: int | None = None
    max_concurrent_requests: int | None = None


DEFAULT_OPTIONS = BalancingOptions()


def parse_balancing_options(value: Any, path: str = FIELD) -> BalancingOptions:
    """Parse the ``"lbclient"`` block (None -> the defaults)."""
    if value is None:
        return DEFAULT_OPTIONS
    obj = expect_object(value, path)
    reject_unknown(obj, path, {"panicThreshold", "slowStartConfig", "maxRequests",
                               "maxConcurrentRequests"})
    limits = [get_int(obj, key, path, 0, minimum=1, maximum=2**32 - 1)
              if obj.get(key) is not None else None
              for key in ("maxRequests", "maxConcurrentRequests")]
    panic = get_number(obj, "panicThreshold", path, 50.0, minimum=0.0, maximum=100.0)
    ss = get_object(obj, "slowStartConfig", path)
    slow = None
    if ss is not None:
        p = f"{path}.slowStartConfig"
        reject_unknown(ss, p, {"slowStartWindow", "aggression", "minWeightPercent"})
        window = get_duration(ss, "slowStartWindow", p, None, positive=True)
        if window is None:
            raise ServiceConfigError(f"{p}.slowStartWindow", "is required (a duration > 0)")
        slow = SlowStartConfig(
            window=window,
            aggression=get_number(ss, "aggression", p, 1.0, minimum=0.0,
                                  exclusive_minimum=True),
            min_weight_percent=get_number(ss, "minWeightPercent", p, 10.0, minimum=0.0,
                                          maximum=100.0))
    return BalancingOptions(panic, slow, limits[0], limits[1])
