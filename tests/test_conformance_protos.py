"""The generated interop modules (lbclient/testing/_proto/interop):

* they are what scripts/gen_protos.sh makes from protos/ today (the script is run on a copy
  of protos/ and scripts/ in a temporary tree, and its output compared file by file);
* they live in a private descriptor pool, so a second copy of grpc.testing registered in the
  default pool, as grpcio's own interop tests generate it (files named
  src/proto/grpc/testing/*.proto), imports in the same process, in either order; the two
  copies are wire-compatible, message by message and through a real RPC.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ("lbclient/testing/_proto", "lbclient/_proto")


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    run = subprocess.run(["bash", str(tmp_path / "scripts/gen_protos.sh")],
                         env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    stale = []
    for folder in GENERATED:
        made = {p.relative_to(tmp_path) for p in (tmp_path / folder).rglob("*") if p.is_file()}
        assert made, f"gen_protos.sh wrote nothing under {folder}"
        for rel in sorted(made):
            committed = ROOT / rel
            if not committed.is_file() or committed.read_bytes() != (tmp_path / rel).read_bytes():
                stale.append(str(rel))
    assert not stale, f"run scripts/gen_protos.sh: these differ from its output: {stale}"


def _default_pool_copy(tmp_path: Path) -> Path:
    """grpc.testing generated into the default pool under grpc's own file names."""
    out = tmp_path / "gen"
    src = tmp_path / "src_protos" / "src/proto/grpc/testing"
    src.mkdir(parents=True)
    for name in ("empty", "messages", "test"):
        text = (ROOT / f"protos/grpc/testing/{name}.proto").read_text()
        text = text.replace('import "grpc/testing/', 'import "src/proto/grpc/testing/')
        (src / f"{name}.proto").write_text(text)
    out.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path / 'src_protos'}",
         f"--python_out={out}", f"--grpc_python_out={out}",
         *(str(src / f"{n}.proto") for n in ("empty", "messages", "test"))],
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return out


CHECK = textwrap.dedent("""
    import sys
    import grpc
    from google.protobuf import descriptor_pool
    order = sys.argv[1]
    if order == "ours-first":
        from lbclient.testing.interop import InteropServer, messages_pb2 as ours
        from src.proto.grpc.testing import messages_pb2 as theirs, test_pb2_grpc as their_grpc
    else:
        from src.proto.grpc.testing import messages_pb2 as theirs, test_pb2_grpc as their_grpc
        from lbclient.testing.interop import InteropServer, messages_pb2 as ours

    name = "grpc.testing.SimpleRequest"
    assert ours.SimpleRequest.DESCRIPTOR.full_name == theirs.SimpleRequest.DESCRIPTOR.full_name
    default = descriptor_pool.Default().FindMessageTypeByName(name)
    assert default.file.name == "src/proto/grpc/testing/messages.proto", default.file.name
    assert ours.SimpleRequest.DESCRIPTOR.file.name == "grpc/testing/messages.proto"

    request = ours.SimpleRequest(response_size=7, fill_server_id=True,
                                 payload=ours.Payload(body=b"abc"),
                                 response_status=ours.EchoStatus(code=0, message="m"))
    parsed = theirs.SimpleRequest.FromString(request.SerializeToString())
    assert (parsed.response_size, parsed.fill_server_id, parsed.payload.body,
            parsed.response_status.message) == (7, True, b"abc", "m"), parsed
    back = ours.SimpleRequest.FromString(parsed.SerializeToString())
    assert back == request

    server = InteropServer()
    try:
        with grpc.insecure_channel(server.address) as channel:
            reply = their_grpc.TestServiceStub(channel).UnaryCall(
                theirs.SimpleRequest(response_size=5, fill_server_id=True), timeout=10)
        assert len(reply.payload.body) == 5 and reply.server_id == server.address, reply
    finally:
        server.stop()
    print("ok")
""")


@pytest.mark.parametrize("order", ["ours-first", "theirs-first"])
def test_private_pool_coexists_with_grpc_testing(tmp_path: Path, order: str) -> None:
    gen = _default_pool_copy(tmp_path)
    path = os.pathsep.join([str(gen), str(ROOT), os.environ.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", CHECK, order], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": path}, cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr
