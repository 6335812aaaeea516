"""The in-flight index of ``least_connections``: the endpoints' scores ``in_flight /
weight``, kept up to date by the endpoints' in-flight watchers
(``EndpointStats.watch_in_flight``), so a pick is exact and O(log n), or O(1) while every
weight is equal. It lives in the balancer layer, not with the policy, because it is
state that outlives pickers and it takes a lock (policies take none); it depends on the
picker contract only (no grpc, no threads of its own, no I/O).

Equal weights (the common case: no ``weights``, no slow start): the least score is the
least in-flight count, and ties are uniform. The slots are then kept in *buckets* by
in-flight count (a list per count, each slot's position in its list, and the least
non-empty count): a pick takes a uniformly random slot of the least bucket and moves it
one bucket up; an end moves it down. O(1) each.

Unequal weights: a tournament tree. Layout: ``size`` leaf slots (a power of two) in
flat lists, node ``j``'s children at ``2j`` and ``2j + 1``, leaf slot ``i`` at
``size + i``. Every node holds the least score
below it (``_min``) and the summed weight of the leaves that have that score (``_tie``);
a free slot scores ``inf`` with weight 0. The least-loaded endpoint is found from the
root in O(log n), choosing among tied subtrees in proportion to their tied weight with
one random number, so ties go to each tied endpoint in proportion to its weight.

The index switches between the two when a build makes the weights equal or unequal.

Concurrency: one lock per index guards the tree or buckets and the slot tables. Under it, a pick
finds the least score, begins the call on that endpoint (``begin_unwatched``: the
counter and the leaf move together) and returns; a watcher call (any other begin, an
end, a discard) re-reads that endpoint's ``in_flight`` and updates its leaf. So picks
are linearizable: each one sees every earlier pick, and every begin and end whose
watcher has run. The only changes a pick can miss are those whose counter has moved but
whose watcher is still waiting for the lock (an end on another thread at that very
instant): it then treats that endpoint as holding the call a moment longer. No pick ever
undercounts an endpoint, is retried, or is counted without the compare: the count and
the choice are one step.

Cost: the lock and O(1) (buckets) or O(log n) (tree) list updates per pick and per end,
paid only by endpoints a ``least_connections`` policy watches. ``update`` (a picker
build) is O(n) to compare the candidates with the slots and O(k log n) for k changed
endpoints (O(n) when many changed, or when the weights become equal or unequal).
"""

from __future__ import annotations

import functools
import math
import operator
import threading
from collections.abc import Callable, Collection, Sequence

from .picker import Candidate, EndpointStats, PickError, PickResult

INF = math.inf
_WEIGHT = operator.attrgetter("weight")


class _Buckets:
    """Slots by in-flight count: ``lists[c]`` holds the slots counted ``c`` (in any
    order), ``where[i]`` is slot ``i``'s position in its list, ``count[i]`` its count
    (-1: in no list), ``lo`` the least count with a slot (``len(lists)`` when none).
    Moves are O(1) (swap with the last, append) plus skipping emptied lists."""

    __slots__ = ("lists", "where", "count", "lo")

    def __init__(self, size: int) -> None:
        self.lists: list[list[int]] = []
        self.where = [0] * size
        self.count = [-1] * size
        self.lo = 0

    def put(self, i: int, c: int) -> None:
        """Move slot ``i`` to count ``c`` (-1: out of every list)."""
        old = self.count[i]
        if old == c:
            return
        lists = self.lists
        if old >= 0:
            b = lists[old]
            last = b.pop()
            if last != i:
                p = self.where[i]
                b[p] = last
                self.where[last] = p
        if c >= 0:
            while len(lists) <= c:
                lists.append([])
            b = lists[c]
            self.where[i] = len(b)
            b.append(i)
            if c < self.lo:
                self.lo = c
        self.count[i] = c
        lo, n = self.lo, len(lists)
        while lo < n and not lists[lo]:
            lo += 1
        self.lo = lo

    @property
    def empty(self) -> bool:
        return self.lo >= len(self.lists)

    def pick(self, r: float) -> int:
        b = self.lists[self.lo]
        return b[int(r * len(b))]


