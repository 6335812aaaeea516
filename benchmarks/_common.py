"""Shared helpers for the scenario modules (see benchmarks/README.md for the convention).

What is here:
  * :class:`Section` / :class:`Table`: what a scenario's ``run(quick)`` returns.
  * :func:`summarize`, :func:`paired_ratios`, :func:`fmt_summary`: median and spread.
  * :func:`interleave`: run variants A B C, B C A, ... over repetitions (noise control).
  * :class:`BackendProcess`: fake backends in a separate process (so the client process's
    CPU time is the client's alone).
  * :func:`run_load`: N blocking calls over T threads -> wall time and client CPU time.
  * :func:`machine_info`: CPU model, cores, load, versions, git commit, date.
  * :func:`fake_candidates`, :func:`pure_policy`: policies and pickers without a network.
  * :func:`standalone_main`: the ``main()`` every scenario module exposes.

Nothing here starts threads or processes at import time.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from lbclient.testing import _child

T = TypeVar("T")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- results


@dataclass
class Table:
    """A markdown table: ``headers`` and rows of already formatted cells."""

    headers: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    caption: str = ""

    def to_markdown(self) -> str:
        lines = [f"*{self.caption}*", ""] if self.caption else []
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("|" + "|".join("---" for _ in self.headers) + "|")
        for row in self.rows:
            cells = [str(c).replace("|", "\\|") for c in row]
            cells += [""] * (len(self.headers) - len(cells))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


@dataclass
class Section:
    """One scenario's results. ``metrics`` holds the machine-readable figures (finite
    floats, dotted keys) that tests and tools read; ``tables`` and ``notes`` are for people.
    ``status`` is "ok" for a measured scenario; the runner sets "not integrated",
    "import failed", "failed" or "skipped" for the others."""

    title: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = "ok"
    seconds: float = 0.0

    def to_markdown(self, level: int = 2) -> str:
        out = [f"{'#' * level} {self.title}", ""]
        if self.status != "ok":
            out += [f"**Status: {self.status}.**", ""]
        for table in self.tables:
            out += [table.to_markdown(), ""]
        out += [f"- {note}" for note in self.notes]
        if self.seconds:
            out.append(f"- Scenario time: {self.seconds:.1f} s.")
        return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Summary:
    median: float
    lo: float
    hi: float
    n: int

    @property
    def spread(self) -> float:
        """(max - min) / median: the relative width of the observed range."""
        return (self.hi - self.lo) / self.median if self.median else math.inf


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no values to summarize")
    return Summary(statistics.median(values), min(values), max(values), len(values))


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a[i] / b[i] for repetitions measured side by side (same rep = adjacent in time)."""
    if len(a) != len(b):
        raise ValueError(f"unpaired samples: {len(a)} vs {len(b)}")
    return [x / y for x, y in zip(a, b, strict=True) if y]


def fmt_summary(s: Summary, fmt: str = "{:.2f}") -> str:
    """``median (min–max)``."""
    return f"{fmt.format(s.median)} ({fmt.format(s.lo)}–{fmt.format(s.hi)})"


def interleave(variants: Mapping[str, Callable[[], T]], reps: int) -> dict[str, list[T]]:
    """Run every variant once per repetition, rotating the order (A B C, B C A, C A B, ...)
    so no variant always runs first or right after the same neighbour. Returns each
    variant's results in repetition order, so index i of two variants is a pair."""
    names = list(variants)
    out: dict[str, list[T]] = {name: [] for name in names}
    for rep in range(reps):
        k = rep % len(names) if names else 0
        for name in names[k:] + names[:k]:
            out[name].append(variants[name]())
    return out


# ----------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Measurement:
    """``calls`` finished calls (``errors`` of them failed) in ``wall`` seconds, costing
    ``cpu`` seconds of this process's CPU time (all threads, grpc's included)."""

    calls: int
    errors: int
    wall: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.calls / self.wall if self.wall > 0 else 0.0

    @property
    def cpu_per_call(self) -> float:
        return self.cpu / self.calls if self.calls else math.inf


