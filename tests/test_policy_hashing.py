"""Consistent hashing: ring_hash (gRFC A42/A76) and maglev. Keys moved when an endpoint
leaves (vs modulo hashing), balance, stability across processes, the key rules, weights,
bounded load, and real backends."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import pytest
from test_policy_support import (
    call_counts,
    candidates,
    channel,
    info,
    make_policy,
)

from lbclient.endpoint import Endpoint
from lbclient.policies._hashing import xxhash64
from lbclient.policies.maglev import build_table
from lbclient.policies.ring_hash import point_counts
from lbclient.testing import Fleet

KEYS = [f"user-{i}" for i in range(10_000)]
HASHED = {
    "ring_hash": {"requestHashHeader": "x-key"},
    "maglev": {"requestHashHeader": "x-key"},
}


def mapping(picker: object, keys: list[str] = KEYS) -> dict[str, str]:
    return {k: picker.pick(info(k)).candidate.address for k in keys}  # type: ignore[attr-defined]


def hashed_picker(name: str, n: int = 10, config: dict | None = None,
                  eligible: slice = slice(None)) -> tuple[object, object, list]:
    cands = candidates(n)
    policy = make_policy(name, {**HASHED[name], **(config or {})})
    policy.endpoints_changed([c.endpoint for c in cands])
    return policy, policy.build_picker(cands[eligible]), cands


# ------------------------------------------------------------------ the hash
def test_xxhash64_reference_values() -> None:
    # The xxHash project's published XXH64 values (seed 0 unless given).
    assert xxhash64(b"") == 0xEF46DB3751D8E999
    assert xxhash64(b"", 1) == 0xD5AFBA1336A3BE4B
    assert xxhash64("a") == 0xD24EC4F1A98C6E5B
    assert xxhash64("abc") == 0x44BC2CF5AD770999
    assert xxhash64("asdf") == 0x415872F599CEA71E
    assert xxhash64("Call me Ishmael.") == 0x6D04390FC9D61A90
    # 39 bytes: exercises the 32-byte stripe loop and every tail path.
    assert xxhash64("Nobody inspects the spammish repetition") == 0xFBCEA83C8A378BF1


_CHILD = """
import json, sys
sys.path.insert(0, "tests")
from test_policy_support import candidates, info, make_policy
out = {}
for name in ("ring_hash", "maglev"):
    cands = candidates(7)
    p = make_policy(name, {"requestHashHeader": "x-key"}, seed=int(sys.argv[1]))
    p.endpoints_changed([c.endpoint for c in cands])
    pk = p.build_picker(cands)
    out[name] = [pk.pick(info(f"user-{i}")).candidate.address for i in range(300)]
print(json.dumps(out))
"""


def test_same_mapping_in_every_process() -> None:
    """Python's own hash() is salted per process; the rings must not be."""
    results = []
    for hashseed, rngseed in (("1", "5"), ("987", "77")):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        done = subprocess.run([sys.executable, "-c", _CHILD, rngseed], env=env,
                              capture_output=True, text=True, timeout=120, check=True)
        results.append(json.loads(done.stdout))
    assert results[0] == results[1]
    for name in ("ring_hash", "maglev"):
        _, picker, _ = hashed_picker(name, 7)
        assert [picker.pick(info(f"user-{i}")).candidate.address  # type: ignore[attr-defined]
                for i in range(300)] == results[0][name]


