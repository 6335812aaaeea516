#!/usr/bin/env bash
# Regenerate every protobuf/grpc module of lbclient from the sources in protos/.
#
# Usage (from anywhere):   scripts/gen_protos.sh
# Interpreter:             $PYTHON, else .venv/bin/python, else python3. It needs grpcio-tools
#                          and mypy-protobuf (both in the `test` extra): the protoc plugins
#                          protoc-gen-mypy / protoc-gen-mypy_grpc are taken from the
#                          interpreter's bin directory, else from $PATH.
#
# Reads   protos/lbclient/testing/echo.proto   (proto file name "lbclient/testing/echo.proto")
# Writes  lbclient/testing/_proto/{__init__.py,echo.proto,echo_pb2.py,echo_pb2.pyi,
#                                  echo_pb2_grpc.py,echo_pb2_grpc.pyi}
# Reads   protos/grpc/testing/{empty,messages,test}.proto (the gRPC interop test service,
#         package grpc.testing, written for lbclient from gRPC's interop test descriptions)
# Writes  lbclient/testing/_proto/interop/{__init__.py,_pool.py, and for NAME in empty,
#         messages, test: NAME.proto, NAME_pb2.py, NAME_pb2.pyi; test_pb2_grpc.py(i)}
# Reads   protos/xds/data/orca/v3/orca_load_report.proto (ORCA load reports, gRFC A51)
# Writes  lbclient/_proto/{__init__.py,orca_load_report.proto,orca_load_report_pb2.py(i)}
# Reads   protos/etcd/etcd_v3.proto (the etcd v3 API subset of the etcd resolver)
# Writes  lbclient/_proto/etcd/{__init__.py,etcd_v3.proto,etcd_v3_pb2.py,etcd_v3_pb2.pyi}
#
# How the output is shaped:
#  * Package-relative imports. protoc names modules after the proto path, e.g.
#    echo_pb2_grpc.py would import "from lbclient.testing import echo_pb2" and
#    test_pb2.py "from grpc.testing import empty_pb2" (which would even resolve inside
#    grpcio's own "grpc" package). We generate into a scratch directory, move the files into
#    the _proto packages and rewrite those imports to "from . import X_pb2".
#  * Private descriptor pools. The ORCA module and the interop modules register their files
#    in a DescriptorPool of their own instead of the default one, so that another copy of
#    the same public files (xds-protos' ORCA messages; grpc's own grpc.testing interop
#    protos, as grpcio's tests generate them) can be imported in the same process. The three
#    interop modules share one pool (interop/_pool.py), since test.proto imports the others.
#  * Typed. Every message module gets a .pyi (protoc's --pyi_out for the lbclient/_proto
#    modules; mypy-protobuf's --mypy_out for lbclient/testing/_proto), and every *_pb2_grpc.py
#    a .pyi from mypy-protobuf's protoc-gen-mypy_grpc (--mypy_grpc_out). mypy reads a .pyi in
#    preference to the .py beside it, so `mypy --strict` on code using these modules (and on
#    lbclient/testing/_proto itself) type-checks against the stubs; the untyped generated .py
#    files are never analysed. The stubs need types-protobuf and types-grpcio (test extra).
#    Check: `mypy --strict --follow-imports=skip lbclient/testing/_proto` reports nothing.
#    (Without `skip` mypy also checks the parent packages' imports, i.e. all of lbclient;
#    protoc's --pyi_out stub of the etcd module fails --strict there: bare `Mapping`.)
#  * The sources ship with the code: each .proto is copied next to its generated module
#    (e.g. lbclient/testing/_proto/echo.proto), for the wheel's package data.
#  * Deterministic: running the script twice leaves `git diff` empty.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
BIN="$("$PYTHON" -c 'import os, sys; print(os.path.dirname(os.path.abspath(sys.executable)))')"
plugin() {  # plugin NAME -> path of the protoc plugin executable NAME
    if [[ -x "$BIN/$1" ]]; then echo "$BIN/$1"; return; fi
    command -v "$1" || { echo "gen_protos.sh: $1 not found (pip install mypy-protobuf)" >&2; exit 1; }
}
MYPY_PLUGINS=(--plugin=protoc-gen-mypy="$(plugin protoc-gen-mypy)"
              --plugin=protoc-gen-mypy_grpc="$(plugin protoc-gen-mypy_grpc)")

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
fail() { echo "gen_protos.sh: $*" >&2; exit 1; }

