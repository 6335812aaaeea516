#!/usr/bin/env bash
# Static checks: ruff on the code, tests, benchmarks and examples, and mypy --strict on
# lbclient (settings: [tool.mypy] in pyproject.toml). Runs both, then exits non-zero if
# either failed. Needs the venv ./scripts/test.sh sets up (.venv with the test extra).
#   ./scripts/static_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  echo "static_checks: no .venv here; run ./scripts/test.sh once to create it" >&2
  exit 2
fi
status=0
echo "== ruff check lbclient tests benchmarks examples"
.venv/bin/python -m ruff check lbclient tests benchmarks examples || status=1
echo "== mypy --strict lbclient"
.venv/bin/python -m mypy --strict lbclient || status=1
if [ "$status" -ne 0 ]; then
  echo "static_checks: FAILED" >&2
fi
exit "$status"
