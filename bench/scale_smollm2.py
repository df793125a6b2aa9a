"""Issue 15's control: SmolLM2 (in memory, as before) pruned by the code before the memory levers and by
the code after, interleaved; peak RSS and CPU time per run and whether the pruned tensors are identical.

    python bench/scale_smollm2.py --old a79dc29 --recipes goa-liar-ffn-global-20,sparsegpt-2of4 --samples 16

Each run is ``fxprune prune smollm2 --recipe R --calib c4 --calib-samples N --calib-seq-len L --out DIR``
in its own process under ``/usr/bin/time -v``, OMP_NUM_THREADS=1, with ``PYTHONPATH`` pointing at a
``git archive`` of the revision (``--old``) or at this checkout. Rows go to bench/results/scale_smollm2.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))
from bench.scale import tree_of  # noqa: E402




def run(tree: Path, recipe: str, args, out: Path) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "fxprune", "--memory-limit", "0", "prune", "smollm2",
           "--recipe", recipe, "--calib", "c4", "--calib-samples", str(args.samples), "--calib-seq-len",
           str(args.seq_len), "--out", str(out), "--json"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(tree),
               FXPRUNE_DATA=os.environ.get("FXPRUNE_DATA", str(REPO.parent / "shared" / "data")))
    # cwd = the tree: ``python -m`` puts the working directory before PYTHONPATH
    which = subprocess.run([sys.executable, "-c", "import fxprune; print(fxprune.__file__)"], env=env, cwd=str(tree),
                           capture_output=True, text=True).stdout.strip()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(tree))
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", r.stderr))
    row = {"fxprune_file": which, "rc": r.returncode, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
           "peak_rss_gb": round(int(m.group(1)) / 2 ** 20, 3) if m else None, "command": " ".join(cmd)}
    if r.returncode == 0:
        rep = json.loads(r.stdout[r.stdout.index("{"):])
        row.update(prune_s=rep.get("prune_seconds"), params_after=rep.get("params_after"))
    else:
        row["stderr_tail"] = r.stderr[-600:]
    return row


def tensors(out: Path) -> dict:
    from safetensors.torch import load_file
    t = {}
    for f in sorted(out.glob("*.safetensors")):
        t.update(load_file(str(f)))
    return t


def identical(a: Path, b: Path) -> bool:
    import torch
    ta, tb = tensors(a), tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--old", required=True, help="git revision before the change")
    p.add_argument("--recipes", default="goa-liar-ffn-global-20,sparsegpt-2of4")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="fxprune-smollm2-"))
    new_rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
    trees = {"old " + args.old: tree_of(args.old, scratch), "new " + new_rev: REPO}
    try:
        for recipe in args.recipes.split(","):
            outs = {}
            for rep in range(args.repeats):
                for label, tree in trees.items():  # interleaved: old, new, old, new
                    out = scratch / f"out-{label.split()[0]}-{recipe}-{rep}"
                    row = {"code": label, "recipe": recipe, "repeat": rep, "calib": f"c4 {args.samples} x {args.seq_len}",
                           **run(tree, recipe, args, out), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
                    outs.setdefault(label, out)
                    if rep and row["rc"] == 0:
                        shutil.rmtree(out, ignore_errors=True)
                    print(json.dumps(row), flush=True)
                    with open(RESULTS / "scale_smollm2.jsonl", "a") as f:
                        f.write(json.dumps(row) + "\n")
            a, b = outs.values()
            same = {"recipe": recipe, "tensors_identical_old_new": identical(a, b)}
            print(json.dumps(same), flush=True)
            with open(RESULTS / "scale_smollm2.jsonl", "a") as f:
                f.write(json.dumps(same) + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
