"""``outlier_detection`` (also ``outlier_detection_experimental``, grpcio's name): gRFC A50
passive outlier detection wrapping a ``childPolicy``, plus lbclient's consecutive-failure
ejection and configurable failure status codes.

Config (durations as ``"10s"``; A50 defaults)::

    {"outlier_detection": {
        "interval": "10s", "baseEjectionTime": "30s", "maxEjectionTime": "300s",
        "maxEjectionPercent": 10,
        "successRateEjection": {"stdevFactor": 1900, "enforcementPercentage": 100,
                                "minimumHosts": 5, "requestVolume": 100},
        "failurePercentageEjection": {"threshold": 85, "enforcementPercentage": 100,
                                      "minimumHosts": 5, "requestVolume": 50},
        "consecutiveFailures": 5,                      # lbclient: eject after 5 in a row
        "failureStatusCodes": ["UNAVAILABLE", ...],    # lbclient: what counts as failure
        "splitExternalLocalOriginErrors": false,       # Envoy: local-origin kept apart
        "consecutiveLocalOriginFailure": 5,            # Envoy: ...and ejected after 5
        "childPolicy": [{"round_robin": {}}]}}

An algorithm runs only when its object is present (``{}`` takes its defaults); without any
of the three the policy only delegates (A50's no-op config). The policy counts call
outcomes through its picker's ``on_done`` (the child's callback still runs) and hands
ejection to the balancer, which owns eligibility, panic threshold and readmission.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._validate import (
    expect_object,
    get_bool,
    get_duration,
    get_int,
    get_object,
    join,
    reject_unknown,
)
from ..balancer.picker import CallOutcome, Candidate, Picker, PickInfo, PickResult
from ..balancer.policy import (
    LbChoice,
    Policy,
    PolicyContext,
    PolicySpec,
    parse_lb_config_list,
    register_policy,
)
from ..endpoint import Endpoint
from ..errors import ServiceConfigError
from ..health.codes import SERVER_FAILURE_CODES, parse_status_codes
from ..health.outlier import (
    HOST_OPTION,
    FailurePercentageEjection,
    OutlierConfig,
    OutlierDetector,
    OutlierHost,
    SuccessRateEjection,
)

NAME = "outlier_detection"
ALIAS = "outlier_detection_experimental"

_UINT32 = 2**32 - 1
_FIELDS = {"interval", "baseEjectionTime", "maxEjectionTime", "maxEjectionPercent",
           "successRateEjection", "failurePercentageEjection", "childPolicy",
           "consecutiveFailures", "failureStatusCodes", "splitExternalLocalOriginErrors",
           "consecutiveLocalOriginFailure"}


@dataclass(frozen=True)
class Config:
    outlier: OutlierConfig
    child: LbChoice


def _percent(obj: Any, key: str, path: str, default: int) -> int:
    # A50: "must have values less than or equal to 100".
    return get_int(obj, key, path, default, minimum=0, maximum=100)


def _uint(obj: Any, key: str, path: str, default: int) -> int:
    return get_int(obj, key, path, default, minimum=0, maximum=_UINT32)


def _success_rate(obj: Any, path: str) -> SuccessRateEjection:
    reject_unknown(obj, path, {"stdevFactor", "enforcementPercentage", "minimumHosts",
                               "requestVolume"})
    return SuccessRateEjection(
        stdev_factor=_uint(obj, "stdevFactor", path, 1900),
        enforcement_percentage=_percent(obj, "enforcementPercentage", path, 100),
        minimum_hosts=_uint(obj, "minimumHosts", path, 5),
        request_volume=_uint(obj, "requestVolume", path, 100))


def _failure_percentage(obj: Any, path: str) -> FailurePercentageEjection:
    reject_unknown(obj, path, {"threshold", "enforcementPercentage", "minimumHosts",
                               "requestVolume"})
    return FailurePercentageEjection(
        threshold=_percent(obj, "threshold", path, 85),
        enforcement_percentage=_percent(obj, "enforcementPercentage", path, 100),
        minimum_hosts=_uint(obj, "minimumHosts", path, 5),
        request_volume=_uint(obj, "requestVolume", path, 50))


def parse_config(raw: Any, path: str) -> Config:
    obj = expect_object(raw if raw is not None else {}, path)
    reject_unknown(obj, path, _FIELDS)
    # A50: durations "must have non-negative values".
    interval = get_duration(obj, "interval", path, 10.0)
    base = get_duration(obj, "baseEjectionTime", path, 30.0)
    assert interval is not None and base is not None
    # A50: "If not specified, the default value (300s) or the base_ejection_time value
    # is applied, whatever is larger."
    max_time = get_duration(obj, "maxEjectionTime", path, None)
    if max_time is None:
        max_time = max(300.0, base)
    sre = get_object(obj, "successRateEjection", path)
    fpe = get_object(obj, "failurePercentageEjection", path)
    consecutive = obj.get("consecutiveFailures")
    if consecutive is not None:
        consecutive = get_int(obj, "consecutiveFailures", path, 0, minimum=1,
                              maximum=_UINT32)
    split = get_bool(obj, "splitExternalLocalOriginErrors", path, False)
    local_limit = get_int(obj, "consecutiveLocalOriginFailure", path, 5, minimum=1,
                          maximum=_UINT32)
    if obj.get("consecutiveLocalOriginFailure") is not None and not split:
        raise ServiceConfigError(join(path, "consecutiveLocalOriginFailure"),
                                 "needs splitExternalLocalOriginErrors: true")
    codes = SERVER_FAILURE_CODES
    if obj.get("failureStatusCodes") is not None:
        codes = parse_status_codes(obj["failureStatusCodes"], join(path, "failureStatusCodes"))
    if obj.get("childPolicy") is None:
        raise ServiceConfigError(join(path, "childPolicy"),
                                 'is required, e.g. [{"round_robin": {}}]')
    child = parse_lb_config_list(obj["childPolicy"], join(path, "childPolicy"))
    outlier = OutlierConfig(
        interval=interval, base_ejection_time=base, max_ejection_time=max_time,
        max_ejection_percent=_percent(obj, "maxEjectionPercent", path, 10),
        success_rate=_success_rate(sre, join(path, "successRateEjection"))
        if sre is not None else None,
        failure_percentage=_failure_percentage(fpe, join(path, "failurePercentageEjection"))
        if fpe is not None else None,
        consecutive_failures=consecutive, failure_codes=codes, split_local=split,
        consecutive_local_failures=local_limit if split else None)
    return Config(outlier, child)


class CountingPicker:
    """The child's picker, with every outcome counted for the picked address (A50's
    wrapped picker). The child's own ``on_done`` still runs, after the count. A plain
    child pick gets a result made once per candidate (no allocation per call)."""

    __slots__ = ("_child", "_detector", "_plain")

    def __init__(self, child: Picker, detector: OutlierDetector) -> None:
        self._child = child
        self._detector = detector
        self._plain: dict[Candidate, PickResult] = {}

    def pick(self, info: PickInfo) -> PickResult:
        result = self._child.pick(info)
        inner = result.on_done
        candidate = result.candidate
        if inner is None and not result.counted and not result.wants_metadata:
            plain = self._plain.get(candidate)
            if plain is None:
                plain = self._plain[candidate] = PickResult(
                    candidate, self._detector.recorder(candidate.address))
            return plain
        address = candidate.address
        detector = self._detector

        def on_done(outcome: CallOutcome) -> None:
            detector.record(address, outcome.code, outcome.local_origin)
            if inner is not None:
                inner(outcome)

        return PickResult(candidate, on_done, result.counted, result.wants_metadata)


class OutlierDetection(Policy):
    """Delegates picking to the child; counts outcomes into the channel's detector.

    Outside a balancer (no :class:`OutlierHost` in ``ctx.options``) it only delegates.
    """

    def __init__(self, config: Config, ctx: PolicyContext) -> None:
        super().__init__(config, ctx)
        self.child = ctx.create_child(config.child.spec, config.child.config)
        self._host: OutlierHost | None = ctx.options.get(HOST_OPTION)
        self.detector: OutlierDetector | None = None
        if self._host is not None:
            self.detector = self._host.attach_outlier_detection(config.outlier)

    def build_picker(self, candidates: Sequence[Candidate]) -> Picker:
        picker = self.child.build_picker(candidates)
        if self.detector is None or not self.config.outlier.counting:
            return picker  # A50: a no-op config does not count
        return CountingPicker(picker, self.detector)

    def endpoint_weight(self, candidate: Candidate) -> float:
        return self.child.endpoint_weight(candidate)

    def endpoints_changed(self, endpoints: Sequence[Endpoint]) -> None:
        self.child.endpoints_changed(endpoints)

    def close(self) -> None:
        self.child.close()
        if self._host is not None and self.detector is not None:
            self._host.detach_outlier_detection(self.detector)


SPEC = PolicySpec(NAME, parse_config, OutlierDetection)
register_policy(SPEC, ALIAS)
