"""Scenario 5 — consistent hashing: keys moved when 1 of N endpoints leaves (and returns).

Pure, no network: the real pickers of ``ring_hash`` and ``maglev`` (when registered) are
built over fake :class:`Candidate` objects and asked for ``PickInfo(method, ((header,
key),))``; plain modulo hashing (``xxhash64(key) % N`` over the same ordered endpoint
list, the same hash the policies use) is the baseline. For each N, one endpoint leaves
(several different ones in the full run) and then comes back:

* moved on leave: share of all keys whose endpoint changed. The keys that *had* to move
  are those of the leaving endpoint (about 1/N); "extra moved" are keys of staying
  endpoints that moved anyway (0 for ideal consistent hashing, most keys for modulo).
* moved on return: share of keys that change again when it comes back.
* max/mean load: the busiest endpoint's keys over the mean (1.00 = perfectly even).

This is the seed's practice 3 ("fraction of clients that change server when one fails,
ring hash vs modulo"); the gradual move back of sticky sessions is not measured here.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from benchmarks._common import Section, Table, fake_candidates, pure_policy, standalone_main
from lbclient.balancer.picker import PickInfo
from lbclient.balancer.policy import get_policy

try:  # the hash the policies use (XXH64); a stable stdlib hash if that module is absent
    from lbclient.policies._hashing import xxhash64 as _key_hash

    HASH_NAME = "XXH64 (lbclient.policies._hashing)"
except ImportError:  # pragma: no cover - depends on the build
    import hashlib

    def _key_hash(data: bytes | str, seed: int = 0) -> int:
        raw = data.encode() if isinstance(data, str) else data
        return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")

    HASH_NAME = "blake2b-64 (hashlib)"

SCENARIO = 5
TITLE = "Consistent hashing: keys moved when 1 of N endpoints leaves"
HASH_HEADER = "x-lb-key"
METHOD = "/lbclient.testing.echo.v1.Echo/Unary"
HASH_POLICIES: dict[str, dict[str, Any]] = {
    "ring_hash": {"requestHashHeader": HASH_HEADER},
    "maglev": {"requestHashHeader": HASH_HEADER},
}


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...] = (10, 100)
    keys: int = 50_000
    removals: int = 3  # how many different endpoints leave (one at a time), per N
    policies: tuple[str, ...] = tuple(HASH_POLICIES)


FULL = Settings()
QUICK = replace(FULL, keys=20_000, removals=1)
SMOKE = replace(FULL, sizes=(10,), keys=1_000, removals=1, policies=("ring_hash",))

# A mapper builds a lookup (key -> address) from the endpoints discovery reports
# (``known``) and the eligible ones the picker may choose (``eligible``).
Mapper = Callable[[Sequence[Any], Sequence[Any]], Callable[[str], str]]
REMOVED = "removed from discovery"
INELIGIBLE = "ineligible (ejected/unhealthy)"


def modulo_mapper(known: Sequence[Any], eligible: Sequence[Any]) -> Callable[[str], str]:
    """``hash(key) % len(eligible)`` over the eligible endpoints in order."""
    addresses = [c.address for c in eligible]
    n = len(addresses)
    return lambda key: addresses[_key_hash(key) % n]


def policy_mapper(name: str, raw: dict[str, Any]) -> Mapper:
    """Builds the policy's real picker the way the balancer does: one policy object,
    ``endpoints_changed(known endpoints)`` (when the policy has that hook), then
    ``build_picker(eligible candidates)``."""
    policy = pure_policy(name, raw)
    changed = getattr(policy, "endpoints_changed", None)

    def build(known: Sequence[Any], eligible: Sequence[Any]) -> Callable[[str], str]:
        if changed is not None:
            changed([c.endpoint for c in known])
        picker = policy.build_picker(list(eligible))
        return lambda key: picker.pick(PickInfo(METHOD, ((HASH_HEADER, key),))).candidate.address

    return build


@dataclass(frozen=True)
class Trial:
    moved: float  # share of all keys that changed endpoint when one left
    had_to_move: float  # share of keys that were on the leaving endpoint
    moved_back: float  # share that changed again when it returned
    load_before: float  # max/mean keys per endpoint with N endpoints
    load_after: float  # ... with N-1


def _load(assign: Sequence[str], n: int) -> float:
    counts = Counter(assign)
    return max(counts.values()) / (len(assign) / n)


def trial(mapper: Mapper, candidates: Sequence[Any], leave: int, keys: Sequence[str],
          how: str) -> Trial:
    """Endpoint ``leave`` leaves (``how``: REMOVED or INELIGIBLE), then comes back."""
    n = len(candidates)
    gone = candidates[leave].address
    rest = [c for i, c in enumerate(candidates) if i != leave]
    before = list(map(mapper(candidates, candidates), keys))
    after = list(map(mapper(rest if how == REMOVED else candidates, rest), keys))
    back = list(map(mapper(candidates, candidates), keys))
    k = len(keys)
    return Trial(
        moved=sum(a != b for a, b in zip(before, after, strict=True)) / k,
        had_to_move=sum(b == gone for b in before) / k,
        moved_back=sum(a != b for a, b in zip(after, back, strict=True)) / k,
        load_before=_load(before, n), load_after=_load(after, n - 1))


def measure(settings: Settings) -> Section:
    section = Section(TITLE)
    keys = [f"user-{i}" for i in range(settings.keys)]
    # (label, metrics slug, mapper, how it leaves)
    rows: list[tuple[str, str, Mapper, str]] = [
        ("modulo (hash % N)", "modulo", modulo_mapper, REMOVED)]
    for name in settings.policies:
        raw = HASH_POLICIES[name]
        if get_policy(name) is None:
            section.notes.append(f"`{name}`: not registered in this build — skipped.")
            continue
        try:
            for how, slug in ((REMOVED, "removed"), (INELIGIBLE, "ineligible")):
                rows.append((name, f"{name}.{slug}", policy_mapper(name, raw), how))
        except ValueError as exc:
            section.notes.append(f"`{name}`: rejects {raw}: {exc} — skipped.")
    table = Table(["hashing", "N", "how it leaves", "moved on leave",
                   "had to move (keys of the leaver)", "extra moved", "moved on return",
                   "max/mean load (N)", "max/mean load (N-1)", "CPU time"],
                  caption=f"{settings.keys:,} keys; median over {settings.removals} "
                          "leaving endpoint(s); shares of all keys")
    for n in settings.sizes:
        candidates = fake_candidates(n)
        leavers = [(i * n) // settings.removals + n // (2 * settings.removals)
                   for i in range(settings.removals)]
        for label, slug, mapper, how in rows:
            t0 = time.process_time()
            trials = [trial(mapper, candidates, i, keys, how) for i in leavers]
            elapsed = time.process_time() - t0
            med = {f: statistics.median(getattr(t, f) for t in trials)
                   for f in Trial.__dataclass_fields__}
            extra = statistics.median(t.moved - t.had_to_move for t in trials)
            shown_how = "either (same result)" if slug == "modulo" else how
            table.rows.append([label, str(n), shown_how, f"{med['moved']:.1%}",
                               f"{med['had_to_move']:.1%}", f"{extra:.1%}",
                               f"{med['moved_back']:.1%}", f"{med['load_before']:.3f}",
                               f"{med['load_after']:.3f}", f"{elapsed:.2f} s"])
            for f, v in med.items():
                section.metrics[f"n{n}.{slug}.{f}"] = v
            section.metrics[f"n{n}.{slug}.extra_moved"] = extra
    section.tables.append(table)
    ideal = ", ".join(f"{1 / n:.1%} for N={n}" for n in settings.sizes)
    section.notes += [
        f"Ideal on leave: only the leaver's keys move (≈ 1/N: {ideal}); modulo hashing "
        "moves ≈ (N-1)/N of all keys because every index shifts.",
        "Two ways to leave: *removed from discovery* rebuilds the layout for the new "
        "endpoint list (every remaining share grows, as in gRPC, so ring_hash also moves "
        "some keys between staying endpoints); *ineligible* keeps the layout and sends "
        "only the leaver's keys to the next eligible slot (gRFC A42's picker).",
        f"Key hash for modulo: {HASH_NAME}; the policies hash the `{HASH_HEADER}` header "
        "value themselves. Endpoints are fake `Candidate`s at 10.x.y.z:50051 (seeded), "
        "default policy configs plus the hash header.",
        "max/mean load includes sampling noise: with K keys over N endpoints even an ideal "
        "hash shows max/mean > 1 (about 1 + 3/sqrt(K/N)); the modulo rows show that floor "
        "for this key count.",
        "Pure computation in this process (no network); 'CPU time' is the process CPU "
        "time of that row's picker builds and 3 × K lookups per leaving endpoint.",
    ]
    return section


def run(quick: bool) -> Section:
    return measure(QUICK if quick else FULL)


def run_smoke() -> Section:
    return measure(SMOKE)


def main(argv: Sequence[str] | None = None) -> int:
    return standalone_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
