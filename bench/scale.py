"""Issue 15 measurements: peak RSS and wall time of onloaded prunes of synthetic LLaMA checkpoints of
real shapes (fxprune/models/synthetic.py), written to a scratch directory (never committed).

    python bench/scale.py --preset 1.1b --layers 22 --recipes goa-liar-ffn-global-20,sparsegpt-2of4
    python bench/scale.py --preset 7b --layers 2,4 --recipes sparsegpt-2of4      # 7B-shaped, reduced depth
    python bench/scale.py ... --limit-gb 2                                        # under an address-space limit
    python bench/scale.py ... --cgroup-gb 1.5                                     # in a memory cgroup (RSS limit)
    python bench/scale.py ... --old a79dc29                                       # the code before the memory levers

Each run is ``fxprune prune DIR --onload --recipe R --calib c4 --calib-samples N --calib-seq-len L``
in its own process under ``/usr/bin/time -v`` (peak RSS = "Maximum resident set size"), one at a time,
OMP_NUM_THREADS=1. ``cpu_s`` (user + system) is the time figure to compare on a shared, loaded
machine; ``wall_s`` depends on the load. Rows are appended to bench/results/scale.jsonl with the command line.
BIG MODELS: a 7B-shaped checkpoint is 13.5 GB on disk (bf16); its output about as much.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def synth(preset: str, layers: int, scratch: Path) -> Path:
    d = scratch / f"{preset}-L{layers}"
    if not (d / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "fxprune", "synth", preset, "--out", str(d), "--layers", str(layers),
                        "--overwrite"], check=True, env=_env())
    return d


TREE = {"path": REPO, "code": None}  # --old REV: the code of that revision (a git archive), for before/after rows


def _env():
    """Run in the tree (cwd: ``python -m`` puts the working directory before PYTHONPATH), with the data
    root of this checkout."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(TREE["path"]),
                FXPRUNE_DATA=os.environ.get("FXPRUNE_DATA", str(REPO.parent / "shared" / "data")))


def code_file() -> str:
    """The fxprune package a run imports (checked: rows say which code ran)."""
    return subprocess.run([sys.executable, "-c", "import fxprune; print(fxprune.__file__)"], env=_env(),
                          cwd=str(TREE["path"]), capture_output=True, text=True).stdout.strip()


def tree_of(rev: str, scratch: Path) -> Path:
    """The files of git revision ``rev`` of this repository, extracted once under ``scratch``."""
    d = scratch / f"tree-{rev}"
    if not d.is_dir():
        d.mkdir(parents=True)
        arc = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(d)], input=arc, check=True)
    return d


def use_revision(rev: str, scratch: Path) -> None:
    TREE.update(path=tree_of(rev, scratch), code=f"old {rev}")


def weight_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("*.safetensors"))


def run_one(model_dir: Path, recipe: str, args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "fxprune", "--memory-limit", "0", "prune", str(model_dir), "--onload",
           "--recipe", recipe, "--calib", "c4", "--calib-samples", str(args.samples),
           "--calib-seq-len", str(args.seq_len), "--out", str(out), "--json"]
    pre = ["/usr/bin/time", "-v"]
    if args.limit_gb:
        pre = ["prlimit", f"--as={int(args.limit_gb * 2 ** 30)}"] + pre
    cg = None
    if args.cgroup_gb:  # a memory cgroup (v1): RSS + page cache charged, reclaimed, OOM-killed beyond the limit
        cg = Path(f"/sys/fs/cgroup/memory/fxprune-bench-{os.getpid()}")
        cg.mkdir()
        (cg / "memory.limit_in_bytes").write_text(str(int(args.cgroup_gb * 2 ** 30)))
        pre = ["sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"', "sh"] + pre
    t0 = time.perf_counter()
    r = subprocess.run(pre + cmd, env=_env(), capture_output=True, text=True, cwd=str(TREE["path"]))
    wall = time.perf_counter() - t0
    cgroup = None
    if cg is not None:
        cgroup = {"limit_gb": args.cgroup_gb,
                  "max_usage_gb": round(int((cg / "memory.max_usage_in_bytes").read_text()) / 2 ** 30, 3),
                  "failcnt": int((cg / "memory.failcnt").read_text()),
                  "oom_kill": "oom_kill 1" in (cg / "memory.oom_control").read_text()}
        cg.rmdir()
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", r.stderr))
    row = {"model": model_dir.name, "recipe": recipe, "rc": r.returncode, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
           "peak_rss_gb": round(int(m.group(1)) / 2 ** 20, 3) if m else None,
           "weights_gb": round(weight_bytes(model_dir) / 2 ** 30, 3), "limit_as_gb": args.limit_gb, "cgroup": cgroup,
           "calib": f"c4 {args.samples} x {args.seq_len}", "command": " ".join(pre + cmd),
           "fxprune_file": code_file(),
           "code": TREE["code"] or subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                                  capture_output=True, text=True).stdout.strip()}
    if r.returncode == 0:
        rep = json.loads(r.stdout[r.stdout.index("{"):])
        row.update(prune_s=rep["prune_seconds"], params_before=rep["params_before"], params_after=rep["params_after"],
                   peak_resident_weight_gb=round(rep["peak_resident_weight_bytes"] / 2 ** 30, 3),
                   out_gb=round(weight_bytes(out) / 2 ** 30, 3))
    else:
        row["stderr_tail"] = r.stderr[-800:]
    return row


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="1.1b")
    p.add_argument("--layers", default="22", help="comma-separated layer counts")
    p.add_argument("--recipes", default="goa-liar-ffn-global-20,sparsegpt-2of4")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--limit-gb", type=float, default=0, help="address-space limit (prlimit --as) per run")
    p.add_argument("--cgroup-gb", type=float, default=0, help="run each prune in a memory cgroup with this limit")
    p.add_argument("--scratch", default="/tmp/fxprune-scale")
    p.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints")
    p.add_argument("--old", help="run the prunes with the code of this git revision (before/after rows)")
    args = p.parse_args()
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    if args.old:
        use_revision(args.old, scratch)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for layers in [int(x) for x in args.layers.split(",")]:
        d = synth(args.preset, layers, scratch)
        for recipe in args.recipes.split(","):
            out = scratch / f"out-{args.preset}-L{layers}-{recipe}{'-old' if args.old else ''}"
            shutil.rmtree(out, ignore_errors=True)
            row = run_one(d, recipe, args, out)
            row["date_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
            print(json.dumps(row), flush=True)
            with open(RESULTS / "scale.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            shutil.rmtree(out, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
