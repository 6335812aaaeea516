"""Packaging: ``python -m build`` makes an sdist and a wheel without deprecation or
license warnings; the wheel carries the .proto sources, a .pyi stub for every generated
module and py.typed; the sdist carries docs, examples, protos, scripts, tests and
benchmarks; the wheel installs into a fresh venv, runs, and a user's script that uses
lbclient and lbclient.testing passes ``mypy --strict`` against it.

Cost (~10 s): the build runs ``--no-isolation`` with this environment's setuptools (the
test extra requires the same ``setuptools>=77`` as ``[build-system]``), saving two
isolated build environments (~6 s); the fresh venv is made ``--without-pip`` and the
wheel installed with this environment's pip (``pip --python``), saving ensurepip (~8 s).
The wheel goes in with ``--no-deps``; its dependencies come from this environment
through a ``.pth`` line added *after* the install, so pip sees an empty venv.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SDIST_DIRS = ("docs", "examples", "protos", "scripts", "tests", "benchmarks")
# Lines of a build's output that must not appear: setuptools' deprecation warnings
# (SetuptoolsDeprecationWarning, "... is deprecated") and any warning about the license
# ("byte-compiling is disabled", from PYTHONDONTWRITEBYTECODE, is harmless).
BAD = re.compile(r"deprecat|warning.*licen[cs]e", re.IGNORECASE)


@dataclass(frozen=True)
class Built:
    wheel: pathlib.Path
    sdist: pathlib.Path
    output: str


def _run(argv: list[str], timeout: float = 120, cwd: str | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    out = tmp_path_factory.mktemp("dist")
    proc = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                 str(ROOT)], cwd=str(out))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    (wheel,) = out.glob("lbclient-*.whl")
    (sdist,) = out.glob("lbclient-*.tar.gz")
    yield Built(wheel, sdist, output)


def test_build_config_is_pep_639() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert project["project"]["license-files"] == ["LICENSE"]
    assert not any(c.startswith("License ::") for c in project["project"].get(
        "classifiers", []))                     # PEP 639: the expression replaces them
    assert "setuptools>=77" in project["build-system"]["requires"]
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_build_prints_no_deprecation_or_license_warning(built: Built) -> None:
    bad = [line for line in built.output.splitlines() if BAD.search(line)]
    assert not bad, "\n".join(bad)


def test_wheel_has_protos_stubs_and_py_typed(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    text = metadata.decode()
    assert "License-Expression: Apache-2.0" in text and "License-File: LICENSE" in text
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "lbclient/py.typed" in names
    generated = sorted(n for n in names if re.search(r"_pb2(_grpc)?\.py$", n))
    assert len(generated) >= 3, generated        # echo, orca, etcd at least
    no_stub = [n for n in generated if n + "i" not in names]
    assert not no_stub, f"generated modules without a .pyi stub in the wheel: {no_stub}"
    # Each generated module's .proto source sits next to it (echo_pb2.py -> echo.proto).
    no_proto = [n for n in generated
                if re.sub(r"_pb2(_grpc)?\.py$", ".proto", n) not in names]
    assert not no_proto, f"generated modules without their .proto in the wheel: {no_proto}"
    # Whatever stubs and protos the source tree has, the wheel has (the globs work).
    tree = {p.relative_to(ROOT).as_posix() for pattern in ("*.pyi", "*.proto")
            for p in (ROOT / "lbclient").rglob(pattern)}
    assert tree <= names, sorted(tree - names)
    assert not [n for n in names if n.startswith(("tests/", "docs/", "build/"))]


def test_sdist_has_docs_examples_protos_scripts_tests(built: Built) -> None:
    with tarfile.open(built.sdist) as tf:
        members = {m.name.split("/", 1)[1]: m for m in tf.getmembers() if "/" in m.name}
    listed = _run(["git", "-C", str(ROOT), "ls-files", *SDIST_DIRS])
    tracked = listed.stdout.split() if listed.returncode == 0 else [   # not a checkout
        p.relative_to(ROOT).as_posix() for top in SDIST_DIRS for p in (ROOT / top).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    assert tracked, "found no files to look for"
    # Every tracked file that still exists (another change may be deleting one).
    missing = [f for f in tracked if f not in members and (ROOT / f).exists()]
    assert not missing, missing
    for top in SDIST_DIRS:
        assert any(n.startswith(top + "/") for n in members), top
    for name in ("LICENSE", "README.md", "pyproject.toml", "MANIFEST.in"):
        assert name in members, name
    assert members["scripts/test.sh"].mode & 0o111, "scripts lost their executable bit"
    assert not [n for n in members if n.endswith(".pyc") or "/.venv/" in f"/{n}"]


MYPY_OK = '''\
"""A user's script: typed use of lbclient and its fake backends."""
import lbclient
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc


