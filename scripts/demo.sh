#!/usr/bin/env bash
# Set up lbclient on a fresh machine and run the demo:
#   ./scripts/demo.sh                  # every policy in turn, ~8 s each
#   ./scripts/demo.sh --policy least_request --duration 20
# Creates .venv (Python >= 3.11), installs lbclient with the demo extra (rich), then runs
# `python -m lbclient demo`: a local fleet of fake backends, steady traffic through the
# balancer, and a live per-endpoint table. Extra arguments go to the demo. The setup is
# quiet: its output goes to .venv/setup.log, shown only if it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
LOG=.venv/setup.log
: >"$LOG"
quiet() {   # run "$@" with its output in $LOG; on failure show the log and stop
  if ! "$@" >>"$LOG" 2>&1; then
    echo "setup failed: $*" >&2
    cat "$LOG" >&2
    exit 1
  fi
}
PIP=(.venv/bin/python -m pip -q --disable-pip-version-check)
quiet "${PIP[@]}" install --upgrade pip
quiet "${PIP[@]}" install --config-settings editable_mode=strict -e '.[demo]'
exec .venv/bin/python -m lbclient demo "$@"
