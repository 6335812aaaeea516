"""Quiet defaults: the command-line tools print no grpc C-core log lines unless the user
asks for them, and ``./scripts/demo.sh`` starts with the demo's own output, not pip's."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from lbclient.cli._grpc_env import wants_quiet

ROOT = pathlib.Path(__file__).resolve().parent.parent

# A backend goes away under a connected client: grpc's C core logs (INFO) e.g.
# "chttp2_transport.cc:1403] ipv4:127.0.0.1:5: Got goaway [2] err=UNAVAILABLE: ...".
# With argv "quiet" the program first calls the CLI's quiet_grpc(), as `lbclient` and
# `python -m lbclient.testing` do: by then grpc is imported (`lbclient` imports it), so
# this also exercises the re-execution.
GOAWAY = """
import sys, time
import lbclient
from lbclient.cli._grpc_env import quiet_grpc
if sys.argv[1:] == ["quiet"]:
    quiet_grpc()
import grpc
from lbclient.testing import Backend, echo_pb2, echo_pb2_grpc
for _ in range(3):
    backend = Backend().start()
    channel = grpc.insecure_channel(backend.address)
    echo_pb2_grpc.EchoStub(channel).Unary(echo_pb2.EchoRequest(message="x"), timeout=5)
    backend.stop()
    time.sleep(0.2)
    channel.close()
print("done")
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GRPC_VERBOSITY", "GRPC_TRACE")}
    return {**env, **extra}


def test_cli_entry_quiets_grpc_unless_the_user_chose() -> None:
    runs = {
        "default": (["plain"], _env()),
        "quiet": (["quiet"], _env()),
        "user INFO": (["quiet"], _env(GRPC_VERBOSITY="INFO")),
    }
    procs = {name: subprocess.Popen([sys.executable, "-c", GOAWAY, *argv], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, cwd=str(ROOT))
             for name, (argv, env) in runs.items()}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0 and stdout == "done\n", (name, stdout, stderr)
        out[name] = stderr
    # Without it grpc logs the GOAWAY (so this test can fail); with it, nothing; a
    # verbosity the user set wins.
    assert "Got goaway" in out["default"], out["default"]
    assert out["quiet"] == ""
    assert "Got goaway" in out["user INFO"], out["user INFO"]


def test_wants_quiet_respects_the_users_variables() -> None:
    assert wants_quiet({})
    assert wants_quiet({"GRPC_TRACE": ""})
    assert not wants_quiet({"GRPC_VERBOSITY": "DEBUG"})
    assert not wants_quiet({"GRPC_VERBOSITY": ""})
    assert not wants_quiet({"GRPC_TRACE": "http"})       # traces are INFO lines


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(),
                    reason="scripts/demo.sh sets up .venv; run through ./scripts/test.sh")
def test_demo_script_starts_with_the_demo() -> None:
    """What a newcomer sees first: the fleet line, not pip or setuptools output; and
    nothing at all on stderr (no pip warnings, no grpc C-core lines). The set-up is the
    same install ./scripts/test.sh just made (pip re-installs the editable package)."""
    proc = subprocess.run([str(ROOT / "scripts" / "demo.sh"), "--plain", "--duration", "1",
                           "--policy", "round_robin"], capture_output=True, text=True,
                          timeout=300, env=_env(), cwd="/")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("fleet: fast (1ms), slow (40ms)"), lines[:5]
    assert lines[2].startswith("== [1/1] round_robin  config: "), lines[:5]
    assert proc.stderr == ""
    assert "taken out, and why:" in proc.stdout
    assert (ROOT / ".venv" / "setup.log").exists()
