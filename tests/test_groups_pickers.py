"""Group policies without sockets: share arithmetic (Envoy's tables), pickers built from
hand-made candidates, child policy lifecycle, endpoint attributes, and the balancer hook."""

from __future__ import annotations

import collections
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from helpers import ConnectionStub, FactoryStub

from lbclient import Endpoint
from lbclient.balancer import (
    Candidate,
    EndpointStats,
    PickError,
    PickInfo,
    PickResult,
    Policy,
    PolicyContext,
    PolicySpec,
)
from lbclient.balancer.policy import get_policy
from lbclient.policies._groups import (
    EndpointAttributes,
    Locality,
    SplitPicker,
    group_health,
    priority_loads,
)

INFO = PickInfo("/svc/M")


# ------------------------------------------------------------------ helpers
def ep(address: str, **attributes: Any) -> Endpoint:
    return Endpoint(address, 1, attributes)


def cand(endpoint: Endpoint) -> Candidate:
    return Candidate(endpoint, float(endpoint.weight), EndpointStats(lambda: 0.0), None)


def make(name: str, cfg: Any, seed: int = 1, **options: Any) -> Policy:
    spec = get_policy(name)
    assert spec is not None
    ctx = PolicyContext(clock=lambda: 0.0, rng=random.Random(seed), options=dict(options))
    return spec.create(spec.parse_config(cfg, name), ctx)


def counts(policy: Policy, endpoints: Sequence[Endpoint], eligible: Sequence[Endpoint],
           n: int, info: PickInfo = INFO) -> collections.Counter[str]:
    policy.endpoints_changed(endpoints)
    picker = policy.build_picker([cand(e) for e in eligible])
    return collections.Counter(picker.pick(info).candidate.address for _ in range(n))


def share(c: collections.Counter[str], addresses: Sequence[str]) -> float:
    return sum(c[a] for a in addresses) / sum(c.values())


PRIMARY = [ep(f"10.0.0.{i}:1", priority=0) for i in range(1, 4)]
STANDBY = [ep(f"10.0.1.{i}:1", priority=1) for i in range(1, 3)]
P0 = [e.address for e in PRIMARY]
P1 = [e.address for e in STANDBY]


# ------------------------------------------------------------------ Envoy's arithmetic
def envoy_loads(healthy_percent: Sequence[float], factor: float = 1.4) -> list[float]:
    return priority_loads([group_health(round(p), 100, factor) for p in healthy_percent])


# Envoy's documented tables (priority levels page), traffic in percent. Envoy rounds to
# integer percents; our shares are exact, so allow 1 point.
ENVOY_TABLES = [
    ([100, 100], [100, 0]),
    ([72, 100], [100, 0]),
    ([71, 100], [99, 1]),
    ([50, 100], [70, 30]),
    ([25, 100], [35, 65]),
    ([0, 100], [0, 100]),
    ([72, 72], [100, 0]),
    ([71, 71], [99, 1]),
    ([50, 50], [70, 30]),
    ([25, 25], [50, 50]),
    ([100, 100, 100], [100, 0, 0]),
    ([71, 71, 100], [99, 1, 0]),
    ([25, 100, 100], [35, 65, 0]),
    ([25, 25, 100], [35, 35, 30]),
    ([25, 25, 20], [36, 36, 28]),
]


@pytest.mark.parametrize(("healthy", "traffic"), ENVOY_TABLES)
def test_priority_loads_match_envoys_tables(healthy: list[float], traffic: list[float]) -> None:
    loads = envoy_loads(healthy)
    assert sum(loads) == pytest.approx(1.0)
    for got, want in zip(loads, traffic, strict=True):
        assert abs(got * 100 - want) <= 1.0, (healthy, loads, traffic)


