"""random_subsetting (gRFC A68) and deterministic_subsetting: config parsing (table-driven,
errors name the JSON path), the pure selection functions (tables and properties: the
rendezvous churn bound, the SRE algorithm, equal spread), and the policies inside a real
Balancer (only the subset gets records, connections and health checkers; updates move
only what they must)."""

from __future__ import annotations

import collections
import json
import random
from collections.abc import Callable
from typing import Any

import pytest
from helpers import ConnectionStub, FactoryStub

from lbclient import ServiceConfigError
from lbclient.balancer.balancer import Balancer
from lbclient.balancer.picker import PickInfo
from lbclient.config import HealthCheckConfig, parse_service_config
from lbclient.connectivity import Connectivity
from lbclient.endpoint import Endpoint
from lbclient.health.tracker import HealthReport
from lbclient.policies._hashing import xxhash64
from lbclient.policies.subsetting import with_client_index
from lbclient.policies.subsetting_deterministic import (
    DeterministicSubsetting,
    deterministic_subset,
    effective_size,
    round_order,
)
from lbclient.policies.subsetting_random import RandomSubsetting, rendezvous_subset

LB = "loadBalancingConfig[0]"
RR = [{"round_robin": {}}]


def addrs(n: int, prefix: str = "10.0") -> list[str]:
    return [f"{prefix}.{i // 250}.{i % 250}:50051" for i in range(n)]


# ------------------------------------------------------------------------- config
def lb(entry: dict[str, Any]) -> Any:
    return parse_service_config({"loadBalancingConfig": [entry]}).lb


def test_random_subsetting_config_and_alias() -> None:
    for name in ("random_subsetting", "random_subsetting_experimental"):
        choice = lb({name: {"subsetSize": 5, "childPolicy": [
            {"unknown_policy": {}}, {"least_request": {"choiceCount": 3}}]}})
        assert choice.name == "random_subsetting"
        assert choice.config.subset_size == 5
        assert choice.config.child.name == "least_request"
        assert choice.config.child.config.choice_count == 3
    # proto3 JSON: a uint32 may be a decimal string
    assert lb({"random_subsetting": {"subsetSize": "7", "childPolicy": RR}}
              ).config.subset_size == 7


def test_deterministic_subsetting_config() -> None:
    cfg = lb({"deterministic_subsetting": {"clientIndex": 3, "clientCount": 10,
                                           "subsetSize": 4, "childPolicy": RR}}).config
    assert (cfg.client_index, cfg.client_count, cfg.subset_size, cfg.child.name) == (
        3, 10, 4, "round_robin")
    cfg = lb({"deterministic_subsetting": {"clientIndex": 0, "subsetSize": 1,
                                           "childPolicy": RR}}).config
    assert cfg.client_count is None


