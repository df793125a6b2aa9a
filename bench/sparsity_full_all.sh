#!/usr/bin/env bash
# Issue 17's whole measurement, one process at a time (run from the worktree root with nohup):
#  1. the recorded reduced protocol (16 x 512 calibration, 16 windows) at 2:4 for SparseGPT, the new
#     mrp kernel and the old one (main before issue 17, exported with git archive), same session;
#  2. the full protocol queue of bench/sparsity_full.py (resumable).
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
OLD_REV=${OLD_REV:-9368745}
PY=$PWD/.venv/bin/python
if [ ! -f bench/results/sparsity_e.json ] || ! grep -q '"mrp-old"' bench/results/sparsity_e.json; then
  PYTHONPATH=$PWD $PY bench/sparsity.py --model smollm2 --calib-samples 16 --calib-seqlen 512 --eval-windows 16 \
      --threads 1 --tag sparsity_e --runs sparsegpt@2:4 mrp@2:4
  rm -rf /tmp/fxprune-old && mkdir -p /tmp/fxprune-old && git archive "$OLD_REV" | tar -x -C /tmp/fxprune-old
  # the old kernel, in the old tree, reported as method "mrp-old" in the same results file
  (cd /tmp/fxprune-old && PYTHONPATH=/tmp/fxprune-old $PY bench/sparsity.py --model smollm2 --calib-samples 16 \
      --calib-seqlen 512 --eval-windows 16 --threads 1 --tag sparsity_e_old --runs mrp@2:4)
  $PY - <<'PY'
import json, pathlib
new = pathlib.Path("bench/results/sparsity_e.json"); old = pathlib.Path("/tmp/fxprune-old/bench/results/sparsity_e_old.json")
d, o = json.loads(new.read_text()), json.loads(old.read_text())
for r in o["results"]:
    r["method"] = "mrp-old"; r["note"] = "kernel of main@9368745 (before issue 17), same session"
d["results"] = [r for r in d["results"] if r["method"] != "mrp-old"] + o["results"]
new.write_text(json.dumps(d, indent=1))
PY
fi
PYTHONPATH=$PWD $PY bench/sparsity_full.py run
PYTHONPATH=$PWD $PY bench/sparsity_full.py render