def test_group_health_threshold_and_edges() -> None:
    assert group_health(5, 7, 1.4) == 1.0          # 71.43% x 1.4 = 100%
    assert group_health(7, 10, 1.4) == pytest.approx(0.98)
    assert group_health(0, 3, 1.4) == 0.0
    assert group_health(3, 0, 1.4) == 0.0
    assert group_health(1, 2, 1.0) == 0.5
    assert priority_loads([0.0, 0.0]) == [0.0, 0.0]
    assert priority_loads([0.2, 0.3]) == pytest.approx([0.4, 0.6])   # normalized total


# ------------------------------------------------------------------ SplitPicker
class Fixed:
    def __init__(self, address: str) -> None:
        self.c = cand(ep(address))

    def pick(self, info: PickInfo) -> PickResult:
        return PickResult(self.c)


@pytest.mark.parametrize("start", [0, 1, 2**63, 2**64 - 1, 123456789])
def test_split_picker_is_close_to_exact_in_any_window(start: int) -> None:
    picker = SplitPicker([(0.7, Fixed("a:1")), (0.3, Fixed("b:1"))], start)
    assert picker.shares == pytest.approx((0.7, 0.3))
    for n in (10, 100, 1000):
        c = collections.Counter(picker.pick(INFO).candidate.address for _ in range(n))
        assert abs(c["a:1"] - 0.7 * n) <= 3, (n, c)


def test_split_picker_normalizes_and_drops_zero_shares() -> None:
    picker = SplitPicker([(3.0, Fixed("a:1")), (0.0, Fixed("z:1")), (1.0, Fixed("b:1"))], 7)
    c = collections.Counter(picker.pick(INFO).candidate.address for _ in range(400))
    assert c["z:1"] == 0 and abs(c["a:1"] - 300) <= 3
    with pytest.raises(ValueError):
        SplitPicker([(0.0, Fixed("a:1"))], 0)


def test_split_picker_start_differs_per_picker() -> None:
    firsts = set()
    for seed in range(10):
        rng = random.Random(seed)
        picker = SplitPicker([(0.5, Fixed("a:1")), (0.5, Fixed("b:1"))], rng.getrandbits(64))
        firsts.add(picker.pick(INFO).candidate.address)
    assert firsts == {"a:1", "b:1"}


# ------------------------------------------------------------------ priority
def test_priority_all_healthy_sends_everything_to_primary_evenly() -> None:
    c = counts(make("priority", {}), PRIMARY + STANDBY, PRIMARY + STANDBY, 3000)
    assert set(c) == set(P0)
    assert all(n == 1000 for n in c.values()), c


def test_priority_spill_follows_the_overprovisioning_rule() -> None:
    # 1 of 3 primaries eligible: health 1/3 x 1.4 = 46.7% stays, 53.3% spills.
    c = counts(make("priority", {}), PRIMARY + STANDBY, PRIMARY[2:] + STANDBY, 3000)
    assert share(c, P0) == pytest.approx(1.4 / 3, abs=0.005)
    assert set(c) == {P0[2], *P1}
    assert abs(c[P1[0]] - c[P1[1]]) <= 2           # standby balanced by its own child
    # 2 of 3 is below the 71.4% threshold too: 66.7% x 1.4 = 93.3% stays
    c = counts(make("priority", {}), PRIMARY + STANDBY, PRIMARY[1:] + STANDBY, 3000)
    assert share(c, P0) == pytest.approx(2 * 1.4 / 3, abs=0.005)


@pytest.mark.parametrize(("factor", "eligible", "expected"), [
    (1.4, 8, 1.0), (1.4, 7, 0.98), (1.4, 5, 0.70), (1.0, 8, 0.8), (2.0, 4, 0.8),
    (2.0, 5, 1.0), (1.4, 0, 0.0),
])
def test_priority_threshold_table(factor: float, eligible: int, expected: float) -> None:
    primary = [ep(f"10.0.0.{i}:1") for i in range(10)]      # no attribute: priority 0
    standby = [ep(f"10.0.9.{i}:1", priority="1") for i in range(10)]
    policy = make("priority", {"overprovisioningFactor": factor})
    c = counts(policy, primary + standby, primary[:eligible] + standby, 2000)
    assert share(c, [e.address for e in primary]) == pytest.approx(expected, abs=0.005)


