"""Every example in examples/ runs on its own (its own fake fleet) and exits 0; every one
is listed in examples/README.md. The examples run as subprocesses, a few at a time."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

import lbclient

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))
TIMEOUT = 120       # per example, generous for a loaded machine


def _run(name: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True,
                              text=True, timeout=TIMEOUT, cwd=EXAMPLES.parent)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(exc.cmd, -1, str(exc.stdout or ""),
                                           f"timed out after {TIMEOUT}s")


@pytest.fixture(scope="module")
def results() -> dict[str, subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(SCRIPTS, pool.map(_run, SCRIPTS), strict=True))


def test_there_are_examples() -> None:
    for name in ("quickstart.py", "health_and_outlier.py", "retries.py", "custom_policy.py",
                 "prometheus_metrics.py", "asyncio_example.py", "etcd_registration.py"):
        assert name in SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs(name: str, results: dict[str, subprocess.CompletedProcess[str]]) -> None:
    proc = results[name]
    assert proc.returncode == 0, f"{name}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stdout.strip(), f"{name} printed nothing"


def test_readme_lists_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    for name in [*SCRIPTS, "policies.json"]:
        assert f"[{name}]({name})" in readme, name


def test_policies_json_covers_every_registered_policy() -> None:
    from lbclient.balancer.policy import get_policy, registered_policies

    configs = json.loads((EXAMPLES / "policies.json").read_text())
    for name in registered_policies():
        spec = get_policy(name)
        assert spec is not None
        if spec.name == name and not name.endswith("_experimental"):
            assert name in configs, f"examples/policies.json has no {name}"
    for name, config in configs.items():
        if get_policy(name) is not None:
            assert lbclient.parse_service_config(config).lb.name == name