# ------------------------------------------------------------------ moving keys
@pytest.mark.parametrize("name", sorted(HASHED))
def test_one_of_ten_leaving_moves_only_its_keys(name: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    policy, picker, cands = hashed_picker(name, 10)
    before = mapping(picker)
    gone = cands[3].address
    after = mapping(policy.build_picker(cands[:3] + cands[4:]))  # type: ignore[attr-defined]
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(before[k] == gone for k in moved), "a key of a staying endpoint moved"
    assert all(after[k] != gone for k in KEYS)
    share = len(moved) / len(KEYS)
    modulo = sum(xxhash64(k) % 10 != xxhash64(k) % 9 for k in KEYS) / len(KEYS)
    with capsys.disabled():
        print(f"\n{name}: 1 of 10 endpoints leaves: {share:.1%} of 10,000 keys move "
              f"(modulo hashing: {modulo:.1%})")
    assert share <= 0.11
    assert modulo > 0.85
    # It comes back: every key returns to where it was.
    assert mapping(picker) == before


@pytest.mark.parametrize("name", sorted(HASHED))
def test_removal_by_discovery_rebuilds(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A resolver removal re-lays the slots over the new list; ring_hash keeps its scale
    (points per weight) so only the removed endpoint's keys move; Maglev keeps nearly
    all other keys."""
    policy, picker, cands = hashed_picker(name, 10)
    before = mapping(picker)
    rest = cands[:3] + cands[4:]
    policy.endpoints_changed([c.endpoint for c in rest])  # type: ignore[attr-defined]
    after = mapping(policy.build_picker(rest))  # type: ignore[attr-defined]
    share = sum(before[k] != after[k] for k in KEYS) / len(KEYS)
    with capsys.disabled():
        print(f"\n{name}: 1 of 10 removed by discovery: {share:.1%} of keys move")
    assert share <= (0.12 if name == "maglev" else 0.11)


def test_ineligible_endpoint_keys_go_to_next_on_the_ring() -> None:
    policy, picker, cands = hashed_picker("ring_hash", 5)
    ring = policy._layout  # type: ignore[attr-defined]
    gone = cands[2].address
    after = policy.build_picker([c for c in cands if c.address != gone])  # type: ignore
    for k in KEYS[:500]:
        slot = ring.slot(xxhash64(k))
        while ring.members[ring.owners[slot]] == gone:
            slot = (slot + 1) % len(ring.owners)
        assert after.pick(info(k)).candidate.address == ring.members[ring.owners[slot]]


# ------------------------------------------------------------------ balance
def _max_over_mean(picker: object) -> float:
    c = collections.Counter(mapping(picker).values())
    return max(c.values()) / (len(KEYS) / len(c))


def test_balance(capsys: pytest.CaptureFixture[str]) -> None:
    ring_default = _max_over_mean(hashed_picker("ring_hash")[1])
    ring_grpc = _max_over_mean(hashed_picker("ring_hash", config={"minRingSize": 1024})[1])
    maglev_policy, maglev_picker, cands = hashed_picker("maglev")
    maglev_keys = _max_over_mean(maglev_picker)
    entries = collections.Counter(maglev_policy._layout.owners)  # type: ignore[attr-defined]
    maglev_table = max(entries.values()) / (65537 / 10)
    with capsys.disabled():
        print(f"\nmax/mean keys per endpoint, 10 endpoints, 10,000 keys: ring_hash "
              f"{ring_default:.3f} (lbclient's default minRingSize 4096), {ring_grpc:.3f} "
              f"(minRingSize 1024, gRPC's default); maglev {maglev_keys:.3f} (table entries "
              f"{maglev_table:.4f})")
    assert maglev_table <= 1.02      # the table itself is even to within one entry
    assert maglev_keys <= 1.10       # 10,000 random keys add ~3% binomial noise per endpoint
    assert ring_default <= 1.10
    assert ring_grpc <= 1.30         # ~103 points per endpoint: about +-10% per endpoint


def test_ring_point_counts_follow_a42() -> None:
    # weights 1,1,2 -> normalized .25,.25,.5; scale = ceil(.25 * 10) / .25 = 12.
    assert point_counts([1, 1, 2], 10, 100) == [3, 3, 6]
    assert point_counts([1, 1, 2], 10, 8) == [2, 2, 4]       # capped by maxRingSize
    assert sum(point_counts([1.0] * 10, 1024, 4096)) == 1030  # ceil(102.4) = 103 each
    assert point_counts([1, 1000], 1, 100) == [1, 99]


def test_layout_ignores_resolver_order_and_uses_hash_key() -> None:
    cands = candidates(6)
    a = make_policy("ring_hash", HASHED["ring_hash"])
    b = make_policy("ring_hash", HASHED["ring_hash"], seed=9)
    a.endpoints_changed([c.endpoint for c in cands])
    b.endpoints_changed([c.endpoint for c in reversed(cands)])
    assert mapping(a.build_picker(cands), KEYS[:500]) == mapping(
        b.build_picker(list(reversed(cands))), KEYS[:500])
    # A76: an endpoint's position comes from its hash_key attribute when set, so a new
    # address with the same identity keeps its keys.
    moved = [c.with_weight(1) for c in candidates(6, prefix="10.9.9.")]
    for old, new in zip(cands, moved, strict=True):
        key = {"hash_key": f"pod-{old.address}"}
        old.endpoint = Endpoint(old.address, 1, key)
        new.endpoint = Endpoint(new.address, 1, key)
    p1, p2 = make_policy("maglev", HASHED["maglev"]), make_policy("maglev", HASHED["maglev"])
    m1 = mapping(p1.build_picker(cands), KEYS[:300])
    m2 = mapping(p2.build_picker(moved), KEYS[:300])
    rename = {o.address: n.address for o, n in zip(cands, moved, strict=True)}
    assert {k: rename[v] for k, v in m1.items()} == m2


# ------------------------------------------------------------------ keys, weights, load
@pytest.mark.parametrize("name", sorted(HASHED))
def test_no_key_means_a_random_endpoint(name: str) -> None:
    _, picker, _ = hashed_picker(name, 4)
    c = collections.Counter(picker.pick(info()).candidate.address  # type: ignore[attr-defined]
                            for _ in range(4000))
    assert len(c) == 4 and min(c.values()) > 600
    no_header = make_policy(name, {})  # without requestHashHeader every call is random
    assert len({no_header.build_picker(candidates(4)).pick(info("same")).candidate.address
                for _ in range(200)}) == 4


@pytest.mark.parametrize("name", sorted(HASHED))
def test_weights_share_the_layout(name: str) -> None:
    policy = make_policy(name, {**HASHED[name], "weights": {"10.0.0.2:50051": 3}})
    cands = [c.with_weight(policy.endpoint_weight(c)) for c in candidates(2)]
    policy.endpoints_changed([c.endpoint for c in cands])
    share = collections.Counter(mapping(policy.build_picker(cands)).values())[
        "10.0.0.2:50051"] / len(KEYS)
    assert abs(share - 0.75) < 0.05


def test_weighted_maglev_table_is_proportional() -> None:
    owners = build_table(["a", "b", "c"], [1.0, 2.0, 3.0], 65537)
    c = collections.Counter(owners)
    assert [round(c[i] / 65537 * 6, 2) for i in range(3)] == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("name", sorted(HASHED))
def test_bounded_load_spills_a_hot_key(name: str) -> None:
    _, picker, cands = hashed_picker(name, 4, {"hashBalanceFactor": 125})
    for _ in range(40):  # one hot key, no call ends
        picker.pick(info("hot")).candidate.stats.begin()  # type: ignore[attr-defined]
    loads = sorted(c.stats.in_flight for c in cands)
    assert sum(loads) == 40 and loads[-1] <= 1.25 * 40 / 4 + 1, loads
    _, plain, cands2 = hashed_picker(name, 4)
    for _ in range(40):
        plain.pick(info("hot")).candidate.stats.begin()  # type: ignore[attr-defined]
    assert sorted(c.stats.in_flight for c in cands2) == [0, 0, 0, 40]


# ------------------------------------------------------------------ real backends
@pytest.mark.parametrize("name", sorted(HASHED))
def test_keys_stick_to_backends_across_clients(name: str, fleet: Fleet) -> None:
    cfg = {name: {**HASHED[name], "tableSize": 251} if name == "maglev" else HASHED[name]}
    keys = [f"user-{i}" for i in range(30)]
    with channel(fleet, cfg) as a, channel(fleet, cfg) as b:
        from lbclient.testing import echo_pb2, echo_pb2_grpc

        def route(ch: object) -> dict[str, str]:
            stub = echo_pb2_grpc.EchoStub(ch)
            return {k: stub.Unary(echo_pb2.EchoRequest(message=k), timeout=10,
                                  metadata=(("x-key", k),)).address for k in keys}

        first, again, other = route(a), route(a), route(b)
        assert first == again == other
        assert len(set(first.values())) == 3  # 30 keys cover every backend
        spread = call_counts(a, 300)  # no key: random over the three
        assert set(spread) == set(fleet.addresses) and min(spread.values()) > 50


def test_key_hash_is_xxhash64_and_its_cache_stays_bounded() -> None:
    from lbclient.policies import _hashing

    keys = [f"user-{i}" for i in range(3 * _hashing.KEY_CACHE_SIZE)]
    for key in keys + keys[:10]:
        assert _hashing.key_hash(key) == _hashing.xxhash64(key)
        assert len(_hashing._key_hashes) <= _hashing.KEY_CACHE_SIZE