class LoadIndex:
    """Exact least ``in_flight / weight`` over a changing set of endpoints."""

    __slots__ = ("_lock", "_size", "_min", "_tie", "_buckets", "_stats", "_weight",
                 "_cands", "_results", "_watchers", "_slot", "_free", "__weakref__")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._size = 1
        self._min: list[float] = [INF, INF]
        self._tie: list[float] = [0.0, 0.0]
        self._buckets: _Buckets | None = None     # while every weight is equal
        # Per slot (None / 0 when free):
        self._stats: list[EndpointStats | None] = [None]
        self._weight: list[float] = [0.0]
        self._cands: list[Candidate | None] = [None]
        self._results: list[PickResult | None] = [None]   # made at the slot's first pick
        self._watchers: list[Callable[[], None] | None] = [None]
        self._slot: dict[str, int] = {}          # address -> slot (changed under the lock)
        self._free: list[int] = [0]              # free slots, highest first

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return len(self._slot)

    @property
    def bucketed(self) -> bool:
        """True while every weight is equal (buckets), False with the tree."""
        return self._buckets is not None

    def slot_scores(self) -> dict[str, tuple[float, int]]:
        """address -> (the score the index holds, in_flight now), under the lock
        (tests)."""
        with self._lock:
            out = {}
            for address, i in self._slot.items():
                stats = self._stats[i]
                assert stats is not None
                out[address] = (self._held(i), stats.in_flight)
            return out

    def _held(self, i: int) -> float:
        """Slot ``i``'s score as the index holds it (lock held)."""
        bk = self._buckets
        if bk is not None:
            return bk.count[i] / self._weight[i]
        return self._min[self._size + i]

    def problems(self) -> list[str]:
        """What is inconsistent in the tree or buckets (lock held; tests)."""
        out = []
        bk = self._buckets
        held = [i for i, s in enumerate(self._stats) if s is not None]
        if bk is not None:
            for c, b in enumerate(bk.lists):
                for p, i in enumerate(b):
                    if bk.count[i] != c or bk.where[i] != p:
                        out.append(f"slot {i} misplaced in bucket {c}")
            firsts = [c for c, b in enumerate(bk.lists) if b]
            if bk.lo != (firsts[0] if firsts else len(bk.lists)):
                out.append(f"lo {bk.lo} is not the least bucket")
            if sorted(i for b in bk.lists for i in b) != held:
                out.append("buckets do not hold exactly the slots")
            return out
        mins, ties = self._min, self._tie
        for j in range(1, self._size):
            left, right = mins[2 * j], mins[2 * j + 1]
            m = min(left, right)
            t = 0.0 if m == INF else ((ties[2 * j] if left == m else 0.0)
                                      + (ties[2 * j + 1] if right == m else 0.0))
            if mins[j] != m or abs(ties[j] - t) > 1e-9:
                out.append(f"node {j}")
        return out

    # ------------------------------------------------------------------ picking
    def pick(self, exclude: Collection[str], r: float) -> PickResult:
        """Begin a call on the endpoint with the least score (ties in proportion to
        weight, ``r`` uniform in [0, 1)), skipping ``exclude`` unless that leaves none;
        the result is ``counted``."""
        with self._lock:
            hidden = self._hide(exclude) if exclude else ()
            bk = self._buckets
            if bk is not None:
                if bk.empty:             # everything was excluded: consider them all
                    self._restore(hidden)
                    hidden = ()
                    if bk.empty:
                        raise PickError("no endpoints")
                i = bk.pick(r)
            else:
                mins = self._min
                if mins[1] == INF:       # everything was excluded: consider them all
                    self._restore(hidden)
                    hidden = ()
                ties, size = self._tie, self._size
                target = mins[1]
                x = r * ties[1]
                j = 1
                while j < size:
                    j += j
                    if mins[j] == target:
                        if mins[j + 1] == target:
                            t = ties[j]
                            if x >= t:
                                x -= t
                                j += 1
                    else:
                        j += 1
                i = j - size
            stats = self._stats[i]
            result = self._results[i]
            if result is None:
                c = self._cands[i]
                if stats is None or c is None:       # never built: no endpoint at all
                    raise PickError("no endpoints")
                result = self._results[i] = PickResult(c, None, True)
            assert stats is not None
            stats.begin_unwatched()
            if bk is not None:
                bk.put(i, stats.in_flight)
            else:
                w = self._weight[i]
                self._put(i, stats.in_flight / w, w)
            if hidden:
                self._restore(hidden)
            mine = self._watchers[i]
        stats.notify_in_flight(mine)     # another policy's index, if one watches too
        return result

    def _hide(self, exclude: Collection[str]) -> list[int]:
        hidden = []
        slot_of = self._slot
        for address in exclude:
            i = slot_of.get(address)
            if i is not None:
                self._unset(i)
                hidden.append(i)
        return hidden

    def _restore(self, slots: Sequence[int]) -> None:
        for i in slots:
            stats = self._stats[i]
            if stats is not None:
                self._set(i, stats)

    def _set(self, i: int, stats: EndpointStats) -> None:
        """Slot ``i`` holds ``stats``' count now (lock held)."""
        bk = self._buckets
        if bk is not None:
            bk.put(i, stats.in_flight)
        else:
            w = self._weight[i]
            self._put(i, stats.in_flight / w, w)

    def _unset(self, i: int) -> None:
        """Slot ``i`` out of the running (lock held)."""
        bk = self._buckets
        if bk is not None:
            bk.put(i, -1)
        else:
            self._put(i, INF, 0.0)

    def _put(self, i: int, score: float, tie: float) -> None:
        """Set leaf ``i`` and fix its ancestors (lock held); stops where nothing
        changes."""
        mins, ties = self._min, self._tie
        j = i + self._size
        mins[j] = score
        ties[j] = tie
        while j > 1:                 # carry the node's value up, combining its sibling
            b = mins[j ^ 1]
            if b < score:
                score, tie = b, ties[j ^ 1]
            elif b == score:
                tie += ties[j ^ 1]
            j >>= 1
            if mins[j] == score and ties[j] == tie:
                return
            mins[j] = score
            ties[j] = tie

    def _refresh(self, i: int, stats: EndpointStats) -> None:
        """The in-flight watcher of slot ``i``: re-read the count."""
        with self._lock:
            if self._stats[i] is stats:
                self._set(i, stats)

    # ------------------------------------------------------------------ updates
    def update(self, candidates: Sequence[Candidate]) -> None:
        """Hold exactly ``candidates`` from now on (one thread at a time: the policy's
        builds). Unchanged endpoints keep their slot; only changed leaves move."""
        slot_of, stats_at = self._slot, self._stats
        if not slot_of:
            self._fill(candidates)
            return
        weight_at, cands_at = self._weight, self._cands
        changed: list[tuple[int, Candidate]] = []
        added: dict[str, Candidate] = {}
        gone: set[int] = set()
        for c in candidates:
            i = slot_of.get(c.address)
            if i is None:
                added[c.address] = c
            elif stats_at[i] is not c.stats:          # removed and added again
                gone.add(i)
                added[c.address] = c
            elif weight_at[i] != c.weight:
                changed.append((i, c))
            else:
                old = cands_at[i]
                if old is None or old.handle is not c.handle or old.endpoint is not c.endpoint:
                    changed.append((i, c))
        if len(slot_of) + len(added) - len(gone) != len(candidates):
            present = {c.address for c in candidates}
            gone.update(i for a, i in slot_of.items() if a not in present)
        # Slots for the new endpoints, watched before their count is read (under the
        # lock below): a change after that read calls the watcher, which waits for it.
        free = self._free[:]
        spare = sorted(gone, reverse=True)
        size = self._size
        new: list[tuple[int, Candidate, Callable[[], None]]] = []
        for c in added.values():
            if spare:
                i = spare.pop()
            elif free:
                i = free.pop()
            else:
                i = size
                size *= 2
                free = list(range(size - 1, i, -1))
            fn: Callable[[], None] = functools.partial(self._refresh, i, c.stats)
            c.stats.watch_in_flight(fn)
            new.append((i, c, fn))
        dropped: list[tuple[EndpointStats, Callable[[], None]]] = []
        with self._lock:
            grown = size != self._size
            if grown:
                self._grow(size)
                stats_at, weight_at, cands_at = self._stats, self._weight, self._cands
            results_at, watchers_at = self._results, self._watchers
            for i in gone:
                stats, was, old = stats_at[i], watchers_at[i], cands_at[i]
                if stats is not None and was is not None:
                    dropped.append((stats, was))
                if old is not None and slot_of.get(old.address) == i:
                    del slot_of[old.address]
                stats_at[i], weight_at[i], cands_at[i] = None, 0.0, None
                results_at[i] = watchers_at[i] = None
            for i, c, fn in new:
                stats_at[i], weight_at[i], cands_at[i] = c.stats, c.weight, c
                results_at[i] = None
                watchers_at[i] = fn
                slot_of[c.address] = i
            for i, c in changed:
                weight_at[i], cands_at[i] = c.weight, c
                results_at[i] = None
            self._free = free + spare                   # spare: gone, not reused
            touched = len(new) + len(changed) + len(gone)
            equal = len(set(map(_WEIGHT, candidates))) <= 1
            if grown or equal != (self._buckets is not None) or \
                    touched * self._size.bit_length() > self._size:
                self._rebuild(equal)
            else:
                for i in spare:
                    self._unset(i)
                for i, c, _ in new:
                    self._set(i, c.stats)
                for i, c in changed:
                    self._set(i, c.stats)
        for stats, watcher in dropped:
            stats.unwatch_in_flight(watcher)

    def _fill(self, candidates: Sequence[Candidate]) -> None:
        """``update`` into an empty index: every slot at once."""
        uniq = list({c.address: c for c in candidates}.values())
        n = len(uniq)
        size = 1 << max(0, (n - 1).bit_length())
        pad = [None] * (size - n)
        refresh = self._refresh
        watchers: list[Callable[[], None] | None] = [
            functools.partial(refresh, i, c.stats) for i, c in enumerate(uniq)]
        for c, watcher in zip(uniq, watchers, strict=True):
            assert watcher is not None
            c.stats.watch_in_flight(watcher)
        with self._lock:
            self._size = size
            self._stats = [c.stats for c in uniq]
            self._stats += pad
            self._weight = [c.weight for c in uniq] + [0.0] * (size - n)
            self._cands = [*uniq, *pad]
            self._results = [None] * size
            self._watchers = [*watchers, *pad]
            self._slot = {c.address: i for i, c in enumerate(uniq)}
            self._free = list(range(size - 1, n - 1, -1))
            self._rebuild(len(set(map(_WEIGHT, uniq))) <= 1)

    def _grow(self, size: int) -> None:
        """More slots (lock held; the caller rebuilds the tree)."""
        pad = [None] * (size - self._size)
        self._stats += pad
        self._weight += [0.0] * len(pad)
        self._cands += pad
        self._results += pad
        self._watchers += pad
        self._size = size

    def _rebuild(self, equal: bool) -> None:
        """Every count re-read: into buckets when every weight is equal, else into the
        tree, every node recomputed level by level (lock held)."""
        if equal:
            bk = _Buckets(self._size)
            lists, where, count = bk.lists, bk.where, bk.count
            for i, stats in enumerate(self._stats):
                if stats is not None:
                    c = stats.in_flight
                    while len(lists) <= c:
                        lists.append([])
                    where[i] = len(lists[c])
                    lists[c].append(i)
                    count[i] = c
            bk.lo = next((c for c, b in enumerate(lists) if b), len(lists))
            self._buckets = bk
            return
        self._buckets = None
        size = self._size
        mins = [INF] * size
        mins += [INF if s is None else s.in_flight / w
                 for s, w in zip(self._stats, self._weight, strict=True)]
        ties = [0.0] * size
        ties += self._weight
        lo = size
        while lo > 1:
            hi, lo = lo, lo >> 1
            a, b = mins[hi:2 * hi:2], mins[hi + 1:2 * hi:2]
            ta, tb = ties[hi:2 * hi:2], ties[hi + 1:2 * hi:2]
            mins[lo:hi] = [x if x <= y else y for x, y in zip(a, b, strict=True)]
            ties[lo:hi] = [tx + ty if x == y else (tx if x < y else ty)
                           for x, y, tx, ty in zip(a, b, ta, tb, strict=True)]
        self._min = mins
        self._tie = ties

    def close(self) -> None:
        """Stop watching every endpoint (the policy is closed); picks made afterwards
        still work, on counts that no longer follow the ends."""
        with self._lock:
            dropped = [(s, w) for s, w in zip(self._stats, self._watchers, strict=True)
                       if s is not None and w is not None]
        for stats, watcher in dropped:
            stats.unwatch_in_flight(watcher)
