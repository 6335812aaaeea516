"""The benchmark harness works: runner discovery and statuses, the shared statistics, and
one real scenario (overhead: raw grpc vs native round_robin vs lbclient, backends in a
child process) in its minimal mode. Structure only — never speed."""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import _common, bench_hashing, run
from benchmarks._common import Table


def _finite(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value)


# ----------------------------------------------------------------------------- helpers


def test_interleave_rotates_order_and_keeps_repetition_order() -> None:
    seen: list[str] = []
    out = _common.interleave({k: (lambda k=k: seen.append(k) or len(seen))
                              for k in "abc"}, reps=3)
    assert seen == list("abcbcacab")
    assert out == {"a": [1, 6, 8], "b": [2, 4, 9], "c": [3, 5, 7]}


def test_summary_and_paired_ratios() -> None:
    s = _common.summarize([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.lo, s.hi, s.n) == (2.5, 1.0, 10.0, 4)
    assert s.spread == pytest.approx(9.0 / 2.5)
    assert _common.paired_ratios([2.0, 9.0], [1.0, 3.0]) == [2.0, 3.0]
    assert _common.fmt_summary(s, "{:.1f}") == "2.5 (1.0–10.0)"
    with pytest.raises(ValueError):
        _common.paired_ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        _common.summarize([])


def test_run_load_counts_calls_errors_and_threads() -> None:
    calls: list[int] = []

    def call(i: int) -> None:
        calls.append(i)
        if i % 10 == 0:
            raise RuntimeError("boom")

    m = _common.run_load(call, 95, threads=4)
    assert sorted(calls) == list(range(95))
    assert (m.calls, m.errors) == (95, 10)
    assert m.wall > 0 and m.cpu >= 0 and _finite(m.rate) and _finite(m.cpu_per_call)


def test_table_markdown_escapes_and_pads() -> None:
    md = Table(["a", "b"], [["x|y"]], caption="cap").to_markdown()
    assert md.splitlines() == ["*cap*", "", "| a | b |", "|---|---|", "| x\\|y |  |"]


# ----------------------------------------------------------------------------- runner


@pytest.fixture
def fake_package(tmp_path: Path) -> Path:
    """A package of three scenario modules: not integrated, raising, and working."""
    pkg = tmp_path / "fakebench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bench_plain.py").write_text('"""No run() yet."""\n')
    (pkg / "bench_broken.py").write_text(textwrap.dedent("""
        SCENARIO = 2
        def run(quick):
            raise RuntimeError("backend exploded")
    """))
    (pkg / "bench_good.py").write_text(textwrap.dedent("""
        from benchmarks._common import Section
        SCENARIO = 1
        TITLE = "Good one"
        def run(quick):
            return Section(TITLE, notes=[f"quick={quick}"], metrics={"x": 1.0})
    """))
    sys.path.insert(0, str(tmp_path))
    yield pkg
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("fakebench")]:
        del sys.modules[name]


def test_runner_reports_modules_without_run_and_failures(fake_package: Path) -> None:
    scenarios = run.discover(str(fake_package), "fakebench")
    assert [s.name for s in scenarios] == ["broken", "good", "plain"]
    results = run.collect(scenarios, "quick")
    by_name = {s.name: sec for s, sec in results}
    assert [s.name for s, _ in results] == ["good", "broken", "plain"]  # SCENARIO order
    assert by_name["good"].status == "ok" and by_name["good"].notes == ["quick=True"]
    assert by_name["broken"].status == "failed"
    assert "backend exploded" in by_name["broken"].notes[0]
    assert by_name["plain"].status == "not integrated"
    text = run.render(results, {"cpu": "test"}, "python -m benchmarks.run", "quick", 1.0)
    assert "| plain | bench_plain.py | not integrated |" in text
    assert "| Good one | bench_good.py | ok |" in text
    assert "**Status: not integrated.**" in text and "**Status: failed.**" in text
    assert "## Good one" in text and "| cpu | test |" in text


def test_select_rejects_unknown_names() -> None:
    scenarios = run.discover()
    assert [s.name for s in run.select(scenarios, "bench_overhead, hashing")] == [
        "overhead", "hashing"]
    with pytest.raises(ValueError, match="nosuch"):
        run.select(scenarios, "overhead,nosuch")


def test_hashing_smoke_modulo_moves_most_keys() -> None:
    section = bench_hashing.run_smoke()
    assert section.status == "ok" and section.tables
    moved = section.metrics["n10.modulo.moved"]
    had_to = section.metrics["n10.modulo.had_to_move"]
    assert 0.0 < had_to < 0.3 and moved > 0.5  # modulo shifts almost every key
    assert all(_finite(v) for v in section.metrics.values())


def test_retry_budget_smoke_holds_every_gate_to_its_storm_bound() -> None:
    """No gate, A6 throttling, Envoy's and Finagle's budgets: a short retry storm and one
    failing backend, real channels. Structure, plus the storm bounds (A6: 4 retries in
    all; Envoy: <= L retries in flight, and a per-call bound with a wide margin here;
    Finagle: reserve + 20 % of the calls - none depends on the machine's speed)."""
    from benchmarks import bench_retry_budget

    section = bench_retry_budget.run_smoke()
    assert section.status == "ok" and len(section.tables) == 3
    m = section.metrics
    assert m["storm.none.attempts_per_call"] == 5.0          # maxAttempts, every call
    for key in ("a6", "envoy", "finagle"):
        assert m[f"storm.{key}.within_bound"] == 1.0, key
        assert 1.0 <= m[f"storm.{key}.attempts_per_call"] <= m[f"storm.{key}.bound"], key
    assert all(_finite(v) for v in m.values())


