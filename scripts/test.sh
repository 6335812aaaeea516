#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then run it.
#   ./scripts/test.sh            # whole suite
#   ./scripts/test.sh -k etcd    # extra arguments go to pytest
# Creates .venv (Python >= 3.11), installs lbclient with its test extras, installs the
# Debian packages the integration tests start (etcd-server for the etcd resolver,
# dnsmasq for the DNS resolver) when they are missing, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test,demo,dns,prometheus]'
need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server etcd-client)
command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq-base)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && \
         $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null; }
fi
exec .venv/bin/python -m pytest "$@"
