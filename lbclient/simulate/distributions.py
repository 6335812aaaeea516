"""Service-time and duration distributions for the simulator (stdlib only).

JSON forms (every time in seconds: a number, or a duration string such as ``"1.5s"``)::

    0.05  or  "0.05s"                                     # a fixed value
    {"type": "fixed", "value": 0.05}
    {"type": "uniform", "min": 1, "max": 20}
    {"type": "exponential", "mean": 0.1}
    {"type": "lognormal", "median": 0.05, "sigma": 0.5}   # exp(N(ln median, sigma))
    {"type": "bimodal", "fast": 1, "slow": 10, "slowFraction": 0.5}
                                  # fast/slow: any distribution; slowFraction in [0, 1]

Every distribution is an immutable value with ``sample(rng)`` and ``mean``; samples are
never negative. Bad JSON raises :class:`~lbclient.errors.ServiceConfigError` naming the
JSON path and the rule.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Protocol

from .._validate import check_number, expect_object, join, parse_duration, reject_unknown
from ..errors import ServiceConfigError

KINDS = ("fixed", "uniform", "exponential", "lognormal", "bimodal")


class Distribution(Protocol):
    @property
    def mean(self) -> float: ...

    def sample(self, rng: random.Random) -> float: ...


@dataclass(frozen=True)
class Fixed:
    value: float

    @property
    def mean(self) -> float:
        return self.value

    def sample(self, rng: random.Random) -> float:
        return self.value


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2.0

    def sample(self, rng: random.Random) -> float:
        return self.low + (self.high - self.low) * rng.random()


@dataclass(frozen=True)
class Exponential:
    mean_value: float

    @property
    def mean(self) -> float:
        return self.mean_value

    def sample(self, rng: random.Random) -> float:
        return rng.expovariate(1.0 / self.mean_value) if self.mean_value > 0 else 0.0


@dataclass(frozen=True)
class LogNormal:
    median: float
    sigma: float

    @property
    def mean(self) -> float:
        return self.median * math.exp(self.sigma ** 2 / 2.0)

    def sample(self, rng: random.Random) -> float:
        if self.median <= 0:
            return 0.0
        return rng.lognormvariate(math.log(self.median), self.sigma)


@dataclass(frozen=True)
class Bimodal:
    fast: Distribution
    slow: Distribution
    slow_fraction: float

    @property
    def mean(self) -> float:
        return (1.0 - self.slow_fraction) * self.fast.mean + self.slow_fraction * self.slow.mean

    def sample(self, rng: random.Random) -> float:
        return (self.slow if rng.random() < self.slow_fraction else self.fast).sample(rng)


def seconds(value: Any, path: str) -> float:
    """A time in seconds: a non-negative number or a duration string (``"1.5s"``)."""
    return parse_duration(value, path)


def _field(obj: Any, key: str, path: str) -> float:
    if obj.get(key) is None:
        raise ServiceConfigError(join(path, key), "is required (seconds)")
    return seconds(obj[key], join(path, key))


def parse_distribution(value: Any, path: str) -> Distribution:
    """A distribution from its JSON form (see the module docstring)."""
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        return Fixed(seconds(value, path))
    obj = expect_object(value, path)
    kind = obj.get("type")
    if kind not in KINDS:
        raise ServiceConfigError(join(path, "type"),
                                 f"must be one of {', '.join(KINDS)}; got {kind!r}")
    if kind == "fixed":
        reject_unknown(obj, path, {"type", "value"})
        return Fixed(_field(obj, "value", path))
    if kind == "uniform":
        reject_unknown(obj, path, {"type", "min", "max"})
        low, high = _field(obj, "min", path), _field(obj, "max", path)
        if low > high:
            raise ServiceConfigError(join(path, "min"), f"must not exceed max ({low} > {high})")
        return Uniform(low, high)
    if kind == "exponential":
        reject_unknown(obj, path, {"type", "mean"})
        return Exponential(_field(obj, "mean", path))
    if kind == "lognormal":
        reject_unknown(obj, path, {"type", "median", "sigma"})
        sigma = check_number(obj.get("sigma", 0.5), join(path, "sigma"), minimum=0.0)
        return LogNormal(_field(obj, "median", path), sigma)
    reject_unknown(obj, path, {"type", "fast", "slow", "slowFraction"})
    for key in ("fast", "slow"):
        if obj.get(key) is None:
            raise ServiceConfigError(join(path, key), "is required (a distribution)")
    fraction = check_number(obj.get("slowFraction", 0.5), join(path, "slowFraction"),
                            minimum=0.0, maximum=1.0)
    return Bimodal(parse_distribution(obj["fast"], join(path, "fast")),
                   parse_distribution(obj["slow"], join(path, "slow")), fraction)