def test_priority_primary_down_then_back() -> None:
    policy = make("priority", {})
    assert share(counts(policy, PRIMARY + STANDBY, STANDBY, 500), P1) == 1.0
    # a recovering primary takes traffic back in proportion: 1 of 3 -> 46.7%
    c = counts(policy, PRIMARY + STANDBY, PRIMARY[:1] + STANDBY, 3000)
    assert share(c, P0) == pytest.approx(1.4 / 3, abs=0.005)
    assert share(counts(policy, PRIMARY + STANDBY, PRIMARY + STANDBY, 500), P0) == 1.0


def test_priority_three_levels_and_gaps_in_numbering() -> None:
    levels = {0: [ep(f"10.0.0.{i}:1", priority=0) for i in range(4)],
              5: [ep(f"10.0.5.{i}:1", priority=5) for i in range(4)],
              9: [ep(f"10.0.9.{i}:1", priority=9) for i in range(5)]}
    everyone = [e for group in levels.values() for e in group]
    eligible = levels[0][:1] + levels[5][:1] + levels[9][:1]   # 25%, 25%, 20% healthy
    c = counts(make("priority", {}), everyone, eligible, 5000)
    got = [share(c, [e.address for e in levels[k]]) for k in (0, 5, 9)]
    assert got == pytest.approx([0.357, 0.357, 0.286], abs=0.005)   # Envoy: 36/36/28


def test_priority_without_the_hook_counts_candidates_only() -> None:
    # A balancer that never calls endpoints_changed: every level looks fully healthy.
    policy = make("priority", {})
    picker = policy.build_picker([cand(e) for e in PRIMARY[:1] + STANDBY])
    assert {picker.pick(INFO).candidate.address for _ in range(50)} == {P0[0]}


def test_priority_config_map_overrides_resolver_attributes() -> None:
    plain = [ep(f"127.0.0.1:{5000 + i}") for i in range(4)]
    cfg = {"endpoints": {plain[0].address: {"priority": 1},
                         plain[1].address: {"priority": 1}}}
    c = counts(make("priority", cfg), plain, plain, 400)
    assert set(c) == {plain[2].address, plain[3].address}
    # the map wins over a resolver attribute
    tagged = [ep(plain[0].address, priority=0), *plain[1:]]
    c = counts(make("priority", cfg), tagged, tagged, 400)
    assert plain[0].address not in c


def test_priority_retry_avoids_tried_level() -> None:
    # 1 of 3 primaries up; a retry that already tried it goes to the standby level.
    c = counts(make("priority", {}), PRIMARY + STANDBY, PRIMARY[2:] + STANDBY, 500,
               PickInfo("/svc/M", (), frozenset({P0[2]})))
    assert set(c) == set(P1)
    # when every endpoint was tried, a pick still succeeds (the least bad choice)
    everything = frozenset(P0[2:] + P1)
    c = counts(make("priority", {}), PRIMARY + STANDBY, PRIMARY[2:] + STANDBY, 100,
               PickInfo("/svc/M", (), everything))
    assert sum(c.values()) == 100


def test_retry_reaches_a_standby_that_has_no_share_yet() -> None:
    # The picker still gives the primary level 100% (the channel has not seen it die),
    # but a retry that tried every primary is sent to the standby level.
    tried = PickInfo("/svc/M", (), frozenset(P0))
    c = counts(make("priority", {}), PRIMARY + STANDBY, PRIMARY + STANDBY, 200, tried)
    assert set(c) == set(P1) and abs(c[P1[0]] - c[P1[1]]) <= 1
    c = counts(make("priority", {}), PRIMARY + STANDBY, PRIMARY + STANDBY, 200,
               PickInfo("/svc/M", (), frozenset(P0[:2])))
    assert set(c) == {P0[2]}                   # an untried primary is still preferred