# ------------------------------------------------------------------ Echo (lbclient.testing)
OUT=lbclient/testing/_proto
"$PYTHON" -m grpc_tools.protoc -Iprotos "${MYPY_PLUGINS[@]}" \
    --python_out="$TMP" --grpc_python_out="$TMP" \
    --mypy_out=quiet:"$TMP" --mypy_grpc_out=quiet:"$TMP" \
    protos/lbclient/testing/echo.proto

GEN="$TMP/lbclient/testing"
mkdir -p "$OUT"
for f in echo_pb2_grpc.py echo_pb2_grpc.pyi; do
    sed -e 's/^from lbclient\.testing import echo_pb2 as /from . import echo_pb2 as /' \
        -e 's|lbclient/testing/echo_pb2_grpc\.py|lbclient/testing/_proto/echo_pb2_grpc.py|' \
        "$GEN/$f" >"$OUT/$f"
    if grep -q '^from lbclient\.testing import' "$OUT/$f"; then
        fail "failed to rewrite the echo_pb2 import of $f"
    fi
done
cp "$GEN/echo_pb2.py" "$GEN/echo_pb2.pyi" "$OUT/"
cp protos/lbclient/testing/echo.proto "$OUT/echo.proto"
cat >"$OUT/__init__.py" <<'PY'
"""Generated protobuf/grpc modules of lbclient.testing (Echo here, the gRPC interop test
service in ``interop``). Do not edit; run scripts/gen_protos.sh."""
PY
echo "generated $OUT/{echo.proto,echo_pb2.py,echo_pb2.pyi,echo_pb2_grpc.py,echo_pb2_grpc.pyi}"

# --------------------------------------------- gRPC interop test service (grpc.testing)
IOUT=lbclient/testing/_proto/interop
"$PYTHON" -m grpc_tools.protoc -Iprotos "${MYPY_PLUGINS[@]}" \
    --python_out="$TMP" --grpc_python_out="$TMP" \
    --mypy_out=quiet:"$TMP" --mypy_grpc_out=quiet:"$TMP" \
    protos/grpc/testing/empty.proto protos/grpc/testing/messages.proto \
    protos/grpc/testing/test.proto
IGEN="$TMP/grpc/testing"
mkdir -p "$IOUT"
# Only test.proto has services: drop the empty *_pb2_grpc modules of the other two.
for f in empty_pb2.py empty_pb2.pyi messages_pb2.py messages_pb2.pyi test_pb2.py test_pb2.pyi \
         test_pb2_grpc.py test_pb2_grpc.pyi; do
    sed -e 's/^from grpc\.testing import \([a-z_]*_pb2\) as /from . import \1 as /' \
        -e 's|grpc/testing/test_pb2_grpc\.py|lbclient/testing/_proto/interop/test_pb2_grpc.py|' \
        -e "s/^\(_builder\.BuildTopDescriptorsAndMessages(DESCRIPTOR, '\)grpc\.testing\./\1lbclient.testing._proto.interop./" \
        -e 's/^DESCRIPTOR = _descriptor_pool\.Default()\.AddSerializedFile(/DESCRIPTOR = _pool.POOL.AddSerializedFile(/' \
        -e 's/^# @@protoc_insertion_point(imports)$/&\nfrom . import _pool/' \
        "$IGEN/$f" >"$IOUT/$f"
    if grep -q '^from grpc\.testing import' "$IOUT/$f"; then
        fail "failed to rewrite the grpc.testing imports of $f"
    fi
    case "$f" in
        *_pb2.py)
            grep -q '^DESCRIPTOR = _pool\.POOL\.AddSerializedFile(' "$IOUT/$f" \
                || fail "failed to give $f the interop descriptor pool"
            grep -q "'lbclient\.testing\._proto\.interop\.[a-z_]*_pb2', _globals)" "$IOUT/$f" \
                || fail "failed to rename the module of $f" ;;
    esac
