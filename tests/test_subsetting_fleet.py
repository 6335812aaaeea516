"""Connections per backend across a fleet of clients, from the policies' own selection
functions: deterministic subsetting spreads them as evenly as whole connections allow,
random subsetting (A68) does not. The figures are printed (``pytest -s``) and recorded as
test properties.

100 clients x 10 over 300 backends is 1,000 connections, 3.33 per backend. Whole
connections cannot do better than 4 on the busiest backend, so the best possible
max/mean there is 4 / 3.33 = 1.2 (a bound of 1.1 is out of reach for any scheme);
deterministic subsetting reaches it exactly. Random subsetting's max/mean is ~2.7."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest

from lbclient.policies.subsetting_deterministic import deterministic_subset
from lbclient.policies.subsetting_random import rendezvous_subset

Select = Callable[[list[str], int], list[str]]


def backends(n: int) -> list[str]:
    return [f"10.1.{i // 250}.{i % 250}:8080" for i in range(n)]


def connections(n: int, clients: int, select: Select) -> list[int]:
    addresses = backends(n)
    count = Counter({a: 0 for a in addresses})
    for i in range(clients):
        count.update(select(addresses, i))
    return list(count.values())


def max_over_mean(values: list[int]) -> float:
    return max(values) / (sum(values) / len(values))


def best_possible(n: int, clients: int, size: int) -> float:
    total = clients * min(size, n)
    return -(-total // n) / (total / n)


FLEETS = [
    # (clients, subset size, backends)
    (100, 10, 300), (100, 10, 250), (100, 12, 300), (100, 10, 305), (100, 10, 1000),
    (400, 20, 300), (30, 5, 100), (7, 3, 10),
]


@pytest.mark.parametrize("clients, size, n", FLEETS)
def test_deterministic_is_as_even_as_whole_connections_allow(
        clients: int, size: int, n: int, record_property: Callable[[str, object], None],
        ) -> None:
    det = connections(n, clients, lambda a, i: deterministic_subset(a, i, size))
    ratio = max_over_mean(det)
    record_property("deterministic_max_over_mean", round(ratio, 3))
    assert sum(det) == clients * size
    assert max(det) - min(det) <= 1
    assert ratio == pytest.approx(best_possible(n, clients, size))
    if best_possible(n, clients, size) <= 1.1:
        assert ratio <= 1.1


def test_100_clients_subset_10_over_300_backends(
        record_property: Callable[[str, object], None]) -> None:
    det = connections(300, 100, lambda a, i: deterministic_subset(a, i, 10))
    rng = random.Random(2024)
    rand_ratios, rand_max, rand_unused = [], [], []
    for _ in range(5):                       # five random fleets (each client its own seed)
        seeds = [rng.getrandbits(64) for _ in range(100)]
        got = connections(300, 100, lambda a, i, s=seeds: rendezvous_subset(a, 10, s[i]))
        assert sum(got) == 1000
        rand_ratios.append(max_over_mean(got))
        rand_max.append(max(got))
        rand_unused.append(sum(1 for v in got if v == 0))
    full_mesh = [100] * 300                  # round_robin: every client to every backend
    det_ratio, rand_mean = max_over_mean(det), sum(rand_ratios) / len(rand_ratios)
    print(f"\nconnections per backend, 100 clients x subset 10 over 300 backends "
          f"(mean 3.33): full mesh max/mean {max_over_mean(full_mesh):.2f} (100 each); "
          f"deterministic max {max(det)} min {min(det)} max/mean {det_ratio:.2f}; "
          f"random max {rand_max} max/mean {[round(r, 2) for r in rand_ratios]} "
          f"(mean {rand_mean:.2f}), backends with no client {rand_unused}")
    record_property("deterministic_max_over_mean", round(det_ratio, 3))
    record_property("random_max_over_mean", round(rand_mean, 3))
    assert (max(det), min(det)) == (4, 3)
    assert det_ratio == pytest.approx(1.2)   # = the best possible, see the module docstring
    assert min(rand_ratios) >= 2.0           # random is far less even ...
    assert sum(rand_unused) > 0              # ... and leaves some backends with no client
