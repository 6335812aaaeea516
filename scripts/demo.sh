#!/usr/bin/env bash
# Set up lbclient on a fresh machine and run the demo:
#   ./scripts/demo.sh                  # every policy in turn, ~8 s each
#   ./scripts/demo.sh --policy least_request --duration 20
# Creates .venv (Python >= 3.11), installs lbclient with the demo extra (rich), then runs
# `python -m lbclient demo`: a local fleet of fake backends, steady traffic through the
# balancer, and a live per-endpoint table. Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[demo]'
exec .venv/bin/python -m lbclient demo "$@"
