"""The ``"lbclient"`` top-level service config block: panic threshold, slow start, circuit
breakers and retry budgets.

gRPC ignores unknown top-level fields, so one service config can serve grpcio and lbclient::

    {"loadBalancingConfig": [...],
     "lbclient": {"panicThreshold": 50,
                  "slowStartConfig": {"slowStartWindow": "30s", "aggression": 1.0,
                                      "minWeightPercent": 10}}}

They apply to every policy, so they live beside ``healthCheckConfig`` rather than inside
one policy's config. ``retryBudget`` is Envoy's concurrency budget
(``{"budgetPercent": 20, "minRetryConcurrency": 3}``) or Finagle's rate budget
(``{"ttl": "10s", "minRetriesPerSec": 10, "percentCanRetry": 0.2}``): which one is told by
the fields given (see :func:`parse_retry_budget`; the budgets are
``lbclient._core.budget``). Pure (stdlib only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._validate import (
    check_number,
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
class ConcurrencyBudgetConfig:
    """Envoy's ``retry_budget`` (a circuit-breaker threshold): retries in flight on the
    channel may not exceed ``max(min_retry_concurrency, budget_percent / 100 * active
    requests)``. Both 0: never retry."""

    budget_percent: float = 20.0
    min_retry_concurrency: int = 3


@dataclass(frozen=True)
class RateBudgetConfig:
    """Finagle's ``RetryBudget``: over the last ``ttl`` seconds, retries may not exceed
    ``min_retries_per_sec * ttl + percent_can_retry * calls``. Both 0: never retry."""

    ttl: float = 10.0
    min_retries_per_sec: int = 10
    percent_can_retry: float = 0.2


RetryBudgetConfig = ConcurrencyBudgetConfig | RateBudgetConfig

_CONCURRENCY_FIELDS = ("budgetPercent", "minRetryConcurrency")
_RATE_FIELDS = ("ttl", "minRetriesPerSec", "percentCanRetry")


def parse_retry_budget(value: Any, path: str) -> RetryBudgetConfig:
    """``retryBudget``: Envoy's fields (``budgetPercent`` a percentage in [0, 100], also
    as Envoy's ``{"value": 20}``; ``minRetryConcurrency`` an integer >= 0) or Finagle's
    (``ttl`` a duration in [1s, 60s]; ``minRetriesPerSec`` an integer >= 0;
    ``percentCanRetry`` a fraction in [0, 1000], 0.2 = 20 %), never both; the missing
    fields of the chosen one take its defaults (20 / 3; 10s / 10 / 0.2)."""
    obj = expect_object(value, path)
    reject_unknown(obj, path, {*_CONCURRENCY_FIELDS, *_RATE_FIELDS})
    envoy = [k for k in _CONCURRENCY_FIELDS if obj.get(k) is not None]
    finagle = [k for k in _RATE_FIELDS if obj.get(k) is not None]
    if envoy and finagle:
        raise ServiceConfigError(
            f"{path}.{finagle[0]}",
            f"can't be mixed with {envoy[0]}: give Envoy's concurrency budget "
            "(budgetPercent, minRetryConcurrency) or Finagle's rate budget (ttl, "
            "minRetriesPerSec, percentCanRetry)")
    if envoy:
        percent = obj.get("budgetPercent")
        p = f"{path}.budgetPercent"
        if isinstance(percent, Mapping):        # Envoy's type.v3.Percent: {"value": 20}
            reject_unknown(percent, p, {"value"})
            percent, p = percent.get("value"), f"{p}.value"
            if percent is None:
                raise ServiceConfigError(p, "is required (a percentage in [0, 100])")
        return ConcurrencyBudgetConfig(
            budget_percent=20.0 if percent is None else check_number(
                percent, p, minimum=0.0, maximum=100.0),
            min_retry_concurrency=get_int(obj, "minRetryConcurrency", path, 3, minimum=0,
                                          maximum=2**32 - 1))
    if not finagle:
        raise ServiceConfigError(
            path, "is empty: give Envoy's concurrency budget (budgetPercent, "
                  "minRetryConcurrency) or Finagle's rate budget (ttl, minRetriesPerSec, "
                  "percentCanRetry)")
    ttl = get_duration(obj, "ttl", path, 10.0)
    assert ttl is not None
    if not 1.0 <= ttl <= 60.0:
        raise ServiceConfigError(f"{path}.ttl", f"must be between 1s and 60s, got "
                                                f"{obj['ttl']!r}")
    return RateBudgetConfig(
        ttl=ttl,
        min_retries_per_sec=get_int(obj, "minRetriesPerSec", path, 10, minimum=0,
                                    maximum=2**31 - 1),
        percent_can_retry=get_number(obj, "percentCanRetry", path, 0.2, minimum=0.0,
                                     maximum=1000.0))


@dataclass(frozen=True)
class BalancingOptions:
    """``panic_threshold`` in percent (0 disables); ``slow_start`` None disables it.
    Circuit breakers (Envoy's; gRFC A32's ``maxRequests``): ``max_requests`` attempts in
    flight on the whole channel, ``max_concurrent_requests`` on any one endpoint (None:
    no limit). ``retry_budget``: the channel's retry budget (None: none; then the service
    config's ``retryThrottling`` applies, if any)."""

    panic_threshold: float = 50.0
    slow_start: SlowStartConfig | None = None
    max_requests: int | None = None
    max_concurrent_requests: int | None = None
    retry_budget: RetryBudgetConfig | None = None


DEFAULT_OPTIONS = BalancingOptions()


def parse_balancing_options(value: Any, path: str = FIELD) -> BalancingOptions:
    """Parse the ``"lbclient"`` block (None -> the defaults)."""
    if value is None:
        return DEFAULT_OPTIONS
    obj = expect_object(value, path)
    reject_unknown(obj, path, {"panicThreshold", "slowStartConfig", "maxRequests",
                               "maxConcurrentRequests", "retryBudget"})
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
    budget = obj.get("retryBudget")
    retry_budget = (parse_retry_budget(budget, f"{path}.retryBudget")
                    if budget is not None else None)
    return BalancingOptions(panic, slow, limits[0], limits[1], retry_budget)
