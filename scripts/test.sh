#!/usr/bin/env bash
# Set up (idempotent, fast when nothing changed), then run the test suite.
#
#   bash scripts/test.sh                   # tests -q
#   bash scripts/test.sh tests/unit -x     # any pytest arguments
#
# pytest's exit code 5 ("no tests collected") counts as a failure: a suite that silently ran nothing
# must not pass CI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"

bash "$ROOT/scripts/setup.sh"

if [ "$#" -eq 0 ]; then
    set -- tests -q
fi

rc=0
"$ROOT/.venv/bin/python" -m pytest "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "[test] pytest collected no tests; treating that as a failure" >&2
    exit 1
fi
exit "$rc"