RS = f"{LB}.random_subsetting"
DS = f"{LB}.deterministic_subsetting"
BAD = [
    ({"random_subsetting": {"childPolicy": RR}}, f"{RS}.subsetSize", "is required"),
    ({"random_subsetting": {"subsetSize": 0, "childPolicy": RR}}, f"{RS}.subsetSize",
     "must be at least 1, got 0"),
    ({"random_subsetting": {"subsetSize": -3, "childPolicy": RR}}, f"{RS}.subsetSize",
     "at least 1"),
    ({"random_subsetting": {"subsetSize": 2.5, "childPolicy": RR}}, f"{RS}.subsetSize",
     "must be an integer"),
    ({"random_subsetting": {"subsetSize": 2**32, "childPolicy": RR}}, f"{RS}.subsetSize",
     "at most 4294967295"),
    ({"random_subsetting": {"subsetSize": 3}}, f"{RS}.childPolicy", "is required"),
    ({"random_subsetting": {"subsetSize": 3, "childPolicy": [{"nope": {}}]}},
     f"{RS}.childPolicy", 'no supported policy in ["nope"]'),
    ({"random_subsetting": {"subsetSize": 3, "childPolicy": {"round_robin": {}}}},
     f"{RS}.childPolicy", "must be a JSON array"),
    ({"random_subsetting": {"subsetSize": 3, "childPolicy": [
        {"least_request": {"choiceCount": 1}}]}},
     f"{RS}.childPolicy[0].least_request.choiceCount", "at least 2"),
    ({"random_subsetting": {"subsetSize": 3, "childPolicy": RR, "subset_size": 3}},
     f"{RS}.subset_size", "unknown field"),
    ({"random_subsetting_experimental": {"subsetSize": 0, "childPolicy": RR}},
     f"{LB}.random_subsetting_experimental.subsetSize", "at least 1"),
    ({"deterministic_subsetting": {"subsetSize": 3, "childPolicy": RR}},
     f"{DS}.clientIndex", "is required"),
    ({"deterministic_subsetting": {"clientIndex": -1, "subsetSize": 3, "childPolicy": RR}},
     f"{DS}.clientIndex", "at least 0"),
    ({"deterministic_subsetting": {"clientIndex": 10, "clientCount": 10, "subsetSize": 3,
                                   "childPolicy": RR}},
     f"{DS}.clientIndex", "must be less than clientCount (10), got 10"),
    ({"deterministic_subsetting": {"clientIndex": 0, "clientCount": 0, "subsetSize": 3,
                                   "childPolicy": RR}},
     f"{DS}.clientCount", "at least 1"),
    ({"deterministic_subsetting": {"clientIndex": 0, "subsetSize": 0, "childPolicy": RR}},
     f"{DS}.subsetSize", "at least 1"),
    ({"deterministic_subsetting": {"clientIndex": 0, "childPolicy": RR}},
     f"{DS}.subsetSize", "is required"),
    ({"deterministic_subsetting": {"clientIndex": 0, "subsetSize": 2}},
     f"{DS}.childPolicy", "is required"),
    ({"deterministic_subsetting": {"clientIndex": 0, "subsetSize": 2,
                                   "childPolicy": [{"nope": {}}, {"nope2": {}}]}},
     f"{DS}.childPolicy", "no supported policy"),
    ({"deterministic_subsetting": {"clientIndex": "x", "subsetSize": 2, "childPolicy": RR}},
     f"{DS}.clientIndex", "must be an integer"),
    ({"outlier_detection": {"childPolicy": [{"random_subsetting": {"childPolicy": RR}}]}},
     f"{LB}.outlier_detection.childPolicy[0].random_subsetting.subsetSize", "is required"),
]


@pytest.mark.parametrize("entry, path, words", BAD)
def test_bad_configs_name_the_path(entry: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ServiceConfigError) as exc:
        parse_service_config({"loadBalancingConfig": [entry]})
    assert isinstance(exc.value, ValueError)
    assert exc.value.path == path, str(exc.value)
    assert words in str(exc.value)


def test_with_client_index_fills_every_entry_and_keeps_the_input() -> None:
    cfg = {"loadBalancingConfig": [
        {"outlier_detection": {"childPolicy": [
            {"deterministic_subsetting": {"subsetSize": 2, "childPolicy": RR}}]}},
        {"deterministic_subsetting": {"clientIndex": 9, "subsetSize": 2, "childPolicy": RR}},
        {"deterministic_subsetting": None},
    ], "methodConfig": []}
    before = json.dumps(cfg, sort_keys=True)
    out = with_client_index(cfg, 4, 10)
    assert json.dumps(cfg, sort_keys=True) == before            # a copy, not in place
    inner = out["loadBalancingConfig"][0]["outlier_detection"]["childPolicy"][0]
    assert inner["deterministic_subsetting"]["clientIndex"] == 4
    assert inner["deterministic_subsetting"]["clientCount"] == 10
    explicit = out["loadBalancingConfig"][1]["deterministic_subsetting"]
    assert (explicit["clientIndex"], explicit["clientCount"]) == (9, 10)   # kept
    assert out["loadBalancingConfig"][2]["deterministic_subsetting"] == {
        "clientIndex": 4, "clientCount": 10}
    parsed = parse_service_config({"loadBalancingConfig": out["loadBalancingConfig"][:1]})
    assert parsed.lb.config.child.config.client_index == 4
    # JSON text works too, and without a count none is added
    assert "clientCount" not in with_client_index(json.dumps(cfg), 1)["loadBalancingConfig"][
        1]["deterministic_subsetting"]


