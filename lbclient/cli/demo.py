"""``lbclient demo``: a local fleet of fake backends with characters, steady traffic through
each policy in turn, a live per-endpoint table and a final comparison.

    lbclient demo                                  # every registered policy, 8 s each
    lbclient demo --policy least_request --duration 20
    lbclient demo --config my_service_config.json
    lbclient demo --plain --duration 1 --policy round_robin,random   # no live table

Contract: finishes on its own after ``duration`` seconds per policy; Ctrl-C stops the
traffic, closes the channel and stops every backend, prints what was measured so far and
exits 130. The live table needs rich (``pip install lbclient[demo]``) and a terminal;
otherwise each policy's table is printed as plain text when its phase ends.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from ..channel import insecure_channel
from ..config import parse_service_config
from ..errors import ServiceConfigError
from ._demo_events import EventFeed, TakenOut
from ._demo_fleet import CHARACTERS, DemoFleet
from ._demo_policies import default_policies, service_config_for
from ._demo_traffic import Recorder, Traffic
from ._demo_view import (
    PhaseResult,
    endpoint_rows,
    plain_comparison,
    plain_endpoints,
    rich_comparison,
    rich_endpoints,
    summary,
    taken_out_lines,
)

TICK = 0.25          # seconds between table refreshes
READY_WAIT = 5.0     # seconds to wait for every endpoint to be READY before a phase


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run every policy against a local fleet of fake backends",
                       description=__doc__.split("\n\n")[0] if __doc__ else None)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--policy", action="append", metavar="NAME",
                       help="run only this policy (repeat or comma-separate for several)")
    which.add_argument("--config", metavar="FILE", help="run one service config JSON file")
    p.add_argument("--duration", type=float, default=8.0,
                   help="seconds per policy (default 8)")
    p.add_argument("--threads", type=int, default=4, help="caller threads (default 4)")
    p.add_argument("--rate", type=float, default=200.0,
                   help="calls per second over all threads (default 200)")
    p.add_argument("--no-health", action="store_true",
                   help="no healthCheckConfig / outlier_detection around the policies")
    p.add_argument("--plain", action="store_true", help="plain text even on a terminal")
    p.add_argument("--list", action="store_true",
                   help="print the policies and the configs the demo would use, then exit")
    p.set_defaults(run=run)


@dataclass(frozen=True)
class Phase:
    policy: str
    config: dict[str, Any]


def plan(args: argparse.Namespace, weights: dict[str, int]) -> list[Phase]:
    """The phases to run; raises ValueError (a message for the user) on bad input."""
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            raw = json.load(f)
        parsed = parse_service_config(raw)   # ServiceConfigError is a ValueError
        return [Phase(parsed.lb.name, raw)]
    names = [n.strip() for arg in (args.policy or []) for n in arg.split(",") if n.strip()]
    known = default_policies()
    if not names:
        names = known
    phases = []
    for name in names:
        config = service_config_for(name, weights, health=not args.no_health)
        if config is None:
            raise ValueError(f"policy {name!r} is not registered or has no usable config "
                             f"(registered: {', '.join(known)})")
        phases.append(Phase(name, config))
    return phases


def _use_rich(args: argparse.Namespace) -> bool:
    if args.plain or not sys.stdout.isatty():
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def run(args: argparse.Namespace) -> int:
    if args.duration <= 0 or args.threads < 1 or args.rate <= 0:
        print("error: --duration and --rate must be > 0, --threads >= 1", file=sys.stderr)
        return 2
    live = _use_rich(args)
    fleet = DemoFleet()
    results: list[PhaseResult] = []
    try:
        try:
            phases = plan(args, fleet.weights())
        except (OSError, ValueError) as exc:
            where = "service config" if isinstance(exc, ServiceConfigError) else "error"
            print(f"{where}: {exc}", file=sys.stderr)
            return 2
        if args.list:
            for ph in phases:
                print(f"{ph.policy}: {json.dumps(ph.config)}")
            return 0
        print(f"fleet: {', '.join(f'{c.name} ({c.description})' for c in CHARACTERS)}")
        names = {a: c.name for a, c in fleet.by_address().items()}
        with EventFeed(names, echo=not live) as feed:
            for i, phase in enumerate(phases, 1):
                title = f"[{i}/{len(phases)}] {phase.policy}"
                result = run_phase(fleet, phase, title, args, live, feed)
                results.append(result)
                if result.interrupted:
                    break
    finally:
        fleet.stop()
    if results:
        _print_comparison(results, live)
    return 130 if results and results[-1].interrupted else 0


def run_phase(fleet: DemoFleet, phase: Phase, title: str, args: argparse.Namespace,
              live: bool, feed: EventFeed) -> PhaseResult:
    """One policy for ``args.duration`` seconds; Ctrl-C ends it early (marked)."""
    fleet.reset()
    feed.phase_started()
    recorder = Recorder()
    result = PhaseResult(phase.policy, phase.config, 0.0, recorder.client, {})
    taken_out = TakenOut({a: c.name for a, c in fleet.by_address().items()})
    header = f"{title}  config: {json.dumps(phase.config)}"
    if not live:
        print(f"\n== {header}", flush=True)
    channel: Any = None
    traffic = script = None
    t0 = time.monotonic()
    try:
        # Inside the try: a Ctrl-C while the channel is being made still ends the phase
        # cleanly (marked "cut short") rather than escaping with no table.
        channel = insecure_channel(fleet.target, service_config=phase.config)
        channel.add_call_listener(recorder.on_call)
        channel.add_event_listener(taken_out.on_event)
        # Start the traffic once every endpoint is connected (bounded), so that phases
        # compare policies rather than connection races.
        deadline = time.monotonic() + READY_WAIT
        while time.monotonic() < deadline and not (len(channel.endpoints()) == len(
                CHARACTERS) and all(e.connectivity == "READY" for e in channel.endpoints())):
            time.sleep(0.01)
        traffic = Traffic(channel, recorder, threads=args.threads, rate=args.rate).start()
        script = fleet.script(args.duration).start()
        t0 = time.monotonic()
        end = t0 + args.duration
        if live:
            _live_loop(fleet, channel, recorder, taken_out, title, phase, end, feed)
        else:
            while time.monotonic() < end:
                time.sleep(min(TICK, max(0.0, end - time.monotonic())))
                taken_out.observe(channel.endpoints())
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        if traffic is not None:
            traffic.stop()
        if script is not None:
            script.stop()
        result.seconds = time.monotonic() - t0
        infos: list[Any] = channel.endpoints() if channel is not None else []
        if channel is not None:
            channel.close()
    calls, client = recorder.copy()
    result.client = client
    result.taken_out = taken_out.copy()
    total = sum(c.calls for c in calls.values())
    names = {a: c.name for a, c in fleet.by_address().items()}
    result.shares = {names[a]: c.calls / total for a, c in calls.items()
                     if a in names and total}
    result.rows = endpoint_rows(fleet, infos, calls)
    if not live:
        print(plain_endpoints(f"{title} after {result.seconds:.1f}s", result.rows), flush=True)
    return result


def _live_loop(fleet: DemoFleet, channel: Any, recorder: Recorder, taken_out: TakenOut,
               title: str, phase: Phase, end: float, feed: EventFeed) -> None:
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    def render() -> Any:
        infos: list[Any] = channel.endpoints()
        taken_out.observe(infos)
        calls, client = recorder.copy()
        left = max(0.0, end - time.monotonic())
        status = Text(f"{title}: {summary(phase.config)}   {client.calls} calls, "
                      f"{client.errors} failed, {left:.0f}s left (Ctrl-C stops)")
        events = Text("\n".join(feed.lines) or "(no endpoint events yet)", style="dim")
        return Group(status, rich_endpoints("", endpoint_rows(fleet, infos, calls)), events)

    with Live(render(), refresh_per_second=1 / TICK, transient=False) as view:
        while time.monotonic() < end:
            time.sleep(min(TICK, max(0.0, end - time.monotonic())))
            view.update(render())


def _print_comparison(results: list[PhaseResult], live: bool) -> None:
    if live:
        from rich.console import Console

        console = Console()
        console.print(rich_comparison(results))
        for line in taken_out_lines(results):
            console.print(line, highlight=False, markup=False)
    else:
        print("\n" + plain_comparison(results), flush=True)