def run_load(call: Callable[[int], Any], calls: int, threads: int,
             timeout: float = 120.0) -> Measurement:
    """Make ``calls`` blocking calls ``call(i)`` spread over ``threads`` threads (1: on
    this thread). Exceptions count as errors. Bounded: threads are joined within
    ``timeout`` or RuntimeError is raised. A ``gc.collect()`` runs before the clock starts."""
    per = [calls // threads + (1 if t < calls % threads else 0) for t in range(threads)]
    errors = [0] * threads

    def work(t: int) -> None:
        base = sum(per[:t])
        for i in range(base, base + per[t]):
            try:
                call(i)
            except Exception:
                errors[t] += 1

    gc.collect()
    if threads == 1:
        c0, w0 = time.process_time(), time.perf_counter()
        work(0)
        return Measurement(calls, errors[0], time.perf_counter() - w0, time.process_time() - c0)
    gate = threading.Barrier(threads + 1)

    def body(t: int) -> None:
        gate.wait()
        work(t)

    pool = [threading.Thread(target=body, args=(t,), daemon=True) for t in range(threads)]
    for th in pool:
        th.start()
    c0, w0 = time.process_time(), time.perf_counter()
    gate.wait(timeout)
    deadline = time.monotonic() + timeout
    for th in pool:
        th.join(max(deadline - time.monotonic(), 0.0))
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    if any(th.is_alive() for th in pool):
        raise RuntimeError(f"load threads still running after {timeout}s")
    return Measurement(calls, sum(errors), wall, cpu)


class BackendProcess:
    """``python -m lbclient.testing serve`` in a child process (a context manager).

    ``extra_args`` go to the serve command (e.g. ``["--latency-ms", "1"]``). Entering
    waits (bounded by ``start_timeout``) for the ports file; ``addresses`` and ``target``
    are then set. Exiting sends SIGTERM and waits, then kills (bounded)."""

    def __init__(self, count: int = 3, extra_args: Sequence[str] = (),
                 start_timeout: float = 60.0) -> None:
        self.count = count
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.addresses: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def target(self) -> str:
        return "ipv4:" + ",".join(self.addresses)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> BackendProcess:
        self._dir = tempfile.TemporaryDirectory(prefix="lbclient-bench-")
        ports = os.path.join(self._dir.name, "ports")
        cmd = [sys.executable, "-m", "lbclient.testing", "serve", "--count", str(self.count),
               "--ports-file", ports, *self.extra_args]
        try:
            self._proc, text = _child.spawn("backend process", cmd, ports,
                                            self.start_timeout, cwd=REPO_ROOT)
        except BaseException:
            self.close()
            raise
        self.addresses = [line.strip() for line in text.splitlines() if line.strip()]
        return self

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _child.stop(proc)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    """The short HEAD commit, marked when lbclient/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "lbclient"],
                               cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return f"{head} + uncommitted changes in lbclient/" if dirty else head


def machine_info() -> dict[str, str]:
    """The facts RESULTS.md starts with (all strings)."""
    import grpc

    import lbclient

    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu": _cpu_model(),
        "cores": f"{cores} logical ({usable} usable by this process)",
        "load average (1, 5, 15 min) at start": load,
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "grpcio": grpc.__version__,
        "lbclient": f"{lbclient.__version__} (git {_git_commit()})",
    }


# ----------------------------------------------------------------------------- policies


class NullScheduler:
    """A scheduler whose timers never fire (pure benchmarks run no background work)."""

    class _Handle:
        def cancel(self) -> None:
            pass

    def call_later(self, delay: float, fn: Callable[[], None]) -> NullScheduler._Handle:
        return NullScheduler._Handle()


def fake_candidates(n: int, *, seed: int = 1, weight: int = 1) -> list[Any]:
    """``n`` :class:`Candidate` objects over distinct fake addresses (10.x.y.z:50051),
    each with its own :class:`EndpointStats`; ``handle`` is None (no network)."""
    from lbclient import Candidate, Endpoint, EndpointStats

    rng = random.Random(seed)
    octets = rng.sample(range(1 << 24), n)
    out = []
    for o in octets:
        address = f"10.{o >> 16}.{(o >> 8) & 255}.{o & 255}:50051"
        out.append(Candidate(Endpoint(address, weight), float(weight),
                             EndpointStats(time.monotonic), None))
    return out


def pure_policy(name: str, raw_config: Any, *, seed: int = 1) -> Any:
    """A registered policy built without a channel: parsed ``raw_config``, a real clock,
    a seeded rng and a :class:`NullScheduler`. Raises KeyError if ``name`` is not
    registered and ``lbclient.ServiceConfigError`` if the config is rejected."""
    from lbclient.balancer.policy import PolicyContext, get_policy

    spec = get_policy(name)
    if spec is None:
        raise KeyError(name)
    config = spec.parse_config(raw_config, f"loadBalancingConfig[0].{name}")
    ctx = PolicyContext(clock=time.monotonic, rng=random.Random(seed),
                        scheduler=NullScheduler())
    return spec.create(config, ctx)


# ----------------------------------------------------------------------------- standalone


def standalone_main(run: Callable[[bool], Section],
                    argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.bench_x [--quick]``: run one scenario, print its markdown."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the short variant")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    section = run(args.quick)
    section.seconds = section.seconds or time.perf_counter() - t0
    print(section.to_markdown())
    return 0 if section.status == "ok" else 1
