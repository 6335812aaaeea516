#!/usr/bin/env bash
# Regenerate the Echo proto modules of lbclient.testing.
#
# Usage (from anywhere):   scripts/gen_protos.sh
# Interpreter:             $PYTHON, else .venv/bin/python, else python3 (needs grpcio-tools)
#
# Reads   protos/lbclient/testing/echo.proto   (proto file name "lbclient/testing/echo.proto")
# Writes  lbclient/testing/_proto/{__init__.py,echo_pb2.py,echo_pb2.pyi,echo_pb2_grpc.py}
# Reads   protos/xds/data/orca/v3/orca_load_report.proto (ORCA load reports, gRFC A51)
# Writes  lbclient/_proto/{__init__.py,orca_load_report_pb2.py,orca_load_report_pb2.pyi}
# Reads   protos/etcd/etcd_v3.proto (the etcd v3 API subset of the etcd resolver)
# Writes  lbclient/_proto/etcd/{__init__.py,etcd_v3_pb2.py,etcd_v3_pb2.pyi}
#
# protoc would place the output in lbclient/testing/ and make echo_pb2_grpc.py import
# "from lbclient.testing import echo_pb2"; we generate into a scratch directory, move the
# files into the _proto package and rewrite that import to the package-relative
# "from . import echo_pb2". The output is deterministic: running the script twice leaves
# `git diff` empty.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

OUT=lbclient/testing/_proto
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

"$PYTHON" -m grpc_tools.protoc -Iprotos \
    --python_out="$TMP" --pyi_out="$TMP" --grpc_python_out="$TMP" \
    protos/lbclient/testing/echo.proto

GEN="$TMP/lbclient/testing"
mkdir -p "$OUT"
sed -e 's/^from lbclient\.testing import echo_pb2 as /from . import echo_pb2 as /' \
    -e 's|lbclient/testing/echo_pb2_grpc\.py|lbclient/testing/_proto/echo_pb2_grpc.py|' \
    "$GEN/echo_pb2_grpc.py" >"$OUT/echo_pb2_grpc.py"
if grep -q '^from lbclient\.testing import' "$OUT/echo_pb2_grpc.py"; then
    echo "gen_protos.sh: failed to rewrite the echo_pb2 import" >&2
    exit 1
fi
cp "$GEN/echo_pb2.py" "$GEN/echo_pb2.pyi" "$OUT/"
cat >"$OUT/__init__.py" <<'PY'
"""Generated Echo protobuf/grpc modules. Do not edit; run scripts/gen_protos.sh."""
PY
echo "generated $OUT/{echo_pb2.py,echo_pb2.pyi,echo_pb2_grpc.py}"

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
    echo "gen_protos.sh: failed to give the ORCA module a private descriptor pool" >&2
    exit 1
fi
cp "$TMP/xds/data/orca/v3/orca_load_report_pb2.pyi" "$ORCA_OUT/"
cat >"$ORCA_OUT/__init__.py" <<'PY'
"""Generated protobuf modules of lbclient (ORCA load reports). Do not edit; run
scripts/gen_protos.sh."""
PY
echo "generated $ORCA_OUT/{orca_load_report_pb2.py,orca_load_report_pb2.pyi}"

# etcd v3 subset: messages only, in a private proto package (lbclient.internal.etcdv3);
# the RPC paths are etcd's own and are written out in lbclient/resolver/_etcd_client.py.
ETCD_OUT=lbclient/_proto/etcd
"$PYTHON" -m grpc_tools.protoc -Iprotos --python_out="$TMP" --pyi_out="$TMP" \
    protos/etcd/etcd_v3.proto
mkdir -p "$ETCD_OUT"
cp "$TMP/etcd/etcd_v3_pb2.py" "$TMP/etcd/etcd_v3_pb2.pyi" "$ETCD_OUT/"
cat >"$ETCD_OUT/__init__.py" <<'PY'
"""Generated etcd v3 API messages (a subset). Do not edit; run scripts/gen_protos.sh."""
PY
echo "generated $ETCD_OUT/{etcd_v3_pb2.py,etcd_v3_pb2.pyi}"
