"""Run every benchmark scenario and write benchmarks/RESULTS.md.

    .venv/bin/python -m benchmarks.run [--quick] [--only NAME,...] [--out PATH]
    .venv/bin/python -m benchmarks.run --smoke --out /tmp/r.md   # seconds: harness check

Scenarios are the ``benchmarks/bench_*.py`` modules (NAME is the part after ``bench_``),
discovered and run in the order of their ``SCENARIO`` number (see README.md for the
convention). A module that fails to import, has no ``run()``, or raises is reported in
RESULTS.md with that status instead of stopping the run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from benchmarks._common import Section, Table, machine_info

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "RESULTS.md")
# Hand-kept before/after tables (older versions measured by the commands they name);
# render() appends them to RESULTS.md.
HISTORY = os.path.join(HERE, "HISTORY.md")
MODES = ("full", "quick", "smoke")


@dataclass(frozen=True)
class Scenario:
    name: str  # "overhead"
    module: str  # "benchmarks.bench_overhead"


def discover(directory: str = HERE, package: str = "benchmarks") -> list[Scenario]:
    """Every ``bench_*.py`` in ``directory``, by file name (imported later)."""
    found = []
    for entry in sorted(os.listdir(directory)):
        if entry.startswith("bench_") and entry.endswith(".py"):
            stem = entry[:-3]
            found.append(Scenario(stem[len("bench_"):], f"{package}.{stem}"))
    return found


def select(scenarios: list[Scenario], only: str | None) -> list[Scenario]:
    """The scenarios named in a comma-separated ``only`` ("overhead" or "bench_overhead");
    ValueError naming the unknown ones and the known ones."""
    if not only:
        return scenarios
    wanted = [w.strip().removeprefix("bench_") for w in only.split(",") if w.strip()]
    known = {s.name: s for s in scenarios}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    return [known[w] for w in wanted]


def _order(module: ModuleType | None) -> float:
    number = getattr(module, "SCENARIO", None)
    return float(number) if isinstance(number, int | float) else float("inf")


def run_scenario(scenario: Scenario, mode: str, module: ModuleType | None = None,
                 ) -> Section:
    """Run one scenario in ``mode`` ("full", "quick" or "smoke"); never raises for the
    scenario's own failures: they come back as a Section with a non-"ok" status."""
    title = scenario.name
    t0 = time.perf_counter()
    try:
        module = module or importlib.import_module(scenario.module)
        title = str(getattr(module, "TITLE", scenario.name))
        if mode == "smoke":
            fn = getattr(module, "run_smoke", None)
            if not callable(fn):
                return Section(title, notes=["This module has no `run_smoke()`."],
                               status="skipped")
            section = fn()
        else:
            fn = getattr(module, "run", None)
            if not callable(fn):
                return Section(title, status="not integrated", notes=[
                    f"`{scenario.module}` has no `run(quick: bool) -> Section` yet "
                    "(see benchmarks/README.md)."])
            section = fn(mode == "quick")
        if not isinstance(section, Section):
            raise TypeError(f"run() returned {type(section).__name__}, not Section")
    except Exception as exc:
        status = "import failed" if module is None else "failed"
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return Section(title, status=status, seconds=time.perf_counter() - t0,
                       notes=[f"`{scenario.module}`: {last}"])
    section.seconds = time.perf_counter() - t0
    return section


def collect(scenarios: Sequence[Scenario], mode: str, progress: bool = False,
            ) -> list[tuple[Scenario, Section]]:
    """Import the scenarios, order them by ``SCENARIO`` number, run each once."""
    modules: dict[str, ModuleType | None] = {}
    for s in scenarios:
        try:
            modules[s.name] = importlib.import_module(s.module)
        except Exception:
            modules[s.name] = None  # run_scenario reports the import error
    ordered = sorted(scenarios, key=lambda s: (_order(modules[s.name]), s.name))
    out = []
    for s in ordered:
        if progress:
            print(f"[benchmarks] {s.name} ({mode}) ...", file=sys.stderr, flush=True)
        section = run_scenario(s, mode, modules[s.name])
        if progress:
            print(f"[benchmarks] {s.name}: {section.status}, {section.seconds:.1f} s",
                  file=sys.stderr, flush=True)
        out.append((s, section))
    return out


def render(results: Sequence[tuple[Scenario, Section]], info: dict[str, str], command: str,
           mode: str, total: float) -> str:
    """RESULTS.md: machine and versions, the command, an index, then one part per scenario."""
    lines = ["# lbclient benchmarks", "",
             "Generated by `benchmarks/run.py`; do not edit by hand. Every comparison is a "
             "ratio measured in the same run, interleaved over repetitions (median and "
             "min–max). See `benchmarks/README.md` for the method.", "",
             f"Command: `{command}` (mode: {mode}, total {total:.0f} s)", ""]
    lines += [Table(["", ""], [[k, v] for k, v in info.items()]).to_markdown(), ""]
    index = Table(["scenario", "module", "status", "time"])
    for s, section in results:
        index.rows.append([section.title, f"bench_{s.name}.py", section.status,
                           f"{section.seconds:.1f} s"])
    lines += [index.to_markdown(), ""]
    for _, section in results:
        lines.append(section.to_markdown())
    if os.path.isfile(HISTORY):
        lines += ["## Before and after (from `benchmarks/HISTORY.md`)", "",
                  "Comparisons across lbclient versions, each measured by the command it "
                  "names (not part of this run):", "",
                  _history_body(), ""]
    return "\n".join(lines).rstrip() + "\n"


def _history_body() -> str:
    """HISTORY.md without its own title line."""
    with open(HISTORY) as f:
        return f.read().split("\n", 1)[-1].strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="short run (< 2 minutes)")
    group.add_argument("--smoke", action="store_true",
                       help="harness check only (seconds; figures meaningless)")
    parser.add_argument("--only", default=None, help="comma-separated scenario names")
    parser.add_argument("--out", default=None,
                        help=f"where to write the results (default {DEFAULT_OUT}; "
                             "--smoke writes nothing unless given)")
    parser.add_argument("--list", action="store_true", help="list scenarios and exit")
    args = parser.parse_args(argv)
    scenarios = discover()
    if args.list:
        for s in scenarios:
            print(s.name)
        return 0
    try:
        chosen = select(scenarios, args.only)
    except ValueError as exc:
        parser.error(str(exc))
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    command = "python -m benchmarks.run " + shlex.join(
        list(argv) if argv is not None else sys.argv[1:])
    info = machine_info()
    t0 = time.perf_counter()
    results = collect(chosen, mode, progress=True)
    text = render(results, info, command.strip(), mode, time.perf_counter() - t0)
    out = args.out or (None if args.smoke else DEFAULT_OUT)
    if out:
        with open(out, "w") as f:
            f.write(text)
    print(text)
    return 0 if all(sec.status in ("ok", "not integrated", "skipped")
                    for _, sec in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