# ----------------------------------------------------------------------------- overhead


def test_runner_main_writes_results_with_machine_and_command(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    assert run.main(["--smoke", "--only", "hashing", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# lbclient benchmarks")
    for fact in ("| date |", "| cpu |", "| cores |", "| python |", "| grpcio |", "| lbclient |",
                 "`python -m benchmarks.run --smoke --only hashing --out"):
        assert fact in text, fact
    assert "## Consistent hashing" in text and "Status:" not in text


def test_overhead_smoke_gives_finite_ratios_for_every_variant() -> None:
    """Raw grpc vs native round_robin vs lbclient round_robin, backends in a child
    process, a few hundred calls per variant, through the runner."""
    from benchmarks import bench_overhead

    [(_, section)] = run.collect(run.select(run.discover(), "overhead"), "smoke")
    assert section.status == "ok", section.notes
    m = section.metrics
    for t in bench_overhead.SMOKE.threads:
        for slug in ("raw1", "raw", "native_round_robin", "lbclient_round_robin"):
            key = f"t{t}.{slug}"
            assert m[f"{key}.errors"] == 0.0, key
            for k in ("calls_per_s", "cpu_us_per_call", "throughput_vs_native", "cpu_vs_raw"):
                assert _finite(m[f"{key}.{k}"]) and m[f"{key}.{k}"] > 0, f"{key}.{k}"
        assert m[f"t{t}.native_round_robin.throughput_vs_native"] == 1.0
        assert m[f"t{t}.raw.cpu_vs_raw"] == 1.0
    # the goals table, then one table per thread count; every variant reached its backends
    assert len(section.tables) == 1 + len(bench_overhead.SMOKE.threads)
    goals = [(row[0], row[1]) for row in section.tables[0].rows]
    assert goals == [(str(t), v) for t in bench_overhead.SMOKE.threads
                     for v in ("lbclient round_robin", "lbclient round_robin + retryPolicy")]
    for table in section.tables[1:]:
        assert [row[5] for row in table.rows] == ["1/1", "3/3", "3/3", "3/3", "3/3"]
    text = run.render([(run.Scenario("overhead", "benchmarks.bench_overhead"), section)],
                      {}, "cmd", "smoke", section.seconds)
    assert "## Overhead" in text and "calls/s ÷ native rr" in text


# ----------------------------------------------------------------------------- issue 17


def test_endpoints300_smoke_measures_every_variant_against_native() -> None:
    """300-endpoint CPU per call (here 6 endpoints): every variant reached its backends
    with no errors and has finite ratios against native round_robin."""
    from benchmarks import bench_endpoints300

    section = bench_endpoints300.run_smoke()
    assert section.status == "ok" and len(section.tables) == 1
    [table] = section.tables
    assert [row[0] for row in table.rows] == [*bench_endpoints300.VARIANTS,
                                              "native round_robin, 3 endpoints",
                                              "lbclient round_robin, 3 endpoints"]
    assert all(row[-1] == "0" for row in table.rows)          # no failed calls
    m = section.metrics
    assert m["native_round_robin.cpu_vs_native"] == 1.0
    for key in ("round_robin", "least_connections", "random_subsetting_10"):
        assert _finite(m[f"{key}.cpu_vs_native"]) and m[f"{key}.cpu_vs_native"] > 0, key
    assert all(_finite(v) for v in m.values())


def test_discovery_grow_smoke_runs_without_etcd() -> None:
    """The grow part of bench_discovery alone (no etcd): control, round_robin over
    refusing endpoints, random_subsetting over live ones; no call fails."""
    from benchmarks import bench_discovery

    section = bench_discovery.run_grow_smoke()
    assert section.status == "ok" and len(section.tables) == 2
    assert [row[0] for row in section.tables[0].rows] == bench_discovery.QUICK_GROWS
    m = section.metrics
    for key in ("control", "round_robin", "random_subsetting_live"):
        assert m[f"grow.{key}.failed"] == 0.0, key
        assert _finite(m[f"grow.{key}.ratio"]) and m[f"grow.{key}.ratio"] > 0, key
    assert [row[2] for row in section.tables[0].rows] == ["3", "30", "10"]   # kept


def test_callpath_smoke_counts_lbclient_alone() -> None:
    """The call-path decomposition: bytecodes and µs of lbclient alone per call, for
    every variant, and a raw grpc call's CPU to divide by."""
    from benchmarks import bench_callpath

    section = bench_callpath.run_smoke()
    m = section.metrics
    assert _finite(m["raw_call_cpu_us"]) and m["raw_call_cpu_us"] > 0
    for slug in ("round_robin", "round_robin_retry", "ring_hash", "outlier_detection"):
        assert 50 < m[f"{slug}.bytecodes_per_call"] < 5000, slug
        assert _finite(m[f"{slug}.us_per_call"]) and m[f"{slug}.us_per_call"] > 0, slug
    # deterministic: the plain path does less than the retry-configured one
    assert m["round_robin.bytecodes_per_call"] < m["round_robin_retry.bytecodes_per_call"]