def test_split_picker_keeps_counted_results_and_zero_share_fallbacks() -> None:
    class Counted(Fixed):
        def pick(self, info: PickInfo) -> PickResult:
            return PickResult(self.c, counted=True)

    tried = PickInfo("/svc/M", (), frozenset({"a:1"}))
    picker = SplitPicker([(1.0, Fixed("a:1")), (0.0, Fixed("b:1"))], 5)
    assert {picker.pick(tried).candidate.address for _ in range(20)} == {"b:1"}
    assert {picker.pick(INFO).candidate.address for _ in range(20)} == {"a:1"}
    # a result that already counted its call is never thrown away
    picker = SplitPicker([(1.0, Counted("a:1")), (0.0, Fixed("b:1"))], 5)
    assert picker.pick(tried).candidate.address == "a:1"


# ------------------------------------------------------------------ child policies
class Recorder(Policy):
    """A child policy that records its lifecycle (registered for these tests only)."""

    made: list[Recorder] = []

    def __init__(self, config: Any, ctx: PolicyContext) -> None:
        super().__init__(config, ctx)
        self.closed = 0
        self.seen: list[list[str]] = []
        Recorder.made.append(self)

    def endpoints_changed(self, endpoints: Sequence[Endpoint]) -> None:
        self.seen.append([e.address for e in endpoints])

    def endpoint_weight(self, candidate: Candidate) -> float:
        return candidate.weight * 10

    def build_picker(self, candidates: Sequence[Candidate]) -> Any:
        return Fixed(candidates[0].address)

    def close(self) -> None:
        self.closed += 1


RECORDER = [{"test_groups_recorder": {}}]


@pytest.fixture
def recorders(monkeypatch: pytest.MonkeyPatch) -> list[Recorder]:
    """Registers the recorder policy for one test only (the registry is global, and
    other tests check that every registered policy is documented)."""
    from lbclient.balancer import policy as registry

    registry.registered_policies()              # load the built-ins first
    spec = PolicySpec("test_groups_recorder", lambda raw, path: None, Recorder)
    monkeypatch.setitem(registry._registry, spec.name, spec)
    Recorder.made = []
    return Recorder.made


def test_each_level_gets_its_own_child_context_and_endpoints(
        recorders: list[Recorder]) -> None:
    rebuilds: list[int] = []
    spec = get_policy("priority")
    assert spec is not None
    ctx = PolicyContext(clock=lambda: 42.0, rng=random.Random(3),
                        request_rebuild=lambda: rebuilds.append(1), options={"k": "v"})
    policy = spec.create(spec.parse_config({"childPolicy": RECORDER}, "p"), ctx)
    policy.endpoints_changed(PRIMARY + STANDBY)
    assert len(recorders) == 2
    level0, level1 = recorders
    assert level0.seen == [P0] and level1.seen == [P1]
    assert level0.ctx is not ctx and level0.ctx is not level1.ctx
    assert level0.ctx.rng is not ctx.rng and level0.ctx.rng is not level1.ctx.rng
    assert level0.ctx.clock() == 42.0 and level0.ctx.options == {"k": "v"}
    level1.ctx.request_rebuild()
    assert rebuilds == [1]                      # a child's request reaches the balancer
    # the parent asks the child of the candidate's level for its weight
    assert policy.endpoint_weight(cand(STANDBY[0])) == 10.0


def test_children_close_with_their_group_and_with_the_parent(
        recorders: list[Recorder]) -> None:
    policy = make("priority", {"childPolicy": RECORDER})
    policy.endpoints_changed(PRIMARY + STANDBY)
    level0, level1 = recorders
    policy.endpoints_changed(PRIMARY)           # the standby level is gone
    assert level1.closed == 1 and level0.closed == 0
    policy.endpoints_changed(PRIMARY + STANDBY)  # it comes back: a fresh child
    assert len(recorders) == 3 and recorders[2].seen == [P1]
    policy.close()
    assert level0.closed == 1 and recorders[2].closed == 1 and level1.closed == 1


