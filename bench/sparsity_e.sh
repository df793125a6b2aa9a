#!/usr/bin/env bash
# Before/after of the mrp kernel (issue 17) on the recorded reduced protocol of bench/SPARSITY.md
# (16 x 512 C4 calibration tokens, seed 0; WikiText-2 L=512, first 16 windows; old driver, 1 thread), in one
# session, one process at a time: SparseGPT and mrp with the new kernel (tree of NEW_REV), then mrp with
# the kernel before issue 17 (tree of OLD_REV). Both trees are exported with git archive, so the driver
# that was replaced by the method layer is the one measured. Results: bench/results/sparsity_e.json (+ .md).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
OLD_REV=${OLD_REV:-9368745} NEW_REV=${NEW_REV:-0c8e936}
PY=$PWD/.venv/bin/python
for rev in "$NEW_REV" "$OLD_REV"; do
  rm -rf "/tmp/fxprune-$rev" && mkdir -p "/tmp/fxprune-$rev" && git archive "$rev" | tar -x -C "/tmp/fxprune-$rev"
done
(cd "/tmp/fxprune-$NEW_REV" && PYTHONPATH=$PWD $PY bench/sparsity.py --model smollm2 --calib-samples 16 \
    --calib-seqlen 512 --eval-windows 16 --threads 1 --tag sparsity_e --runs sparsegpt@2:4 mrp@2:4)
(cd "/tmp/fxprune-$OLD_REV" && PYTHONPATH=$PWD $PY bench/sparsity.py --model smollm2 --calib-samples 16 \
    --calib-seqlen 512 --eval-windows 16 --threads 1 --tag sparsity_e --runs mrp@2:4)
$PY - "$NEW_REV" "$OLD_REV" <<'PY'
import json, pathlib, sys
new_rev, old_rev = sys.argv[1:]
new = json.loads(pathlib.Path(f"/tmp/fxprune-{new_rev}/bench/results/sparsity_e.json").read_text())
old = json.loads(pathlib.Path(f"/tmp/fxprune-{old_rev}/bench/results/sparsity_e.json").read_text())
for r in new["results"]:
    r["rev"] = new_rev
for r in old["results"]:
    r["method"], r["rev"] = "mrp-old", old_rev
new["meta"]["old_meta"] = old["meta"]
new["results"] += old["results"]
out = pathlib.Path("bench/results/sparsity_e.json")
out.write_text(json.dumps(new, indent=1))
lines = [f"Reduced protocol (as bench/SPARSITY.md 2026-11-27): {new['meta']['calib']}; {new['meta']['eval']}; "
         f"dense PPL {new['meta']['dense_ppl']:.3f}; old driver; 1 thread.", "",
         "| method | kernel rev | 2:4 PPL | sparsify wall s | sparsify CPU s |", "|---|---|---|---|---|"]
for r in new["results"]:
    lines.append(f"| {r['method']} | {r['rev']} | {r['ppl']:.3f} | {r['seconds']:.0f} | {r.get('cpu_seconds', float('nan')):.0f} |")
out.with_suffix(".md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
