"""Pytest fixtures for fake backends.

Enable with ``pytest_plugins = ["lbclient.testing.pytest_plugin"]`` in a conftest.py.

* ``fleet_factory(n=3, **backend_kwargs) -> Fleet`` starts a fleet; every fleet it made is
  stopped at teardown.
* ``fleet``: a fleet of 3 running backends, stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lbclient.testing._fleet import Fleet

FleetFactory = Callable[..., Fleet]


@pytest.fixture
def fleet_factory() -> Iterator[FleetFactory]:
    """A callable ``(n=3, **kwargs) -> Fleet``; all its fleets are stopped at teardown."""
    fleets: list[Fleet] = []

    def make(n: int = 3, **backend_kwargs: Any) -> Fleet:
        fleet = Fleet(n, **backend_kwargs)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()


@pytest.fixture
def fleet(fleet_factory: FleetFactory) -> Fleet:
    """Three running backends."""
    return fleet_factory(3)