def test_unchanged_groups_keep_their_child(recorders: list[Recorder]) -> None:
    policy = make("weighted_target", {"targets": {"a": {"weight": 1, "childPolicy": RECORDER},
                                                  "b": {"weight": 1, "childPolicy": RECORDER}}})
    eps = [ep("10.0.0.1:1", zone="a"), ep("10.0.0.2:1", zone="b")]
    for _ in range(3):
        policy.endpoints_changed(eps)
        policy.build_picker([cand(e) for e in eps])
    assert len(recorders) == 2
    assert [r.seen for r in recorders] == [[["10.0.0.1:1"]] * 3, [["10.0.0.2:1"]] * 3]


# ------------------------------------------------------------------ weighted_target
EAST = [ep(f"10.1.0.{i}:1", locality={"region": "us", "zone": "east"}) for i in range(3)]
WEST = [ep(f"10.2.0.{i}:1", locality="us/west") for i in range(2)]
E, W = [e.address for e in EAST], [e.address for e in WEST]
TARGETS = {"targets": {"east": {"weight": 70}, "west": {"weight": 30}}}


def test_weighted_target_splits_by_weight_and_balances_inside() -> None:
    c = counts(make("weighted_target", TARGETS), EAST + WEST, EAST + WEST, 2000)
    assert share(c, E) == pytest.approx(0.70, abs=0.005)
    assert max(c[a] for a in E) - min(c[a] for a in E) <= 2
    assert abs(c[W[0]] - c[W[1]]) <= 2


def test_weighted_target_drops_targets_without_eligible_endpoints() -> None:
    c = counts(make("weighted_target", TARGETS), EAST + WEST, WEST, 300)
    assert share(c, W) == 1.0
    # gRPC behaviour: a half-empty locality still gets its full weight
    c = counts(make("weighted_target", TARGETS), EAST + WEST, EAST[:1] + WEST, 2000)
    assert share(c, E) == pytest.approx(0.70, abs=0.005)


def test_weighted_target_overprovisioning_scales_weights() -> None:
    cfg = {**TARGETS, "overprovisioningFactor": 1.4}
    # east: 1/3 eligible -> 70 x 0.467 = 32.7 against west's 30
    c = counts(make("weighted_target", cfg), EAST + WEST, EAST[:1] + WEST, 2000)
    assert share(c, E) == pytest.approx(32.667 / 62.667, abs=0.005)


def test_weighted_target_matches_locality_key_then_zone_then_region() -> None:
    eps = [ep("10.0.0.1:1", locality="us/a"), ep("10.0.0.2:1", locality="eu/a"),
           ep("10.0.0.3:1", region="eu", zone="b"), ep("10.0.0.4:1", zone="c"),
           ep("10.0.0.5:1")]
    cfg = {"targets": {"us/a": {"weight": 1}, "a": {"weight": 1}, "eu": {"weight": 2}}}
    policy = make("weighted_target", cfg)
    groups = {e.address: policy.group_of(e) for e in eps}  # type: ignore[attr-defined]
    assert groups == {"10.0.0.1:1": "us/a", "10.0.0.2:1": "a", "10.0.0.3:1": "eu",
                      "10.0.0.4:1": None, "10.0.0.5:1": None}
    c = counts(policy, eps, eps, 400)
    assert set(c) == {"10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"}
    assert abs(c["10.0.0.1:1"] - 100) <= 2 and abs(c["10.0.0.3:1"] - 200) <= 2


def test_weighted_target_with_no_matching_endpoint_fails_the_pick() -> None:
    policy = make("weighted_target", {"targets": {"north": {"weight": 1}}})
    policy.endpoints_changed(EAST)
    picker = policy.build_picker([cand(e) for e in EAST])
    with pytest.raises(PickError, match="north"):
        picker.pick(INFO)


