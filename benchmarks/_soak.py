"""The chaos soak's accounting (``bench_chaos_soak.py`` drives the faults): the mixed
traffic and how each call ends, the classification of failures, the endpoint set kept in
etcd, and the memory and thread measurements. Nothing here starts anything at import.

Contracts:

* :class:`Load` - ``threads`` daemon threads (``chaos-load-N``) making calls drawn from
  :data:`CALL_KINDS`; every call started is counted once in ``started`` and once in
  ``ended`` (per thread, so no lock on the call path), ending as ok, abandoned (the
  caller dropped or cancelled the stream after the replies it wanted) or a
  :class:`Failure`. Latencies go to fixed-size histograms: the harness allocates nothing
  per call that outlives the call (the memory measurement would see it).
* :func:`classify` - the class of one failure from the fault history (module docstring
  of ``bench_chaos_soak``).
* :class:`EtcdEndpoints` - the wanted endpoint set, written to etcd by one thread that
  retries failed writes and writes nothing while paused.
"""

from __future__ import annotations

import math
import os
import random
import re
import threading
import time
import tracemalloc
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import grpc

import lbclient
import lbclient.etcd
from lbclient.testing import echo_pb2

CALL_KINDS = ("unary", "future", "stream", "drop", "cancel")
WEIGHTS = (35, 15, 20, 15, 15)
TIMEOUT = {"unary": 5.0, "future": 5.0, "stream": 10.0, "drop": 10.0, "cancel": 10.0}
UNARY = echo_pb2.EchoRequest(message="soak")
SHORT = echo_pb2.EchoRequest(message="soak", count=5)                  # read to the end
LONG = echo_pb2.EchoRequest(message="soak", count=20, sleep_ms=5)      # abandoned
FAULTS = ("kill", "unhealthy", "errors", "crash", "freeze", "silent", "quorum")
EXPECTED = ("stream-cut-by-crash", "stream-cut-by-kill", "deadline-on-frozen")
LATE = 1.0            # a call ending this long after its deadline is unexpected
MIB = 1024 * 1024



class Failure(NamedTuple):
    kind: str            # call kind
    code: str            # status code name, or "exception"/"bad-stream"/"late"/"callback"
    details: str
    start: float
    end: float
    replies: int         # replies received before the failure
    address: str         # the backend that sent them ("" if none)


class Hist:
    """Latency counts in log buckets (fixed memory): 0.5 ms x 1.25^i."""

    BASE, RATIO, N = 0.0005, 1.25, 80

    def __init__(self) -> None:
        self.counts = [0] * self.N
        self.max = 0.0

    def add(self, seconds: float) -> None:
        i = 0 if seconds <= self.BASE else int(math.log(seconds / self.BASE, self.RATIO)) + 1
        self.counts[min(i, self.N - 1)] += 1
        self.max = max(self.max, seconds)

    def merge(self, other: Hist) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.max = max(self.max, other.max)

    def quantile(self, q: float) -> float:
        total = sum(self.counts)
        if not total:
            return 0.0
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= q * total:
                return min(self.BASE * self.RATIO ** i, self.max)
        return self.max


@dataclass
class PerThread:
    started: Counter[str] = field(default_factory=Counter)
    ended: Counter[str] = field(default_factory=Counter)
    ok: Counter[str] = field(default_factory=Counter)
    abandoned: Counter[str] = field(default_factory=Counter)
    replies: int = 0
    failures: list[Failure] = field(default_factory=list)
    overflow: int = 0              # failures past the stored 1,000
    hist: dict[str, Hist] = field(default_factory=lambda: {k: Hist() for k in CALL_KINDS})


