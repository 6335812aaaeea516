#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then run it.
#   ./scripts/test.sh            # whole suite
#   ./scripts/test.sh -k etcd    # extra arguments go to pytest
# Creates .venv (Python >= 3.11), installs lbclient with its test extras (a strict editable
# install, so that mypy and subprocesses see the package as installed), installs the Debian
# packages the integration tests start (etcd-server for the etcd resolver, dnsmasq for the
# DNS resolver, prometheus for the end-to-end metrics test) when they are missing, then runs
# the static checks (scripts/static_checks.sh: ruff, mypy --strict lbclient; the run stops
# if either fails) and then pytest. The setup is quiet: its output goes to
# .venv/setup.log, shown only if it fails.
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
quiet "${PIP[@]}" install --config-settings editable_mode=strict -e '.[test,demo,dns,prometheus]'
need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server etcd-client)
command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq-base)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  APT=($SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends)
  if ! "${APT[@]}" "${need[@]}" >>"$LOG" 2>&1; then
    quiet $SUDO apt-get update -q
    quiet "${APT[@]}" "${need[@]}"
  fi
fi
./scripts/static_checks.sh
exec .venv/bin/python -m pytest "$@"
