"""``lbclient.simulate``: compare load-balancing setups on a virtual clock, no network.

A discrete-event simulation that drives the SDK's real code — the endpoint-set
:class:`~lbclient.balancer.balancer.Balancer`, the registered policies, passive outlier
detection and the active health thresholds — with a virtual clock, seeded randomness and
fake connections/health checkers, so a minute of traffic to a fleet takes a fraction of
a second and the same seed always gives the same report::

    from lbclient import simulate

    report = simulate.run("examples/simulations/01_weighted_least_connections.json", seed=7)
    print(report.format_text())
    report.run("least_connections").imbalance

``python -m lbclient simulate SCENARIO.json [--policy a,b] [--seed N] [--plot out.png]
[--json]`` is the command line. The scenario format is documented in docs/simulate.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .analysis import Affinity, Downtime
from .engine import Simulation, run_variant
from .modulo_hash import NAME as MODULO_HASH
from .report import BackendFigures, Latency, Report, RunReport, build_run_report, make_report
from .scenario import SIM_POLICIES, Scenario, load_scenario, parse_scenario

ScenarioInput = str | os.PathLike[str] | Mapping[str, Any] | Scenario


def run(scenario: ScenarioInput, *, seed: int | None = None,
        policies: Sequence[str] | None = None) -> Report:
    """Simulate every variant of ``scenario`` (a JSON file path, a decoded dict or a
    :class:`Scenario`) and return the :class:`Report`.

    ``seed`` overrides the scenario's ``seed``; ``policies`` keeps only the variants with
    those labels (a name that is no label adds that policy with its default config).
    Raises :class:`~lbclient.errors.ServiceConfigError` for a bad scenario.
    """
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    if policies:
        sc = sc.with_policies(list(policies))
    use_seed = sc.seed if seed is None else seed
    t0 = time.perf_counter()
    runs = []
    for variant in sc.variants:
        start = time.perf_counter()
        sim = run_variant(sc, variant, use_seed)
        runs.append(build_run_report(sim, time.perf_counter() - start))
    return make_report(sc.name, use_seed, [b.name for b in sc.backends], runs,
                       time.perf_counter() - t0)


__all__ = ["MODULO_HASH", "SIM_POLICIES", "Affinity", "BackendFigures", "Downtime",
           "Latency", "Report", "RunReport", "Scenario", "Simulation", "load_scenario",
           "parse_scenario", "run"]
