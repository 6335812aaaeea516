"""Many clients against one set of simulated backends (``"clients": K``; stdlib only).

* :func:`client_configs`: each client's own service config. A variant's config is
  shared by the fleet, except that every ``deterministic_subsetting`` entry that does not
  set them gets ``clientIndex = i`` and ``clientCount = K`` for client ``i``
  (:func:`lbclient.policies.subsetting.with_client_index`). An entry that sets
  ``clientIndex`` itself keeps it in every client (the whole fleet then has one subset,
  which is what a fleet so configured would do).
* :class:`BatchedTimers`: one client's connections and health checkers schedule through
  it; the callbacks due at the same virtual time run in one loop event inside that
  client's ``Balancer.batch()``, so a client connecting to 300 backends rebuilds its
  picker once, not 600 times (the single-client simulation keeps one event per change).
* :class:`FleetFigures`: connections and load per backend across the fleet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from ..config import ServiceConfig
from ..health.options import BalancingOptions
from ..policies.subsetting import with_client_index
from .clock import EventLoop, Timer

_NO_ARG: Any = object()


def client_configs(raw: Mapping[str, Any], clients: int,
                   parse: Callable[[Mapping[str, Any]], tuple[ServiceConfig, BalancingOptions]]
                   ) -> Iterator[tuple[ServiceConfig, BalancingOptions]]:
    """Client ``i``'s parsed config for ``i`` in ``0 … clients-1`` (see the module
    docstring); ``parse`` is the scenario's variant parser."""
    for i in range(clients):
        yield parse(with_client_index(raw, i, clients))


class BatchedTimers:
    """The loop's ``call_later``/``call_soon``/``call_at`` for one client: timers due at
    the same time are grouped into one loop event that runs them, in the order they
    were set, inside ``batch()``. A callback that schedules for "now" starts another
    group (a later loop event at the same time), as on the loop itself."""

    def __init__(self, loop: EventLoop,
                 batch: Callable[[], AbstractContextManager[None]] = nullcontext) -> None:
        self._loop = loop
        self._batch = batch
        self._due: dict[float, list[Timer]] = {}

    def bind(self, batch: Callable[[], AbstractContextManager[None]]) -> None:
        """Run the groups inside ``batch()`` (the client's ``Balancer.batch``, known
        only once the balancer exists)."""
        self._batch = batch

    @property
    def now(self) -> float:
        return self._loop.now

    def __call__(self) -> float:
        return self._loop.now

    def call_at(self, when: float, fn: Callable[..., None], arg: Any = _NO_ARG) -> Timer:
        when = max(when, self._loop.now)
        timer = Timer(when, fn, arg)
        group = self._due.get(when)
        if group is None:
            group = self._due[when] = []
            self._loop.call_at(when, self._run, when)
        group.append(timer)
        return timer

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        return self.call_at(self._loop.now + max(delay, 0.0), fn)

    def call_soon(self, fn: Callable[[], None]) -> Timer:
        return self.call_at(self._loop.now, fn)

    def _run(self, when: float) -> None:
        group = self._due.pop(when, [])
        with self._batch():
            for timer in group:
                if timer.cancelled:
                    continue
                if timer.arg is _NO_ARG:
                    timer.fn()
                else:
                    timer.fn(timer.arg)


@dataclass(frozen=True)
class FleetFigures:
    """Per backend across the ``clients``: ``connections`` (clients holding a connection
    to it at the end of the run), ``health_checks`` (health checkers running on it) and
    ``requests`` (calls placed on it); each summarised as max/mean over every backend
    (idle ones included; 1.0 is perfectly even). ``unused``: backends no client connects
    to."""

    clients: int
    connections_total: int
    connections_max: int
    connections_min: int
    connections_mean: float
    connections_max_over_mean: float | None
    health_checks_total: int
    requests_max: int
    requests_mean: float
    requests_max_over_mean: float | None
    unused: int


def _ratio(values: Sequence[int]) -> float | None:
    mean = sum(values) / len(values) if values else 0.0
    return max(values) / mean if mean > 0 else None


def fleet_figures(clients: int, connections: Sequence[int], health: Sequence[int],
                  requests: Sequence[int]) -> FleetFigures:
    n = max(len(connections), 1)
    return FleetFigures(
        clients=clients, connections_total=sum(connections),
        connections_max=max(connections, default=0),
        connections_min=min(connections, default=0),
        connections_mean=sum(connections) / n,
        connections_max_over_mean=_ratio(connections),
        health_checks_total=sum(health),
        requests_max=max(requests, default=0), requests_mean=sum(requests) / n,
        requests_max_over_mean=_ratio(requests),
        unused=sum(1 for c in connections if c == 0))