def test_weighted_target_config_map_assigns_static_endpoints() -> None:
    plain = [ep(f"127.0.0.1:{7000 + i}") for i in range(4)]
    cfg = {**TARGETS, "endpoints": {plain[0].address: {"zone": "east"},
                                    plain[1].address: {"locality": "x/east"},
                                    plain[2].address: {"zone": "west"}}}
    c = counts(make("weighted_target", cfg), plain, plain, 1000)
    assert plain[3].address not in c
    assert share(c, [plain[0].address, plain[1].address]) == pytest.approx(0.7, abs=0.005)


# ------------------------------------------------------------------ zone_aware
ZA = [ep(f"10.0.1.{i}:1", locality="r1/a") for i in range(4)]
ZB = [ep(f"10.0.2.{i}:1", locality="r1/b") for i in range(2)]
ZC = [ep(f"10.0.3.{i}:1", locality="r2/a") for i in range(2)]    # zone "a" of another region
NOWHERE = [ep("10.0.4.1:1")]
ALL = ZA + ZB + ZC + NOWHERE
A, B, C = ([e.address for e in g] for g in (ZA, ZB, ZC))


def test_zone_aware_prefers_the_local_zone() -> None:
    c = counts(make("zone_aware", {"localZone": "a", "localRegion": "r1"}), ALL, ALL, 400)
    assert set(c) == set(A) and all(n == 100 for n in c.values())


def test_zone_aware_spills_in_proportion_then_returns() -> None:
    policy = make("zone_aware", {"localZone": "a", "localRegion": "r1"})
    # 3 of 4 local (75% x 1.4 > 100%): still all local
    assert share(counts(policy, ALL, ZA[:3] + ZB + ZC, 1000), A) == 1.0
    # 2 of 4: 70% local, the 30% goes to the same region first (zone b)
    c = counts(policy, ALL, ZA[:2] + ZB + ZC + NOWHERE, 2000)
    assert share(c, A) == pytest.approx(0.70, abs=0.005)
    assert share(c, B) == pytest.approx(0.30, abs=0.005)
    # local zone and region gone: everything else, balanced
    c = counts(policy, ALL, ZC + NOWHERE, 300)
    assert set(c) == {*C, NOWHERE[0].address} and all(n == 100 for n in c.values())
    assert share(counts(policy, ALL, ALL, 300), A) == 1.0


def test_zone_aware_without_region_matches_zone_names_only() -> None:
    # Without localRegion, "r2/a" is also zone "a"; the rest is one tier.
    c = counts(make("zone_aware", {"localZone": "a"}), ALL, ALL, 600)
    assert set(c) == set(A + C)
    c = counts(make("zone_aware", {"localZone": "a"}), ALL, ZB + NOWHERE, 300)
    assert set(c) == {*B, NOWHERE[0].address}


def test_zone_aware_reads_the_local_zone_from_context_options() -> None:
    policy = make("zone_aware", {}, **{"lbclient.local_zone": "b",
                                      "lbclient.local_region": "r1"})
    assert set(counts(policy, ALL, ALL, 100)) == set(B)
    # no local zone anywhere: no preference
    c = counts(make("zone_aware", {}), ALL, ALL, 900)
    assert set(c) == {e.address for e in ALL} and all(n == 100 for n in c.values())
    # the config wins over the option
    policy = make("zone_aware", {"localZone": "a", "localRegion": "r2"},
                  **{"lbclient.local_zone": "b"})
    assert set(counts(policy, ALL, ALL, 100)) == set(C)


# ------------------------------------------------------------------ attributes
@pytest.mark.parametrize(("attributes", "priority", "locality"), [
    ({}, 0, Locality()),
    ({"priority": 2}, 2, Locality()),
    ({"priority": "3"}, 3, Locality()),
    ({"priority": 1.0}, 1, Locality()),
    ({"priority": -1}, 0, Locality()),          # bad resolver values read as absent
    ({"priority": True}, 0, Locality()),
    ({"priority": "high"}, 0, Locality()),
    ({"locality": "us-east-1/us-east-1a"}, 0, Locality("us-east-1", "us-east-1a")),
    ({"locality": "us-east-1a"}, 0, Locality("", "us-east-1a")),
    ({"locality": {"region": "r", "zone": "z"}}, 0, Locality("r", "z")),
    ({"locality": {"zone": "z", "sub_zone": "s"}}, 0, Locality("", "z")),
    ({"locality": {"region": 5}}, 0, Locality()),
    ({"region": "r", "zone": "z"}, 0, Locality("r", "z")),
    ({"locality": "r/z", "zone": "ignored"}, 0, Locality("r", "z")),
])
def test_endpoint_attribute_forms(attributes: dict[str, Any], priority: int,
                                  locality: Locality) -> None:
    reader = EndpointAttributes(())
    e = ep("10.0.0.1:1", **attributes)
    assert reader.priority(e) == priority
    assert reader.locality(e) == locality


