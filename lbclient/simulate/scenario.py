"""Scenario JSON -> frozen, validated values (see docs/simulate.md for the schema).

Every error is a :class:`~lbclient.errors.ServiceConfigError` (a ``ValueError``) naming
the JSON path and the rule, e.g. ``backends[2].faults[0].end: must not be before start``.
The service config part is parsed by :func:`lbclient.config.parse_service_config`
(``"lbclient"`` block included), so a simulated variant accepts exactly what a channel
accepts; errors in it are prefixed
with the variant's path (``policies[1].loadBalancingConfig[0]...``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._validate import (
    expect_list,
    expect_object,
    get_bool,
    get_int,
    get_number,
    get_object,
    get_str,
    join,
    reject_unknown,
)
from ..balancer.policy import LbChoice, PolicySpec
from ..config import ServiceConfig, parse_service_config
from ..errors import ServiceConfigError
from ..health.codes import STATUS_CODES
from ..health.options import BalancingOptions
from . import modulo_hash
from .distributions import Distribution, Fixed, parse_distribution, seconds
from .fleet import client_configs

# Policies known only to the simulator (first entry of a variant's loadBalancingConfig).
SIM_POLICIES: dict[str, PolicySpec] = {modulo_hash.NAME: modulo_hash.SPEC}
FAULT_KINDS = ("down", "errors", "notServing", "slow")
ZERO = Fixed(0.0)


@dataclass(frozen=True)
class Fault:
    """A window ``[start, end)`` of misbehaviour (``end`` None: until the run ends).

    ``down``: the connection fails (TRANSIENT_FAILURE), calls in flight fail UNAVAILABLE;
    ``errors``: a ``rate`` fraction of calls fail at once with ``code``;
    ``notServing``: health checks answer NOT_SERVING; ``slow``: service x ``factor``."""

    kind: str
    start: float
    end: float | None
    rate: float = 1.0
    code: str = "UNAVAILABLE"
    factor: float = 1.0


@dataclass(frozen=True)
class BackendSpec:
    name: str
    weight: int = 1
    capacity: int | None = None            # concurrent calls served; None: unlimited
    service_time: Distribution = ZERO      # drawn per call, added to the call's duration
    slowdown: float = 1.0                  # multiplies the call's own duration
    connect_time: float = 0.0
    health_service: bool = True            # False: the health service is UNIMPLEMENTED
    attributes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    faults: tuple[Fault, ...] = ()


@dataclass(frozen=True)
class KeySpec:
    """Request keys sent in a metadata ``header``: ``count`` distinct values
    ``prefix + i``, drawn uniformly (``random``) or in turn (``sequential``)."""

    header: str
    count: int = 1000
    order: str = "random"
    prefix: str = "client-"


@dataclass(frozen=True)
class StreamSpec:
    rate: float
    count: int | None = None
    until: float | None = None
    start: float = 0.0
    arrivals: str = "poisson"
    duration: Distribution = ZERO
    deadline: float | None = None
    method: str = "/sim.Service/Call"
    keys: KeySpec | None = None

    def horizon(self) -> float:
        """When the last arrival is expected (for default sampling)."""
        end = self.until if self.until is not None else float("inf")
        if self.count is not None:
            end = min(end, self.start + self.count / self.rate)
        return end + self.duration.mean


@dataclass(frozen=True)
class Variant:
    """One policy setup to simulate: a label and a whole parsed service config.
    ``client_configs``: with several clients, each one's own parsed config
    (``deterministic_subsetting`` entries get the client's index; see
    :mod:`lbclient.simulate.fleet`); empty with one client (``config`` is its)."""

    label: str
    config: ServiceConfig
    options: BalancingOptions
    raw: Mapping[str, Any]
    client_configs: tuple[tuple[ServiceConfig, BalancingOptions], ...] = ()


@dataclass(frozen=True)
class Scenario:
    name: str
    backends: tuple[BackendSpec, ...]
    streams: tuple[StreamSpec, ...]
    variants: tuple[Variant, ...]
    seed: int = 1
    until: float | None = None
    sample_interval: float | None = None
    description: str = ""
    service_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    clients: int = 1

    def with_policies(self, names: list[str]) -> Scenario:
        """Keep only the variants whose label is in ``names`` (in that order); a name that
        is no label becomes a variant of its own: that policy with ``{}`` config on top of
        the scenario's ``serviceConfig``."""
        by_label = {v.label: v for v in self.variants}
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ServiceConfigError(f"--policy {name}", "named twice")
        out = [by_label[n] if n in by_label else
               parse_variant({"label": n, "policy": {n: {}}}, self.service_config,
                             f"--policy {n}", clients=self.clients)
               for n in names]
        return dataclasses.replace(self, variants=tuple(out))


