"""Before/after check of the method-layer rewrite (issue 11): the same recipes on the same calibration
windows through the old code (a git worktree of an earlier commit) and the current code, interleaved.

    .venv/bin/python bench/method_layer.py --old-code /work/wt-base --tag method_layer

Rows (each run in its own subprocess, 1 thread, old and new alternating):
* ``goa-liar-ffn-global-20`` (structured), its recipe's calibration (C4 128 x 128, seed 0), full protocol
  (WikiText-2 L=128 x 256 windows, L=512 x 64 windows);
* ``sparsegpt-2of4`` and ``mrp-2of4``, the reduced protocol of bench/SPARSITY.md: 16 x 512 C4 tokens
  drawn as bench/sparsity_data.py draws them (one window per batch, as the old driver ran them),
  WikiText-2 L=512, first 16 windows.
Writes ``bench/results/<tag>.json`` and ``.md``: perplexity, prune seconds, peak RSS per run, and the
relative difference new vs old.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = {
    "goa-liar-ffn-global-20": {"calib": "recipe", "eval": [(128, 256), (512, 64)]},
    "sparsegpt-2of4": {"calib": "sparsity16", "eval": [(512, 16)]},
    "mrp-2of4": {"calib": "sparsity16", "eval": [(512, 16)]},
}


def one(code: str, recipe: str, windows_file: str) -> dict:
    """Inside the subprocess: prune SmolLM2 with ``recipe`` using the fxprune found at ``code``."""
    sys.path.insert(0, code)
    import torch
    torch.set_num_threads(1)
    import fxprune
    from fxprune.calibration import Engine
    from fxprune.data import evaluation_windows
    from fxprune.loading import load_model
    loaded = load_model("smollm2")
    ids = torch.load(windows_file)
    new_api = hasattr(fxprune, "load_recipe")
    t0, c0 = time.perf_counter(), time.process_time()
    if new_api:
        from dataclasses import replace
        rec = fxprune.load_recipe(recipe)
        if RUNS[recipe]["calib"] == "sparsity16":
            rec = replace(rec, calibration=replace(rec.calibration, batch_size=1))
        fxprune.prune(loaded.model, rec, ids)
    elif RUNS[recipe]["calib"] == "sparsity16":
        from fxprune.sparsity import load_recipe, run_sparsity_recipe
        run_sparsity_recipe(loaded.model, load_recipe(recipe), [w.unsqueeze(0) for w in ids])
    else:
        from fxprune.commands.prune import resolve_recipe
        from fxprune.passes.pipeline import prune_model
        from fxprune.passes.recipe import Recipe
        prune_model(loaded.model, Recipe.from_file(resolve_recipe(recipe)), ids, Engine())
    out = {"code": code, "recipe": recipe, "api": "new" if new_api else "old", "file": fxprune.__file__,
           "prune_seconds": time.perf_counter() - t0, "prune_cpu_seconds": time.process_time() - c0,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "params": sum(p.numel() for p in loaded.model.parameters())}
    for L, n in RUNS[recipe]["eval"]:
        w = evaluation_windows(loaded.tokenizer, "wikitext2", L, n)
        out[f"ppl_L{L}x{n}"] = Engine().perplexity(loaded.model, w.ids).ppl
    return out


def windows(kind: str, path: Path) -> None:
    import torch
    from fxprune.data import CalibrationConfig, calibration_windows
    from fxprune.loading import load_model
    tok = load_model("smollm2").tokenizer
    if kind == "recipe":
        ids = calibration_windows(tok, CalibrationConfig("c4", 128, 128, 0)).ids
    else:
        sys.path.insert(0, str(HERE))
        from sparsity_data import calibration_windows as legacy
        from fxprune.data import resolve
        ids = torch.cat(legacy(resolve("c4"), tok, 16, 512, seed=0))
    torch.save(ids, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old-code", required=True, help="a checkout of the code before the rewrite")
    ap.add_argument("--new-code", default=str(HERE.parent))
    ap.add_argument("--recipes", nargs="+", default=list(RUNS))
    ap.add_argument("--tag", default="method_layer")
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(*args.one)), flush=True)
        return
    tmp = HERE / "results" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    out_json = HERE / "results" / f"{args.tag}.json"
    rows = json.loads(out_json.read_text())["rows"] if out_json.exists() else []
    for kind in {RUNS[r]["calib"] for r in args.recipes}:
        if not (tmp / f"ml_{kind}.pt").exists():
            windows(kind, tmp / f"ml_{kind}.pt")
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    for recipe in args.recipes:
        for code in (args.old_code, args.new_code):
            if any(r["recipe"] == recipe and r["code"] == code for r in rows):
                continue
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, __file__, "--old-code", args.old_code, "--one", code, recipe,
                                str(tmp / f"ml_{RUNS[recipe]['calib']}.pt")], capture_output=True, text=True,
                               env=env, cwd="/tmp")
            line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
            row = json.loads(line[7:]) if line else {"code": code, "recipe": recipe, "error": p.stderr[-2000:]}
            row["wall_seconds"] = time.perf_counter() - t0
            rows.append(row)
            print(json.dumps(row), flush=True)
            out_json.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    lines = ["| recipe | code | PPL | prune s (wall) | prune s (CPU) | peak RSS MB | rel. diff new vs old |",
             "|---|---|---|---|---|---|---|"]
    for recipe in args.recipes:
        pair = {r["api"]: r for r in rows if r["recipe"] == recipe and "api" in r}
        for api in ("old", "new"):
            r = pair.get(api)
            if not r:
                continue
            ppl = {k: v for k, v in r.items() if k.startswith("ppl_")}
            diff = ""
            if api == "new" and "old" in pair:
                diff = ", ".join(f"{k}: {(v - pair['old'][k]) / pair['old'][k]:+.2e}" for k, v in ppl.items())
            lines.append(f"| {recipe} | {api} | " + ", ".join(f"{k} {v:.3f}" for k, v in ppl.items()) +
                         f" | {r['prune_seconds']:.0f} | {r.get('prune_cpu_seconds', float('nan')):.0f} | "
                         f"{r['peak_rss_mb']:.0f} | {diff} |")
    text = (f"# Method layer before/after\n\nCommand: `{' '.join(sys.argv)}`\n\n" + "\n".join(lines) + "\n")
    (HERE / "results" / f"{args.tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