def test_locality_key() -> None:
    assert Locality("r", "z").key == "r/z"
    assert Locality("", "z").key == "z" and Locality("r", "").key == "r"
    assert Locality().key == ""


# ------------------------------------------------------------------ the balancer hook
class FakeHandle(ConnectionStub):
    def request_connection(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class FakeFactory(FactoryStub):
    def create(self, endpoint: Endpoint, on_state: Callable[[Any], None]) -> FakeHandle:
        return FakeHandle()


def test_balancer_gives_the_policy_every_endpoint(recorders: list[Recorder]) -> None:
    from lbclient.balancer.balancer import Balancer

    spec = get_policy("test_groups_recorder")
    assert spec is not None
    bal = Balancer(FakeFactory())
    try:
        bal.update_endpoints(PRIMARY)           # before any policy: nothing to tell
        bal.set_policy(spec, None)
        (first,) = recorders
        assert first.seen == [P0]               # a new policy hears the current list
        bal.update_endpoints(PRIMARY + STANDBY)  # none READY, all reported
        assert first.seen[-1] == P0 + P1
        bal.update_endpoints(STANDBY)
        assert first.seen[-1] == P1
    finally:
        bal.close()
    assert first.closed == 1


def test_priority_available_share_is_normalized_total_health() -> None:
    """Panic is judged on Envoy's normalized total health for priority: a healthy standby
    level keeps the channel out of panic even when most primaries are unhealthy."""
    import random as _random

    from lbclient.balancer.policy import PolicyContext, get_policy
    from lbclient.endpoint import Endpoint

    spec = get_policy("priority")
    assert spec is not None
    config = spec.parse_config({"childPolicy": [{"round_robin": {}}]}, "priority")
    policy = spec.create(config, PolicyContext(clock=lambda: 0.0, rng=_random.Random(1)))
    primaries = [Endpoint(f"10.0.0.{i}:1", attributes={"priority": 0}) for i in range(5)]
    standbys = [Endpoint(f"10.0.1.{i}:1", attributes={"priority": 1}) for i in range(2)]
    everyone = primaries + standbys
    policy.endpoints_changed(everyone)
    # 2 of 5 primaries fit (0.4 x 1.4 = 0.56) + standby level fully fit (1.0) -> 1.0
    assert policy.available_share(primaries[:2] + standbys, everyone) == 1.0
    # no standby fit: 0.56 only
    assert abs(policy.available_share(primaries[:2], everyone) - 0.56) < 1e-9
    # nothing fit
    assert policy.available_share([], everyone) == 0.0
    # a wrapper asks its child
    od = get_policy("outlier_detection")
    assert od is not None
    wrapped = od.create(od.parse_config({"childPolicy": [{"priority": {}}]}, "od"),
                        PolicyContext(clock=lambda: 0.0, rng=_random.Random(1)))
    wrapped.child.endpoints_changed(everyone)
    assert wrapped.available_share(primaries[:2] + standbys, everyone) == 1.0
    rr = get_policy("round_robin")
    assert rr is not None
    plain = rr.create(rr.parse_config({}, "rr"), PolicyContext(clock=lambda: 0.0,
                                                               rng=_random.Random(1)))
    assert plain.available_share(primaries[:2] + standbys, everyone) == 4 / 7