class Load:
    """``threads`` callers (daemon threads ``chaos-load-N``). Counters are per thread
    (no shared lock on the call path); the future counters are shared (``lock``)."""

    def __init__(self, stub: Any, threads: int, seed: int) -> None:
        self.stub = stub
        self.stop = threading.Event()
        self.stats = [PerThread() for _ in range(threads)]
        self.lock = threading.Lock()
        self.futures = 0
        self.callbacks_once = 0
        self.callbacks_extra = 0
        self.threads = [threading.Thread(target=self._run, args=(t, seed), daemon=True,
                                         name=f"chaos-load-{t}") for t in range(threads)]

    @property
    def calls(self) -> int:
        return sum(sum(s.ended.values()) for s in self.stats)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self, timeout: float) -> int:
        """Stop and join (bounded); returns how many threads are still running."""
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(deadline - time.monotonic(), 0.0))
        return sum(t.is_alive() for t in self.threads)

    def _run(self, t: int, seed: int) -> None:
        rng = random.Random(seed * 1000 + t)
        st = self.stats[t]
        while not self.stop.is_set():
            kind = rng.choices(CALL_KINDS, WEIGHTS)[0]
            start = time.monotonic()
            st.started[kind] += 1
            outcome = self._one(kind, rng, start)
            end = time.monotonic()
            st.ended[kind] += 1
            st.hist[kind].add(end - start)
            if not isinstance(outcome, Failure) and end > start + TIMEOUT[kind] + LATE:
                outcome = Failure(kind, "late", f"{end - start:.2f} s", start, end, 0, "")
            if isinstance(outcome, Failure):
                if len(st.failures) < 1000:
                    st.failures.append(outcome)
                else:
                    st.overflow += 1
            else:
                replies, how = outcome
                st.replies += replies
                (st.ok if how == "ok" else st.abandoned)[kind] += 1

    def _one(self, kind: str, rng: random.Random,
             start: float) -> Failure | tuple[int, str]:
        """One call: a Failure, or (replies, "ok" or "abandoned")."""
        replies, address = 0, ""
        try:
            if kind == "unary":
                self.stub.Unary(UNARY, timeout=TIMEOUT[kind])
            elif kind == "future":
                self._future()
            elif kind == "stream":
                for i, reply in enumerate(self.stub.ServerStream(SHORT, timeout=10.0)):
                    replies, address = replies + 1, reply.address
                    if reply.index != i:
                        return Failure(kind, "bad-stream", f"reply {reply.index} at {i}",
                                       start, time.monotonic(), replies, address)
                if replies != SHORT.count:
                    return Failure(kind, "bad-stream", f"{replies} replies", start,
                                   time.monotonic(), replies, address)
            else:
                stream = self.stub.ServerStream(LONG, timeout=10.0)
                for i in range(rng.randint(1, 3)):
                    reply = next(stream)
                    replies, address = replies + 1, reply.address
                    if reply.index != i:
                        return Failure(kind, "bad-stream", f"reply {reply.index} at {i}",
                                       start, time.monotonic(), replies, address)
                if kind == "cancel":
                    stream.cancel()
                del stream                       # abandoned: the channel must end it
                return replies, "abandoned"
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else "?"
            details = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
            return Failure(kind, code, details[:300], start, time.monotonic(), replies,
                           address)
        except Exception as exc:   # never expected: a bug (StopIteration included)
            return Failure(kind, "exception", repr(exc)[:300], start, time.monotonic(),
                           replies, address)
        return replies, "ok"

    def _future(self) -> None:
        box = [0]

        def done(_f: Any) -> None:
            box[0] += 1
            with self.lock:
                if box[0] == 1:
                    self.callbacks_once += 1
                else:
                    self.callbacks_extra += 1

        fut = self.stub.Unary.future(UNARY, timeout=TIMEOUT["future"])
        with self.lock:
            self.futures += 1
        fut.add_done_callback(done)
        fut.result()


# ----------------------------------------------------------------------------- endpoints