done
for name in empty messages test; do
    cp "protos/grpc/testing/$name.proto" "$IOUT/$name.proto"
done
cat >"$IOUT/_pool.py" <<'PY'
"""The descriptor pool of the generated interop modules (not the default pool, so grpc's
own grpc.testing modules can be imported in the same process). Written by
scripts/gen_protos.sh; do not edit."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
PY
cat >"$IOUT/__init__.py" <<'PY'
"""Generated modules of the gRPC interop test service (proto package ``grpc.testing``,
written for lbclient from gRPC's interop test descriptions; wire-compatible with grpc's).
Do not edit; run scripts/gen_protos.sh."""
PY
echo "generated $IOUT/{_pool.py,{empty,messages,test}{.proto,_pb2.py,_pb2.pyi},test_pb2_grpc.py(i)}"

# ORCA: messages only (no service). The generated module registers its file in a private
# DescriptorPool instead of the default one, so that another copy of the same public
# file (e.g. from the xds-protos package) can be imported in the same process.
ORCA_OUT=lbclient/_proto
"$PYTHON" -m grpc_tools.protoc -Iprotos --python_out="$TMP" --pyi_out="$TMP" \
    protos/xds/data/orca/v3/orca_load_report.proto
mkdir -p "$ORCA_OUT"
sed -e 's/_descriptor_pool\.Default()\.AddSerializedFile(/_descriptor_pool.DescriptorPool().AddSerializedFile(/' \
    "$TMP/xds/data/orca/v3/orca_load_report_pb2.py" >"$ORCA_OUT/orca_load_report_pb2.py"
if ! grep -q '_descriptor_pool\.DescriptorPool()\.AddSerializedFile(' "$ORCA_OUT/orca_load_report_pb2.py"; then
    fail "failed to give the ORCA module a private descriptor pool"
fi
cp "$TMP/xds/data/orca/v3/orca_load_report_pb2.pyi" "$ORCA_OUT/"
cp protos/xds/data/orca/v3/orca_load_report.proto "$ORCA_OUT/orca_load_report.proto"
cat >"$ORCA_OUT/__init__.py" <<'PY'
"""Generated protobuf modules of lbclient (ORCA load reports). Do not edit; run
scripts/gen_protos.sh."""
PY
echo "generated $ORCA_OUT/{orca_load_report.proto,orca_load_report_pb2.py,orca_load_report_pb2.pyi}"

# etcd v3 subset: messages only, in a private proto package (lbclient.internal.etcdv3);
# the RPC paths are etcd's own and are written out in lbclient/resolver/_etcd_client.py.
ETCD_OUT=lbclient/_proto/etcd
"$PYTHON" -m grpc_tools.protoc -Iprotos --python_out="$TMP" --pyi_out="$TMP" \
    protos/etcd/etcd_v3.proto
mkdir -p "$ETCD_OUT"
cp "$TMP/etcd/etcd_v3_pb2.py" "$TMP/etcd/etcd_v3_pb2.pyi" "$ETCD_OUT/"
cp protos/etcd/etcd_v3.proto "$ETCD_OUT/etcd_v3.proto"
cat >"$ETCD_OUT/__init__.py" <<'PY'
"""Generated etcd v3 API messages (a subset). Do not edit; run scripts/gen_protos.sh."""
PY
echo "generated $ETCD_OUT/{etcd_v3.proto,etcd_v3_pb2.py,etcd_v3_pb2.pyi}"
