"""``python -m lbclient.testing serve``: prints the addresses, then a ready target that
``lbclient probe`` (and a channel) accepts as is; the ports file still has the addresses
only; nothing on stderr."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import pytest

from lbclient.cli import main


def test_serve_prints_addresses_then_a_ready_target(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    ports = tmp_path / "ports.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("GRPC_VERBOSITY", "GRPC_TRACE")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lbclient.testing", "serve", "--count", "2", "--ports-file",
         str(ports)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().rstrip("\n") for _ in range(3)]
        addresses, target = lines[:2], lines[2]
        assert all(a.startswith("127.0.0.1:") for a in addresses), lines
        assert target == "ipv4:" + ",".join(addresses)
        assert ports.read_text().split() == addresses          # unchanged format
        assert main(["probe", target, "--timeout", "5"]) == 0
        assert "2/2 endpoints healthy" in capsys.readouterr().out
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert err == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_docs_name_exactly_the_serve_options() -> None:
    import argparse
    import re

    from lbclient.testing.__main__ import _parser

    docs = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    synopsis = docs.split("## `python -m lbclient.testing serve`", 1)[1].split("```", 2)[1]
    action = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    serve = action.choices["serve"]
    options = {o for a in serve._actions for o in a.option_strings if o.startswith("--")}
    assert set(re.findall(r"--[a-z][a-z-]*", synopsis)) == options - {"--help"}