# ---------------------------------------------------------------------------- loading
def load_scenario(source: str | os.PathLike[str] | Mapping[str, Any]) -> Scenario:
    """A scenario from a JSON file path or an already decoded dict."""
    if isinstance(source, Mapping):
        return parse_scenario(source)
    with open(source, encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as exc:
            raise ServiceConfigError("<root>", f"invalid JSON: {exc}") from None
    scenario = parse_scenario(raw)
    if not scenario.name:
        name = os.path.splitext(os.path.basename(os.fspath(source)))[0]
        scenario = dataclasses.replace(scenario, name=name)
    return scenario


_TOP = {"name", "description", "seed", "until", "sampleInterval", "backends", "requests",
        "serviceConfig", "policies", "clients"}
MAX_CLIENTS = 10_000


def parse_scenario(raw: Any) -> Scenario:
    obj = expect_object(raw, "")
    reject_unknown(obj, "", _TOP)
    backends = _backends(obj.get("backends"), "backends")
    streams = _streams(obj.get("requests"), "requests")
    base = get_object(obj, "serviceConfig", "") or {}
    clients = get_int(obj, "clients", "", 1, minimum=1, maximum=MAX_CLIENTS)
    policies = obj.get("policies")
    variants: tuple[Variant, ...]
    if policies is None:
        variants = (parse_variant({}, base, "serviceConfig", clients=clients),)
    else:
        items = expect_list(policies, "policies")
        if not items:
            raise ServiceConfigError("policies", "must name at least one policy")
        variants = tuple(parse_variant(item, base, join("policies", i), clients=clients)
                         for i, item in enumerate(items))
    labels = [v.label for v in variants]
    for i, label in enumerate(labels):
        if labels.index(label) != i:
            raise ServiceConfigError(join("policies", i),
                                     f"duplicate label {label!r} (give each a \"label\")")
    until = obj.get("until")
    sample = obj.get("sampleInterval")
    return Scenario(
        name=get_str(obj, "name", "", "") or "",
        description=get_str(obj, "description", "", "") or "",
        backends=backends, streams=streams, variants=variants,
        seed=get_int(obj, "seed", "", 1),
        until=None if until is None else seconds(until, "until"),
        sample_interval=None if sample is None else _positive(sample, "sampleInterval"),
        service_config=dict(base), clients=clients,
    )


def _positive(value: Any, path: str) -> float:
    v = seconds(value, path)
    if v <= 0:
        raise ServiceConfigError(path, f"must be greater than 0, got {value!r}")
    return v


# ---------------------------------------------------------------------------- backends
_BACKEND = {"name", "weight", "capacity", "serviceTime", "slowdown", "connectTime",
            "healthService", "attributes", "faults", "replicas"}


def _backends(value: Any, path: str) -> tuple[BackendSpec, ...]:
    if value is None:
        raise ServiceConfigError(path, "is required: a list of backends")
    items = expect_list(value, path)
    out: list[BackendSpec] = []
    for i, item in enumerate(items):
        p = join(path, i)
        obj = expect_object(item, p)
        reject_unknown(obj, p, _BACKEND)
        replicas = get_int(obj, "replicas", p, 1, minimum=1, maximum=100_000)
        name = get_str(obj, "name", p, None)
        for r in range(replicas):
            index = len(out)
            if name is None:
                address = f"s{index + 1}:80"
            elif replicas == 1:
                address = name
            else:       # "small:80" x 2 -> "small-1:80", "small-2:80"
                host, sep, port = name.rpartition(":")
                address = f"{host}-{r + 1}:{port}" if sep else f"{name}-{r + 1}"
            out.append(_backend(obj, p, address))
    if not out:
        raise ServiceConfigError(path, "must list at least one backend")
    names = [b.name for b in out]
    for i, n in enumerate(names):
        if names.index(n) != i:
            raise ServiceConfigError(path, f"duplicate backend name {n!r}")
    return tuple(out)


def _backend(obj: Mapping[str, Any], p: str, name: str) -> BackendSpec:
    capacity = obj.get("capacity")
    attrs = get_object(obj, "attributes", p) or {}
    st = obj.get("serviceTime")
    return BackendSpec(
        name=name,
        weight=get_int(obj, "weight", p, 1, minimum=1),
        capacity=None if capacity is None else get_int(obj, "capacity", p, 1, minimum=1),
        service_time=ZERO if st is None else parse_distribution(st, join(p, "serviceTime")),
        slowdown=get_number(obj, "slowdown", p, 1.0, minimum=0.0, exclusive_minimum=True),
        connect_time=seconds(obj.get("connectTime", 0.0), join(p, "connectTime")),
        health_service=get_bool(obj, "healthService", p, True),
        attributes=dict(attrs),
        faults=tuple(_fault(f, join(join(p, "faults"), j))
                     for j, f in enumerate(expect_list(obj.get("faults") or [],
                                                       join(p, "faults")))),
    )


def _fault(value: Any, p: str) -> Fault:
    obj = expect_object(value, p)
    kind = obj.get("kind")
    if kind not in FAULT_KINDS:
        raise ServiceConfigError(join(p, "kind"),
                                 f"must be one of {', '.join(FAULT_KINDS)}; got {kind!r}")
    known = {"kind", "start", "end"} | {"errors": {"rate", "code"},
                                        "slow": {"factor"}}.get(kind, set())
    reject_unknown(obj, p, known)
    if obj.get("start") is None:
        raise ServiceConfigError(join(p, "start"), "is required (seconds)")
    start = seconds(obj["start"], join(p, "start"))
    end = None if obj.get("end") is None else seconds(obj["end"], join(p, "end"))
    if end is not None and end < start:
        raise ServiceConfigError(join(p, "end"), f"must not be before start ({end} < {start})")
    code = (get_str(obj, "code", p, "UNAVAILABLE") or "").upper()
    if code not in STATUS_CODES or code == "OK":
        raise ServiceConfigError(join(p, "code"), f"must be a non-OK status code name, "
                                 f"got {obj.get('code')!r}")
    return Fault(kind, start, end,
                 rate=get_number(obj, "rate", p, 1.0, minimum=0.0, maximum=1.0),
                 code=code,
                 factor=get_number(obj, "factor", p, 1.0, minimum=0.0, exclusive_minimum=True))


# ---------------------------------------------------------------------------- requests
_STREAM = {"rate", "count", "until", "start", "arrivals", "duration", "deadline", "method",
           "keys"}


def _streams(value: Any, path: str) -> tuple[StreamSpec, ...]:
    if value is None:
        raise ServiceConfigError(path, "is required: a request stream (or a list of them)")
    if isinstance(value, Mapping):
        return (_stream(value, path),)
    items = expect_list(value, path)
    if not items:
        raise ServiceConfigError(path, "must list at least one request stream")
    return tuple(_stream(item, join(path, i)) for i, item in enumerate(items))


def _stream(value: Any, p: str) -> StreamSpec:
    obj = expect_object(value, p)
    reject_unknown(obj, p, _STREAM)
    if obj.get("rate") is None:
        raise ServiceConfigError(join(p, "rate"), "is required (requests per second)")
    rate = get_number(obj, "rate", p, 1.0, minimum=0.0, exclusive_minimum=True)
    count = None if obj.get("count") is None else get_int(obj, "count", p, 0, minimum=0)
    until = None if obj.get("until") is None else seconds(obj["until"], join(p, "until"))
    if count is None and until is None:
        raise ServiceConfigError(p, 'needs "count" or "until" (when the stream stops)')
    arrivals = get_str(obj, "arrivals", p, "poisson")
    if arrivals not in ("poisson", "uniform"):
        raise ServiceConfigError(join(p, "arrivals"),
                                 f'must be "poisson" or "uniform", got {arrivals!r}')
    deadline = obj.get("deadline")
    method = get_str(obj, "method", p, "/sim.Service/Call") or "/sim.Service/Call"
    keys = get_object(obj, "keys", p)
    return StreamSpec(
        rate=rate, count=count, until=until,
        start=seconds(obj.get("start", 0.0), join(p, "start")),
        arrivals=arrivals,
        duration=ZERO if obj.get("duration") is None else parse_distribution(
            obj["duration"], join(p, "duration")),
        deadline=None if deadline is None else _positive(deadline, join(p, "deadline")),
        method=method,
        keys=None if keys is None else _keys(keys, join(p, "keys")),
    )


def _keys(obj: Mapping[str, Any], p: str) -> KeySpec:
    reject_unknown(obj, p, {"header", "count", "order", "prefix"})
    header = get_str(obj, "header", p, None)
    if not header:
        raise ServiceConfigError(join(p, "header"), "is required: the metadata header "
                                 "that carries the key")
    order = get_str(obj, "order", p, "random")
    if order not in ("random", "sequential"):
        raise ServiceConfigError(join(p, "order"),
                                 f'must be "random" or "sequential", got {order!r}')
    return KeySpec(header.lower(), get_int(obj, "count", p, 1000, minimum=1), order,
                   get_str(obj, "prefix", p, "client-") or "")


# ---------------------------------------------------------------------------- variants
def parse_variant(item: Any, base: Mapping[str, Any], path: str, *,
                  clients: int = 1) -> Variant:
    """A ``policies`` entry: a policy name, or ``{"label", "policy": {name: config},
    "serviceConfig": {...}}`` merged over the scenario's ``serviceConfig``. Each of the
    ``clients`` gets its own parsed config (``deterministic_subsetting``: its index and
    the count, where the entry does not set them), so an index that does not fit is an
    error here, not in the middle of a run."""
    if isinstance(item, str):
        item = {"policy": {item: {}}}
    obj = expect_object(item, path)
    reject_unknown(obj, path, {"label", "policy", "serviceConfig"})
    merged = dict(base)
    own = get_object(obj, "serviceConfig", path)
    if own is not None:
        merged.update(own)
    policy = get_object(obj, "policy", path)
    if policy is not None:
        if len(policy) != 1:
            raise ServiceConfigError(join(path, "policy"),
                                     "must have exactly one key, the policy name")
        merged["loadBalancingConfig"] = [dict(policy)]
    per_client = tuple(client_configs(merged, clients,
                                      lambda raw: parse_variant_config(raw, path)))
    config, options = per_client[0]
    label = get_str(obj, "label", path, None) or config.lb.name
    return Variant(label, config, options, merged, per_client if clients > 1 else ())


def parse_variant_config(raw: Mapping[str, Any], path: str
                         ) -> tuple[ServiceConfig, BalancingOptions]:
    """:func:`parse_service_config` (the ``"lbclient"`` block included), with the
    simulator's own policies (:data:`SIM_POLICIES`) allowed as the first
    ``loadBalancingConfig`` entry."""
    try:
        lbc = raw.get("loadBalancingConfig")
        local = _local_choice(lbc)
        if local is not None:
            rest = {k: v for k, v in raw.items() if k != "loadBalancingConfig"}
            config = dataclasses.replace(parse_service_config(rest), lb=local, raw=dict(raw))
        else:
            config = parse_service_config(dict(raw))
    except ServiceConfigError as exc:
        raise ServiceConfigError(join(path, exc.path) if exc.path else path,
                                 exc.reason) from None
    return config, config.options


def _local_choice(lbc: Any) -> LbChoice | None:
    if not isinstance(lbc, list) or not lbc or not isinstance(lbc[0], Mapping):
        return None
    if len(lbc[0]) != 1:
        return None
    ((name, cfg),) = lbc[0].items()
    spec = SIM_POLICIES.get(name)
    if spec is None:
        return None
    return LbChoice(spec, spec.parse_config(cfg if cfg is not None else {},
                                            f"loadBalancingConfig[0].{name}"))