@pytest.mark.parametrize("index, count", [(-1, None), (True, None), (1.0, None), (0, 0)])
def test_with_client_index_rejects_bad_values(index: Any, count: Any) -> None:
    with pytest.raises(ValueError):
        with_client_index({}, index, count)


# ------------------------------------------------------------------------- random: pure
def test_rendezvous_subset_is_the_lowest_hashes() -> None:
    a = addrs(50)
    got = rendezvous_subset(a, 5, seed=42)
    expected = sorted(a, key=lambda x: (xxhash64(x, 42), x))[:5]
    assert got == expected
    assert rendezvous_subset(reversed(a), 5, seed=42) == got       # input order: no matter
    assert rendezvous_subset(a + a, 5, seed=42) == got             # repeats: no matter
    assert rendezvous_subset(a, 5, seed=43) != got                 # the seed decides
    assert sorted(rendezvous_subset(a[:3], 5, seed=1)) == sorted(a[:3])   # fewer: all


CHURN = [
    # (endpoints before, subset size, removed, added)
    (300, 10, 0, 1), (300, 10, 1, 0), (300, 10, 0, 30), (300, 10, 30, 0),
    (300, 10, 5, 5), (100, 20, 50, 50), (40, 10, 30, 2), (20, 20, 0, 5), (12, 10, 2, 0),
]


@pytest.mark.parametrize("n, size, removed, added", CHURN)
def test_rendezvous_churn_is_exactly_what_hashing_must_move(
        n: int, size: int, removed: int, added: int) -> None:
    """With >= size endpoints before and after, the members replaced are exactly
    max(removed members, added endpoints that became members) <= max(removed, added);
    over many seeds, on average about what each change's share predicts."""
    rng = random.Random(n * 1000 + size)
    total_changed = 0
    # the averaged case needs many trials; the exact bound holds on every one
    trials = 200 if (n, size, removed, added) == (300, 10, 0, 1) else 40
    for trial in range(trials):
        seed = rng.getrandbits(64)
        before = addrs(n)
        gone = set(rng.sample(before, removed))
        after = [a for a in before if a not in gone] + addrs(added, prefix=f"10.{trial + 1}")
        old = set(rendezvous_subset(before, size, seed))
        new = set(rendezvous_subset(after, size, seed))
        changed = len(old - new)
        assert len(old) == len(new) == size
        assert changed == max(len(gone & old), len(new - set(before)))
        assert changed <= max(removed, added)
        total_changed += changed
    # one added endpoint of 301 enters a subset of 10 with probability 10/301
    if (n, size, removed, added) == (300, 10, 0, 1):
        assert total_changed / trials == pytest.approx(10 / 301, abs=0.03)


def test_rendezvous_churn_property_on_random_updates() -> None:
    rng = random.Random(7)
    universe = addrs(400)
    for _ in range(120):
        size = rng.randint(1, 30)
        before = rng.sample(universe, rng.randint(size, 120))
        rest = [a for a in universe if a not in set(before)]
        removed = set(rng.sample(before, rng.randint(0, len(before) - size)))
        added = rng.sample(rest, rng.randint(0, 40))
        after = [a for a in before if a not in removed] + added
        seed = rng.getrandbits(64)
        old = set(rendezvous_subset(before, size, seed))
        new = set(rendezvous_subset(after, size, seed))
        assert len(old - new) == max(len(removed & old), len(new & set(added)))
        # and a member is only ever replaced by an added endpoint or the next-lowest
        assert len(old - new) <= max(len(removed), len(added))


# ------------------------------------------------------------------------- deterministic: pure
def sre_reference(addresses: list[str], index: int, size: int) -> list[str]:
    """The SRE book's algorithm written out, for N a multiple of the subset size."""
    backends = sorted(addresses)
    subset_count = len(backends) // size
    rnd = index // subset_count
    shuffled = sorted(backends, key=lambda a: (xxhash64(a, rnd), a))
    sub = index % subset_count
    return shuffled[sub * size:(sub + 1) * size]