def main() -> int:
    config: dict[str, object] = {"loadBalancingConfig": [{"round_robin": {}}]}
    with Fleet(2) as fleet, lbclient.insecure_channel(fleet.target,
                                                      service_config=config) as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        reply = stub.Unary(echo_pb2.EchoRequest(message="hi"), timeout=5,
                           wait_for_ready=True)
        text: str = reply.message
        infos: list[lbclient.EndpointInfo] = channel.endpoints()
        print(lbclient.__file__)
        print(text, len(infos), sorted(e.address for e in infos) == sorted(fleet.addresses))
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
'''

# Mistakes the stubs must catch: were a module untyped (Any), mypy would pass these.
MYPY_BAD = '''\
import lbclient
from lbclient.testing import echo_pb2

count: int = echo_pb2.EchoRequest(message="hi").message
channel: int = lbclient.insecure_channel("ipv4:127.0.0.1:1")
'''


def test_wheel_installs_runs_and_type_checks(built: Built, tmp_path: pathlib.Path) -> None:
    if _run([sys.executable, "-m", "mypy", "--version"]).returncode != 0:
        pytest.fail("mypy is not installed: it is in the test extra (./scripts/test.sh)")
    venv = tmp_path / "venv"
    proc = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert proc.returncode == 0, proc.stderr
    python = venv / "bin" / "python"
    install = _run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--no-deps", "--no-index", "--disable-pip-version-check",
                    str(built.wheel)])
    output = install.stdout + install.stderr
    assert install.returncode == 0, output
    assert "Successfully installed lbclient-" in output
    noise = [line for line in output.splitlines()
             if re.search(r"warning|deprecat|error", line, re.IGNORECASE)
             and "is ignored: it is neither a file nor a directory" not in line]
    assert not noise, output                 # (that one is this machine's pip config)
    # The dependencies (grpcio, protobuf, ...) from this environment, after the install.
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                 "['purelib'])"]).stdout.strip()
    pathlib.Path(site, "_lbclient_test_deps.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "user"
    work.mkdir()
    (work / "user_app.py").write_text(MYPY_OK)
    (work / "user_mistakes.py").write_text(MYPY_BAD)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    ran = _run([str(python), "user_app.py"], cwd=str(work), env=env, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    where, answer = ran.stdout.splitlines()[:2]
    assert where.startswith(site), (where, site)         # the wheel, not the checkout
    assert answer == "hi 2 True"

    mypy = [sys.executable, "-m", "mypy", "--strict", "--python-executable", str(python),
            "--cache-dir", str(tmp_path / "mypy-cache"), "--no-error-summary",
            "--hide-error-context", "--show-error-codes"]
    good = _run([*mypy, "user_app.py"], cwd=str(work), env=env)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = _run([*mypy, "user_mistakes.py"], cwd=str(work), env=env)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    errors = [line for line in bad.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["4", "5"], bad.stdout
    assert all("[assignment]" in line for line in errors), bad.stdout
