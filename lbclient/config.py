"""Service config JSON -> frozen, validated config objects.

Accepts gRPC's service config (a dict or a JSON string). Every error is a
:class:`ServiceConfigError` naming the JSON path, e.g.
``loadBalancingConfig: no supported policy in ["foo", "bar"]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._validate import (
    expect_list,
    expect_object,
    get_bool,
    get_duration,
    get_number,
    get_str,
    join,
    parse_duration,
)
from .balancer.policy import LbChoice, get_policy, parse_lb_config_list
from .errors import ServiceConfigError
from .health.options import DEFAULT_OPTIONS, BalancingOptions, parse_balancing_options
from .health.options import FIELD as OPTIONS_FIELD
from .method_config import MethodConfig, RetryThrottling, parse_method_config

DEFAULT_POLICY = "round_robin"


@dataclass(frozen=True)
class HealthCheckConfig:
    """``healthCheckConfig`` (gRFC A17) plus lbclient's polling fields."""

    service_name: str = ""
    mode: str = "watch"             # "watch" (Health/Watch stream) or "poll" (Health/Check)
    interval: float = 10.0          # poll mode: seconds between probes
    timeout: float = 5.0            # poll mode: a probe slower than this is a failure
    unhealthy_threshold: int = 3    # poll mode: consecutive failures to mark unhealthy
    healthy_threshold: int = 2      # both modes: consecutive successes to readmit after ejection
    jitter: float = 0.2             # poll mode: +-fraction of interval, so clients don't align


@dataclass(frozen=True)
class ServiceConfig:
    lb: LbChoice
    method_configs: tuple[MethodConfig, ...] = ()
    health_check: HealthCheckConfig | None = None
    retry_throttling: RetryThrottling | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # the top-level "lbclient" block (panic threshold, slow start): lbclient.health.options
    options: BalancingOptions = DEFAULT_OPTIONS


def parse_service_config(value: str | bytes | Mapping[str, Any] | None) -> ServiceConfig:
    """Parse a whole service config. ``None`` means the defaults (round_robin)."""
    if value is None:
        value = {}
    if isinstance(value, bytes | bytearray):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ServiceConfigError("<root>", f"invalid UTF-8: {exc}") from None
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise ServiceConfigError("<root>", f"invalid JSON: {exc}") from None
        except RecursionError:
            raise ServiceConfigError("<root>", "invalid JSON: nested too deeply") from None
    obj = expect_object(value, "")
    lb = _parse_lb(obj)
    methods = tuple(
        parse_method_config(m, join("methodConfig", i))
        for i, m in enumerate(expect_list(_or_empty(obj.get("methodConfig")), "methodConfig")))
    _check_unique_names(methods)
    hc = obj.get("healthCheckConfig")
    health = parse_health_check(hc, "healthCheckConfig") if hc is not None else None
    rt = obj.get("retryThrottling")
    throttling = RetryThrottling.parse(rt, "retryThrottling") if rt is not None else None
    options = parse_balancing_options(obj.get(OPTIONS_FIELD))
    return ServiceConfig(lb, methods, health, throttling, dict(obj), options)


def _parse_lb(obj: Mapping[str, Any]) -> LbChoice:
    if obj.get("loadBalancingConfig") is not None:
        return parse_lb_config_list(obj["loadBalancingConfig"], "loadBalancingConfig")
    legacy = get_str(obj, "loadBalancingPolicy", "", None)
    if legacy is not None:
        spec = get_policy(legacy.lower())
        if spec is None:
            raise ServiceConfigError("loadBalancingPolicy", f"unknown policy {legacy!r}")
        return LbChoice(spec, spec.parse_config({}, f"loadBalancingPolicy[{legacy}]"))
    spec = get_policy(DEFAULT_POLICY)
    assert spec is not None
    return LbChoice(spec, spec.parse_config({}, DEFAULT_POLICY))


def parse_health_check(value: Any, path: str) -> HealthCheckConfig:
    from ._validate import get_int, reject_unknown

    obj = expect_object(value, path)
    reject_unknown(obj, path, {"serviceName", "mode", "interval", "timeout",
                               "unhealthyThreshold", "healthyThreshold", "jitter"})
    mode = get_str(obj, "mode", path, "watch")
    if mode not in ("watch", "poll"):
        raise ServiceConfigError(join(path, "mode"), f'must be "watch" or "poll", got {mode!r}')
    interval = get_duration(obj, "interval", path, 10.0, positive=True)
    timeout = get_duration(obj, "timeout", path, 5.0, positive=True)
    assert interval is not None and timeout is not None
    return HealthCheckConfig(
        service_name=get_str(obj, "serviceName", path, "") or "",
        mode=mode,
        interval=interval,
        timeout=timeout,
        unhealthy_threshold=get_int(obj, "unhealthyThreshold", path, 3, minimum=1),
        healthy_threshold=get_int(obj, "healthyThreshold", path, 2, minimum=1),
        jitter=get_number(obj, "jitter", path, 0.2, minimum=0.0, maximum=1.0),
    )


def _or_empty(value: Any) -> Any:
    return [] if value is None else value


def _check_unique_names(methods: tuple[MethodConfig, ...]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for i, mc in enumerate(methods):
        for name in mc.names:
            if name in seen:
                raise ServiceConfigError(
                    join(join("methodConfig", i), "name"),
                    f"duplicate name {{service: {name[0]!r}, method: {name[1]!r}}} "
                    f"(already in methodConfig[{seen[name]}])")
            seen[name] = i


__all__ = ["HealthCheckConfig", "LbChoice", "ServiceConfig", "parse_duration",
           "parse_lb_config_list", "parse_service_config", "get_bool"]
