"""What the two subsetting policies share (no grpc, no threads, no I/O).

A subsetting policy keeps only ``subsetSize`` of the resolver's endpoints and hands them to
its ``childPolicy``, which balances among them. It works through
:meth:`~lbclient.balancer.policy.Policy.select_endpoints`: the balancer asks it which
endpoints to keep after every resolver update (and when the policy is created), and only
those get a connection, health checking, outlier tracking and a place in pickers; the
rest get nothing at all. Everything else (pickers, weights, the panic share, close) is the
child's.

* ``random_subsetting`` (:mod:`.subsetting_random`, gRFC A68): rendezvous hashing with a
  per-channel random seed; no coordination between clients; few subset changes when
  endpoints come and go.
* ``deterministic_subsetting`` (:mod:`.subsetting_deterministic`, Google SRE book ch. 20,
  Finagle's deterministic aperture): each client of a fleet is told its ``clientIndex``;
  the subsets of the fleet cover every backend equally.

The subset is handed on in the subset's own order (hash order, or the round's shuffle),
not the resolver's, as A68 does: a ``pick_first`` child then prefers a different endpoint
in each client. The child's own ``select_endpoints`` is asked too (a subsetting policy can
wrap another wrapper).

:func:`with_client_index` fills ``clientIndex``/``clientCount`` into every
``deterministic_subsetting`` entry of a service config: the explicit API for giving each
client of a fleet its index (a pod ordinal, a shard number) without environment variables.

Threading: the balancer calls these hooks one at a time with its lock held; the state
here (the last subset, hash caches) is touched only there.
"""

from __future__ import annotations

import copy
import json
import operator
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from .._validate import get_int, join
from ..balancer.picker import Candidate, Picker
from ..balancer.policy import LbChoice, Policy, PolicyContext, parse_lb_config_list
from ..endpoint import Endpoint
from ..errors import ServiceConfigError

UINT32_MAX = 2**32 - 1       # A68: subset_size is a uint32
_ADDRESS = operator.attrgetter("address")
DETERMINISTIC = "deterministic_subsetting"


def parse_subset_size(obj: Mapping[str, Any], path: str) -> int:
    """``subsetSize``: required, an integer >= 1 (A68: "required and must be greater
    than 0")."""
    if obj.get("subsetSize") is None:
        raise ServiceConfigError(join(path, "subsetSize"),
                                 "is required: how many endpoints each client connects to "
                                 "(an integer >= 1)")
    return get_int(obj, "subsetSize", path, 0, minimum=1, maximum=UINT32_MAX)


def parse_child(obj: Mapping[str, Any], path: str) -> LbChoice:
    """``childPolicy``: required (A68), a ``loadBalancingConfig``-style list."""
    if obj.get("childPolicy") is None:
        raise ServiceConfigError(join(path, "childPolicy"),
                                 'is required: the policy that balances among the subset, '
                                 'e.g. [{"round_robin": {}}]')
    return parse_lb_config_list(obj["childPolicy"], join(path, "childPolicy"))


def unique(endpoints: Sequence[Endpoint]) -> list[Endpoint]:
    """The endpoints with repeated addresses dropped (the first one is kept)."""
    if len(set(map(_ADDRESS, endpoints))) == len(endpoints):
        return list(endpoints)
    seen: set[str] = set()
    out = []
    for e in endpoints:
        if e.address not in seen:
            seen.add(e.address)
            out.append(e)
    return out


class SubsettingPolicy(Policy):
    """Keeps the subset :meth:`choose` returns and delegates the rest to the child.

    ``subset`` is the addresses of the last selection, in subset order (tests and
    ``lbclient simulate`` read it)."""

    def __init__(self, config: Any, ctx: PolicyContext) -> None:
        super().__init__(config, ctx)
        self.child = ctx.create_child(config.child.spec, config.child.config)
        self.subset: tuple[str, ...] = ()

    @abstractmethod
    def choose(self, endpoints: list[Endpoint]) -> list[Endpoint]:
        """The subset of ``endpoints`` (unique addresses, the resolver's order), in the
        order to hand it on. Pure apart from caches: the same input gives the same
        subset."""

    def select_endpoints(self, endpoints: Sequence[Endpoint]) -> Sequence[Endpoint]:
        chosen = self.choose(unique(endpoints))
        self.subset = tuple(e.address for e in chosen)
        return self.child.select_endpoints(chosen)

    def build_picker(self, candidates: Sequence[Candidate]) -> Picker:
        return self.child.build_picker(candidates)

    def endpoint_weight(self, candidate: Candidate) -> float:
        return self.child.endpoint_weight(candidate)

    def endpoints_changed(self, endpoints: Sequence[Endpoint]) -> None:
        self.child.endpoints_changed(endpoints)

    def close(self) -> None:
        self.child.close()


def with_client_index(service_config: Mapping[str, Any] | str, client_index: int,
                      client_count: int | None = None) -> dict[str, Any]:
    """A copy of ``service_config`` (a dict or JSON text) in which every
    ``deterministic_subsetting`` entry, at any depth (inside wrappers' ``childPolicy``,
    group children, ...), gets ``clientIndex`` and, when given, ``clientCount``, unless
    the entry already sets them. The input is not changed.

    This is how a fleet member tells the policy who it is: read the index from wherever
    your deployment keeps it (a StatefulSet ordinal, a shard id) and pass it here, e.g.
    ``lbclient.insecure_channel(target, service_config=with_client_index(cfg, 3, 100))``.
    """
    if isinstance(client_index, bool) or not isinstance(client_index, int) or client_index < 0:
        raise ValueError(f"client_index must be an integer >= 0, got {client_index!r}")
    if client_count is not None and (isinstance(client_count, bool)
                                     or not isinstance(client_count, int) or client_count < 1):
        raise ValueError(f"client_count must be an integer >= 1, got {client_count!r}")
    raw: Any = json.loads(service_config) if isinstance(service_config, str) else service_config
    if not isinstance(raw, Mapping):
        raise ValueError("service_config must be a JSON object")
    out = copy.deepcopy(dict(raw))
    _fill(out, client_index, client_count)
    return out


def _fill(node: Any, index: int, count: int | None) -> None:
    if isinstance(node, dict):
        for key, value in list(node.items()):
            if key == DETERMINISTIC and (value is None or isinstance(value, dict)):
                if value is None:        # {"deterministic_subsetting": null} is {}
                    value = node[key] = {}
                value.setdefault("clientIndex", index)
                if count is not None:
                    value.setdefault("clientCount", count)
            _fill(value, index, count)
    elif isinstance(node, list):
        for item in node:
            _fill(item, index, count)
