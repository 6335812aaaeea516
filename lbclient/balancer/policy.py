"""The policy contract and registry (no grpc, no threads, no I/O).

A policy module provides ``NAME``, a frozen ``Config``, ``parse_config(raw, path)`` (fills
defaults, rejects bad values with the JSON path and the rule) and a :class:`Policy`
subclass, and registers a :class:`PolicySpec`. The balancer creates one policy object per
channel and calls ``build_picker`` every time the eligible endpoints change; state that
must survive picker rebuilds lives on the policy object.
"""

from __future__ import annotations

import json
import random
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._validate import expect_list, expect_object, join
from ..endpoint import Endpoint
from ..errors import ServiceConfigError
from .picker import Candidate, Picker


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """Timers, backed by a thread (sync channel) or the event loop (asyncio channel).
    Callbacks run on the scheduler's thread/loop and must not block."""

    def call_later(self, delay: float, fn: Callable[[], None]) -> Cancellable: ...


@dataclass
class PolicyContext:
    """What a policy may use besides its config. Time and randomness are arguments so
    tests can drive policies without sleeping.

    ``request_rebuild()`` asks the balancer for a fresh ``build_picker`` call (e.g. when
    weights learnt from load reports change). ``create_child(lb_config_list, path)``
    builds a child policy from a ``loadBalancingConfig``-style list (wrapper policies).
    """

    clock: Callable[[], float]
    rng: random.Random
    scheduler: Scheduler | None = None
    request_rebuild: Callable[[], None] = lambda: None
    options: dict[str, Any] = field(default_factory=dict)

    def create_child(self, spec: PolicySpec, config: Any) -> Policy:
        return spec.create(config, self)


class Policy(ABC):
    """A load-balancing algorithm bound to one channel."""

    def __init__(self, config: Any, ctx: PolicyContext) -> None:
        self.config = config
        self.ctx = ctx

    @abstractmethod
    def build_picker(self, candidates: Sequence[Candidate]) -> Picker:
        """A new immutable picker over ``candidates`` (never empty; every one eligible).
        Called with the balancer's lock held: must be quick and must not call back into
        the balancer."""

    def endpoint_weight(self, candidate: Candidate) -> float:
        """The weight this policy wants for ``candidate`` (before slow start)."""
        return candidate.weight

    def endpoints_changed(self, endpoints: Sequence[Endpoint]) -> None:  # noqa: B027
        """Optional hook: the resolver's whole endpoint list (eligible or not), called
        with the balancer's lock held before the ``build_picker`` that follows a resolver
        update, and once after the policy is created. Group policies use it to know each
        group's size, so they can compute its healthy share from the candidates."""

    def select_endpoints(self, endpoints: Sequence[Endpoint]) -> Sequence[Endpoint]:
        """Which of the resolver's endpoints the balancer keeps: only those get a
        connection, health checking and outlier tracking (subsetting policies return a
        subset; called with the balancer's lock held, after every resolver update and
        when the policy is created). Default: all of them; a wrapper policy (one with a
        ``child`` policy) asks its child."""
        child = getattr(self, "child", None)
        if isinstance(child, Policy):
            return child.select_endpoints(endpoints)
        return endpoints

    def available_share(self, fit: Sequence[Endpoint], connected: Sequence[Endpoint]) -> float:
        """The share of capacity (0..1) this policy can serve from the ``fit`` endpoints
        (READY, healthy, not ejected) out of the ``connected`` ones. The balancer compares
        it with the panic threshold. Default: ``len(fit) / len(connected)``; a wrapper
        policy (one with a ``child`` policy) asks its child; group policies answer with
        their own arithmetic (``priority``: Envoy's normalized total health, so a
        healthy standby level keeps the channel out of panic)."""
        child = getattr(self, "child", None)
        if isinstance(child, Policy):
            return child.available_share(fit, connected)
        return len(fit) / len(connected) if connected else 0.0

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release timers; called once when the channel closes or the policy changes."""


@dataclass(frozen=True)
class PolicySpec:
    """How to parse and build one named policy."""

    name: str
    parse_config: Callable[[Any, str], Any]
    create: Callable[[Any, PolicyContext], Policy]
    weight_aware: bool = False


_registry: dict[str, PolicySpec] = {}
_lock = threading.Lock()

def register_policy(spec: PolicySpec, *aliases: str) -> None:
    """Register a policy under its name (and aliases); a later registration replaces an
    earlier one, so users can override built-ins."""
    with _lock:
        for name in (spec.name, *aliases):
            _registry[name] = spec


def get_policy(name: str) -> PolicySpec | None:
    """The registered policy of that name (the built-ins register themselves when
    ``lbclient.policies`` is imported, which ``import lbclient`` does)."""
    return _registry.get(name)


def registered_policies() -> list[str]:
    return sorted(_registry)


@dataclass(frozen=True)
class LbChoice:
    """The policy chosen from a ``loadBalancingConfig`` list and its parsed config."""

    spec: PolicySpec
    config: Any

    @property
    def name(self) -> str:
        return self.spec.name

    def create(self, ctx: PolicyContext) -> Policy:
        return self.spec.create(self.config, ctx)


# Policies nest (a wrapper's childPolicy, a group's children); lists nested deeper than
# this are refused (Python's recursion limit would be reached a few hundred levels down).
MAX_NESTING = 32


def parse_lb_config_list(value: Any, path: str) -> LbChoice:
    """Parse a ``loadBalancingConfig``-style list (also a wrapper policy's
    ``childPolicy``): the first known policy wins, unknown names are skipped (gRPC's
    rule), a known policy with a bad config is an error, none known is an error."""
    if path.count("[") >= MAX_NESTING:   # each level adds a list index to the path
        raise ServiceConfigError(path, f"policies nested more than {MAX_NESTING} levels deep")
    items = expect_list(value, path)
    names: list[str] = []
    for i, item in enumerate(items):
        entry = expect_object(item, join(path, i))
        if len(entry) != 1:
            raise ServiceConfigError(join(path, i), "each entry must have exactly one key, "
                                     f"the policy name; got {sorted(entry)}")
        ((name, cfg),) = entry.items()
        names.append(name)
        spec = get_policy(name)
        if spec is None:
            continue
        return LbChoice(spec, spec.parse_config(cfg if cfg is not None else {},
                                                join(join(path, i), name)))
    raise ServiceConfigError(path, f"no supported policy in {json.dumps(names)}")