@pytest.mark.parametrize("n, size", [(300, 10), (30, 3), (12, 4), (8, 8), (100, 1)])
def test_deterministic_is_the_sre_algorithm_when_sizes_divide(n: int, size: int) -> None:
    a = addrs(n)
    per_round = n // size
    for index in [*range(2 * per_round + 1), 7 * per_round - 1, 7 * per_round, 12345]:
        assert deterministic_subset(a, index, size) == sre_reference(a, index, size), index


TABLE = [
    # (backends, subset size, client index, client count) -> properties checked below
    (5, 2, 0, None), (5, 2, 1, None), (5, 2, 2, None), (5, 2, 7, None),
    (7, 3, 2, None), (10, 7, 4, None), (10, 10, 3, None), (3, 10, 1, None),
    (300, 10, 29, None), (300, 10, 30, None), (301, 10, 30, None), (1, 1, 0, None),
    (300, 10, 0, 10), (300, 2, 5, 100), (10, 1, 9, 10),
]


@pytest.mark.parametrize("n, size, index, count", TABLE)
def test_deterministic_subset_table(n: int, size: int, index: int, count: int | None) -> None:
    a = addrs(n)
    got = deterministic_subset(a, index, size, count)
    want = effective_size(n, size, count)
    assert len(got) == len(set(got)) == want
    assert set(got) <= set(a)
    # pure: input order and repeats do not matter, the result is the same every time
    assert deterministic_subset(list(reversed(a)) + a[:2], index, size, count) == got
    assert deterministic_subset(a, index, size, count) == got


@pytest.mark.parametrize("index, size, count", [(-1, 3, None), (0, 0, None), (0, 3, 0)])
def test_deterministic_subset_rejects_bad_arguments(index: int, size: int,
                                                    count: int | None) -> None:
    with pytest.raises(ValueError):
        deterministic_subset(addrs(10), index, size, count)


def test_effective_size() -> None:
    assert effective_size(300, 10, None) == 10
    assert effective_size(300, 10, 100) == 10            # 100 x 10 >= 300: covered
    assert effective_size(300, 2, 100) == 3              # grown so every backend is used
    assert effective_size(300, 10, 10) == 30
    assert effective_size(5, 10, None) == 5
    assert effective_size(0, 3, 2) == 0


def test_deterministic_first_round_partitions_and_rounds_differ() -> None:
    a = addrs(30)
    first = [deterministic_subset(a, i, 5) for i in range(6)]
    assert sorted(x for s in first for x in s) == sorted(a)      # round 0: a partition
    second = [set(deterministic_subset(a, i, 5)) for i in range(6, 12)]
    assert [set(s) for s in first] != second                     # round 1: another shuffle
    assert round_order(a, 0) != round_order(a, 1)


def spread(n: int, size: int, clients: int, count: int | None = None
           ) -> collections.Counter[str]:
    a = addrs(n)
    c: collections.Counter[str] = collections.Counter({x: 0 for x in a})
    for i in range(clients):
        c.update(deterministic_subset(a, i, size, count))
    return c


@pytest.mark.parametrize("n, size", [
    *((n, s) for n in range(1, 25) for s in (1, 2, 3, 7, 10)),
    (97, 10), (299, 10), (301, 10), (305, 16)])
