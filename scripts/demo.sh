#!/usr/bin/env bash
# README command 1: set everything up (cached after the first run), then run the main job on the
# embedded defaults and serve the dashboard. Extra arguments go to `clio-stream demo`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
bash "$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/clio-stream" demo "$@"