class EtcdEndpoints:
    """The endpoint set in etcd: ``want`` is what should be there; a thread
    (``chaos-etcd``) writes the difference, retrying failed writes, and writes nothing
    while ``paused`` (the quorum is being taken away)."""

    def __init__(self, etcd: Any, prefix: str) -> None:
        self.etcd, self.prefix = etcd, prefix
        self.want: set[str] = set()
        self.written: set[str] = set()
        self.paused = False
        self.errors = 0
        self.cond = threading.Condition()
        self.closed = False
        self.busy = False
        self.thread = threading.Thread(target=self._run, daemon=True, name="chaos-etcd")
        self.thread.start()

    def add(self, address: str) -> None:
        with self.cond:
            self.want.add(address)
            self.cond.notify_all()

    def discard(self, address: str) -> None:
        with self.cond:
            self.want.discard(address)
            self.cond.notify_all()

    def wanted(self) -> set[str]:
        with self.cond:
            return set(self.want)

    def in_etcd(self) -> set[str]:
        """What has been written (what the resolver can see)."""
        with self.cond:
            return set(self.written)

    def synced(self) -> bool:
        with self.cond:
            return self.want == self.written and not self.busy

    def pause(self, timeout: float) -> bool:
        """Stop writing once the set is written (bounded); False if it was not."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (self.want == self.written and not self.busy):
                if not self.cond.wait(max(deadline - time.monotonic(), 0.0)) and \
                        time.monotonic() >= deadline:
                    break
            self.paused = True
            return self.want == self.written

    def resume(self) -> None:
        with self.cond:
            self.paused = False
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.thread.join(15.0)

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.closed and (self.paused or self.want == self.written):
                    self.cond.wait(0.5)
                if self.closed:
                    return
                add = sorted(self.want - self.written)
                remove = sorted(self.written - self.want)
                self.busy = True
            try:
                for address in remove:
                    lbclient.etcd.remove_endpoint(self.etcd.endpoints, self.prefix, address,
                                                  timeout=2.0)
                    with self.cond:
                        self.written.discard(address)
                for address in add:
                    lbclient.etcd.add_endpoint(self.etcd.endpoints, self.prefix, address,
                                               timeout=2.0)
                    with self.cond:
                        self.written.add(address)
            except Exception:      # noqa: BLE001 - etcd unavailable: try again shortly
                self.errors += 1
                time.sleep(0.2)
            finally:
                with self.cond:
                    self.busy = False
                    self.cond.notify_all()


# ----------------------------------------------------------------------------- report


@dataclass
class Sample:
    t: float             # seconds since the load started
    calls: int
    rss: int             # bytes
    traced: int          # bytes (tracemalloc current)
    threads: int         # threading.active_count()


@dataclass
class Report:
    seconds: float = 0.0
    calls: int = 0
    started: Counter[str] = field(default_factory=Counter)
    ended: Counter[str] = field(default_factory=Counter)
    ok: Counter[str] = field(default_factory=Counter)
    abandoned: Counter[str] = field(default_factory=Counter)
    replies: int = 0
    classes: Counter[tuple[str, str]] = field(default_factory=Counter)   # (kind, class)
    unexpected: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    latency: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    futures: int = 0
    callbacks_once: int = 0
    callbacks_extra: int = 0
    stuck_threads: int = 0
    attempts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (fault, code)
    faults: Counter[str] = field(default_factory=Counter)
    fault_seconds: defaultdict[str, float] = field(
        default_factory=lambda: defaultdict(float))
    skipped: Counter[str] = field(default_factory=Counter)   # driver found no safe target
    ejections: Counter[str] = field(default_factory=Counter)  # fault of the ejected one
    silent_connections: int = 0
    quorum_outages: list[tuple[float, float]] = field(default_factory=list)  # down, recover
    outage_changes: int = 0          # endpoint set changes seen while quorum was lost
    etcd_write_errors: int = 0
    in_flight_end: int = -1          # channel in-flight once settled
    backend_in_flight_end: int = -1
    threads_base: int = 0
    threads_end: int = 0
    threads_pre_channel: int = 0
    threads_closed: int = 0
    thread_diff: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    top_growth: list[str] = field(default_factory=list)
    repair_problem: str = ""         # why the fleet was not whole again after the chaos

    @property
    def expected(self) -> int:
        return sum(n for (_, c), n in self.classes.items() if c in EXPECTED)

    @property
    def unexpected_total(self) -> int:
        """Unexpected failures, plus futures whose done-callback did not run exactly
        once (never, or more than once)."""
        return (sum(self.unexpected.values()) + self.callbacks_extra
                + (self.futures - self.callbacks_once))

    @property
    def lost(self) -> int:
        """Calls started but never ended (a stuck thread's included), plus attempts the
        channel or an in-process backend still counts in flight once the load stopped."""
        return (sum((self.started - self.ended).values())
                + max(self.in_flight_end, 0) + max(self.backend_in_flight_end, 0))


def classify(f: Failure, history: dict[str, list[list[Any]]]) -> str:
    """The class of one failed call (see the module docstring)."""
    if f.code in ("exception", "bad-stream", "late", "?") or f.kind in ("unary", "future"):
        return "unexpected"
    if f.replies == 0 or not f.address:
        return "unexpected"
    for kind, t0, t1 in history.get(f.address, ()):
        if kind in ("crash", "kill") and f.start - 0.05 <= t0 <= f.end and \
                f.code != "DEADLINE_EXCEEDED":
            return f"stream-cut-by-{kind}"
        if kind == "freeze" and f.code == "DEADLINE_EXCEEDED" and \
                t0 <= f.end <= (t1 if t1 is not None else math.inf) + 0.5:
            return "deadline-on-frozen"
    return "unexpected"


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def client_threads() -> list[str]:
    """Thread names but the harness's and the in-process backends' own."""
    return sorted(t.name for t in threading.enumerate()
                  if not t.name.startswith(("chaos-", "lbclient-backend", "lbclient-silent")))


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than 2 points)."""
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def growth(values: list[float]) -> tuple[float, float]:
    """(first quarter's mean, last quarter's mean)."""
    q = max(len(values) // 4, 1)
    return sum(values[:q]) / q, sum(values[-q:]) / q


def memory_flat(r: Report) -> tuple[bool, bool]:
    """(RSS flat, traced memory flat) by the module docstring's rule."""
    if len(r.samples) < 4:
        return False, False
    rss0, rss1 = growth([float(s.rss) for s in r.samples])
    tr0, tr1 = growth([float(s.traced) for s in r.samples])
    return rss1 <= rss0 * 1.05, tr1 - tr0 <= max(2 * MIB, 0.05 * tr0)


def names_diff(before: list[str], after: list[str]) -> list[str]:
    def shape(name: str) -> str:
        return re.sub(r"\d+", "N", name)
    diff = Counter(map(shape, after))
    diff.subtract(Counter(map(shape, before)))
    return [f"{name} {n:+d}" for name, n in sorted(diff.items()) if n]


def traced_by_file() -> dict[str, int]:
    """Traced bytes by source file (empty when not tracing)."""
    if not tracemalloc.is_tracing():
        return {}
    snap = tracemalloc.take_snapshot()
    out = {stat.traceback[0].filename: stat.size for stat in snap.statistics("filename")}
    del snap
    return out


def top_growth(before: dict[str, int], after: dict[str, int], n: int = 5) -> list[str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(lbclient.__file__)))
    deltas = sorted(((after.get(f, 0) - before.get(f, 0), f) for f in {*before, *after}),
                    reverse=True)[:n]
    return [f"{os.path.relpath(f, root) if f.startswith(root) else f}: {d / 1024:+.0f} KiB"
            for d, f in deltas]