def test_deterministic_connections_differ_by_at_most_one(n: int, size: int) -> None:
    """floor(K*s/N) or ceil(K*s/N) connections per backend, whatever N, s and K: also
    when N is no multiple of s (the leftover) and when s is most of N."""
    for clients in (1, 3, 13, 40, 101) if n < 50 else (7, 101):
        c = spread(n, size, clients)
        total = clients * min(size, n)
        assert sum(c.values()) == total
        assert max(c.values()) - min(c.values()) <= 1, (n, size, clients)
        assert max(c.values()) == -(-total // n)


def test_client_count_covers_every_backend() -> None:
    c = spread(300, 10, 10)                       # 100 connections over 300 backends
    assert sum(1 for v in c.values() if v == 0) == 200
    c = spread(300, 10, 10, count=10)             # the subset grows to 30: all covered
    assert set(c.values()) == {1}


# ------------------------------------------------------------------------- in a Balancer
class Handle(ConnectionStub):
    def __init__(self, endpoint: Endpoint, on_state: Callable[[Connectivity], None]) -> None:
        self.address, self.on_state, self.closed = endpoint.address, on_state, False

    def request_connection(self) -> None:
        pass

    def shutdown(self) -> None:
        self.closed = True


class Factory(FactoryStub):
    def __init__(self) -> None:
        self.created: list[str] = []
        self.handles: dict[str, Handle] = {}

    def create(self, endpoint: Endpoint, on_state: Callable[[Connectivity], None]) -> Handle:
        h = self.handles[endpoint.address] = Handle(endpoint, on_state)
        self.created.append(endpoint.address)
        return h


class Checker:
    def __init__(self, report: Callable[[HealthReport], None]) -> None:
        self.report, self.stopped = report, False

    def set_probing(self, on: bool) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True

    def join(self, timeout: float) -> None:
        pass


class HealthFactory:
    def __init__(self) -> None:
        self.started: list[str] = []

    def start(self, handle: Any, config: Any, report: Callable[[HealthReport], None]
              ) -> Checker:
        self.started.append(handle.address)
        return Checker(report)


def balancer(entry: dict[str, Any], seed: int = 1, health: bool = False
             ) -> tuple[Balancer, Factory, HealthFactory]:
    factory, hf = Factory(), HealthFactory()
    bal = Balancer(factory, clock=lambda: 1000.0, rng=random.Random(seed),
                   health_factory=hf)
    if health:
        bal.set_health_check(HealthCheckConfig())
    choice = lb(entry)
    bal.set_policy(choice.spec, choice.config)
    return bal, factory, hf


def eps(a: list[str]) -> list[Endpoint]:
    return [Endpoint(x) for x in a]


def ready_all(factory: Factory) -> None:
    for h in factory.handles.values():
        if not h.closed:
            h.on_state(Connectivity.READY)


@pytest.mark.parametrize("entry", [
    {"random_subsetting": {"subsetSize": 5, "childPolicy": RR}},
    {"deterministic_subsetting": {"clientIndex": 3, "subsetSize": 5, "childPolicy": RR}},
])
def test_only_the_subset_gets_records_connections_and_health_checks(
        entry: dict[str, Any]) -> None:
    bal, factory, hf = balancer(entry, health=True)
    a = addrs(40)
    bal.update_endpoints(eps(a))
    policy = bal.policy
    assert isinstance(policy, RandomSubsetting | DeterministicSubsetting)
    subset = list(policy.subset)
    assert len(subset) == 5
    assert [r.address for r in bal.records()] == subset             # subset order
    assert sorted(factory.created) == sorted(subset)                # 5 connections, not 40
    ready_all(factory)
    assert sorted(hf.started) == sorted(subset)                     # 5 health checkers
    assert {i.address for i in bal.snapshot()} == set(subset)       # channel.endpoints()
    bal.close()


def test_the_child_balances_among_the_subset_only() -> None:
    bal, factory, _ = balancer({"random_subsetting": {"subsetSize": 4, "childPolicy": RR}})
    bal.update_endpoints(eps(addrs(30)))
    ready_all(factory)
    picks = collections.Counter(bal.picker.pick(PickInfo("/s/m")).candidate.address
                                for _ in range(400))
    assert set(picks) == set(bal.policy.subset)                      # type: ignore[union-attr]
    assert set(picks.values()) == {100}                              # round robin over 4
    bal.close()


def test_random_subset_updates_move_only_what_hashing_must() -> None:
    bal, factory, _ = balancer({"random_subsetting": {"subsetSize": 10, "childPolicy": RR}},
                               seed=5)
    policy = bal.policy
    assert isinstance(policy, RandomSubsetting)
    a = addrs(200)
    bal.update_endpoints(eps(a))
    first = set(policy.subset)
    assert first == set(rendezvous_subset(a, 10, policy.seed))       # the pure function
    # remove 3 non-members and add 50 new endpoints: only added low hashes get in
    non_members = [x for x in a if x not in first][:3]
    added = addrs(50, prefix="10.9")
    b = [x for x in a if x not in non_members] + added
    bal.update_endpoints(eps(b))
    second = set(policy.subset)
    entered = second - first
    assert entered <= set(added) and len(first - second) == len(entered)
    # removing one member replaces exactly that one, by the next-lowest hash
    member = sorted(second)[0]
    c = [x for x in b if x != member]
    bal.update_endpoints(eps(c))
    third = set(policy.subset)
    assert second - third == {member} and len(third - second) == 1
    # the connections follow: removed members' handles closed, kept ones untouched
    handles = factory.handles
    assert handles[member].closed
    assert not any(handles[x].closed for x in third)
    # one connection per endpoint that entered the subset (a member pushed out and
    # back in again gets a new one)
    assert len(factory.created) == len(first) + len(second - first) + len(third - second)
    bal.close()


def test_each_channel_draws_its_own_seed() -> None:
    subsets = set()
    for seed in range(8):
        bal, _, _ = balancer({"random_subsetting": {"subsetSize": 3, "childPolicy": RR}},
                             seed=seed)
        bal.update_endpoints(eps(addrs(100)))
        subsets.add(tuple(sorted(bal.policy.subset)))               # type: ignore[union-attr]
        bal.close()
    assert len(subsets) == 8


def test_deterministic_policy_matches_the_pure_function_and_follows_updates() -> None:
    entry = {"deterministic_subsetting": {"clientIndex": 7, "clientCount": 20,
                                          "subsetSize": 6, "childPolicy": RR}}
    bal, factory, _ = balancer(entry)
    a = addrs(50)
    bal.update_endpoints(eps(a))
    policy = bal.policy
    assert isinstance(policy, DeterministicSubsetting)
    assert list(policy.subset) == deterministic_subset(a, 7, 6, 20)
    b = a + addrs(3, prefix="10.8")
    bal.update_endpoints(eps(b))
    assert list(policy.subset) == deterministic_subset(b, 7, 6, 20)
    assert {r.address for r in bal.records()} == set(policy.subset)
    # another balancer, same config: the same subset (nothing random about it)
    bal2, _, _ = balancer(entry, seed=99)
    bal2.update_endpoints(eps(list(reversed(b))))
    assert bal2.policy.subset == policy.subset                       # type: ignore[union-attr]
    bal.close()
    bal2.close()


def test_fewer_endpoints_than_the_subset_keeps_them_all() -> None:
    for entry in ({"random_subsetting": {"subsetSize": 10, "childPolicy": RR}},
                  {"deterministic_subsetting": {"clientIndex": 4, "subsetSize": 10,
                                                "childPolicy": RR}}):
        bal, factory, _ = balancer(entry)
        bal.update_endpoints(eps(addrs(4)) + eps(addrs(1)))          # a repeated address
        assert sorted(r.address for r in bal.records()) == sorted(addrs(4))
        bal.close()


def test_wrapped_by_outlier_detection_and_wrapping_a_hash_policy() -> None:
    entry = {"outlier_detection": {"consecutiveFailures": 3, "childPolicy": [
        {"random_subsetting": {"subsetSize": 3, "childPolicy": [
            {"ring_hash": {"requestHashHeader": "x-key", "minRingSize": 64,
                           "maxRingSize": 64}}]}}]}}
    bal, factory, _ = balancer(entry)
    bal.update_endpoints(eps(addrs(20)))
    assert len(bal.records()) == 3                                   # outlier asks its child
    ready_all(factory)
    subset = {r.address for r in bal.records()}
    got = {bal.picker.pick(PickInfo("/s/m", (("x-key", f"k{i}"),))).candidate.address
           for i in range(200)}
    assert got == subset
    bal.close()


def test_inside_a_group_policy_there_is_no_subsetting() -> None:
    """Documented limit (docs/policies.md): group policies keep every endpoint, so a
    subsetting policy as a priority level's child balances over the whole level."""
    bal, factory, _ = balancer({"priority": {"childPolicy": [
        {"random_subsetting": {"subsetSize": 2, "childPolicy": RR}}]}})
    bal.update_endpoints(eps(addrs(10)))
    assert len(bal.records()) == 10
    bal.close()
