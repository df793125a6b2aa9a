"""Sparsity benchmark: magnitude / Wanda / SparseGPT / multiple-removal on one model, side by side.

    .venv/bin/python bench/sparsity.py --model smollm2 --calib-samples 128 --calib-seqlen 512 \
        --patterns 2:4 4:8 0.5 0.6 --methods magnitude wanda sparsegpt mrp

Each run is ``fxprune.prune`` with a one-step recipe (``{steps: [{METHOD: {sparsity, ...}}]}``) through
the library's block-wise runner. Calibration: C4 train head, ``fxprune.data.calibration_windows``
(``--legacy-windows``: the draw of ``bench/sparsity_data.py``, one window per batch, which the tables
of 2026-11 used). Evaluation: WikiText-2 raw test (``fxprune.data.evaluation_windows``), L=512, first
64 non-overlapping windows, ``fxprune.evaluation.perplexity``. Results are appended to
``bench/results/<tag>.json`` after every run (partial results survive) and rendered as markdown.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fxprune  # noqa: E402
from fxprune.data import ByteTokenizer, CalibrationConfig, calibration_windows, evaluation_windows, resolve  # noqa: E402
from fxprune.evaluation.perplexity import perplexity as _perplexity  # noqa: E402
from fxprune.loading import load_model  # noqa: E402

#: bench name -> (recipe step kind, extra options); unstructured granularity per method (the tables' choice)
METHODS = {"magnitude": ("magnitude", {}), "wanda": ("wanda", {}), "sparsegpt": ("sparsegpt", {}),
           "mrp": ("mrp", {}), "mrp-sweep": ("mrp", {"update": "sweep"})}
GRAN = {"magnitude": "layer", "sparsegpt": "layer", "wanda": "row", "mrp": "row", "mrp-sweep": "row"}


def step_for(method: str, spec: str, extra: dict | None = None) -> dict:
    """The recipe step of ``method`` at ``spec`` ("2:4", "0.5"), with the bench's granularity."""
    kind, opts = METHODS[method]
    sparsity = spec if ":" in spec else {"ratio": float(spec), "granularity": GRAN[method]}
    return {kind: {"sparsity": sparsity, **opts, **(extra or {})}}


def perplexity(model, ids, L, windows):
    return _perplexity(model, ids[:windows], batch_size=4, progress=False).ppl


def render(results, meta) -> str:
    pats = sorted({r["pattern"] for r in results}, key=lambda s: (":" not in s, s))
    meths = [m for m in ["magnitude", "wanda", "sparsegpt", "mrp-sweep", "mrp", "llmc-sparsegpt", "llmc-wanda"]
             if any(r["method"] == m for r in results)]
    head = "| method | " + " | ".join(f"{p} PPL (s)" for p in pats) + " |"
    lines = [f"Model {meta['model']}, dense PPL {meta['dense_ppl']:.3f}; calibration {meta['calib']}; eval {meta['eval']}.",
             "", head, "|---|" + "---|" * len(pats)]
    for m in meths:
        cells = []
        for p in pats:
            r = [x for x in results if x["method"] == m and x["pattern"] == p]
            cells.append(f"{r[-1]['ppl']:.3f} ({r[-1]['seconds']:.0f})" if r else "—")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt", "mrp"])
    ap.add_argument("--patterns", nargs="+", default=["2:4", "4:8", "0.5", "0.6"])
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--eval-L", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="sparsity")
    ap.add_argument("--runs", nargs="*", help="explicit METHOD@PATTERN list (overrides --methods/--patterns)")
    ap.add_argument("--mrp-options", default="{}", help="JSON overrides for MRPConfig")
    ap.add_argument("--render-only", action="store_true", help="merge <tag>.json and llmc_peer.json into <tag>.md")
    ap.add_argument("--queue", help="file of METHOD@PATTERN lines, re-read before every run (edit it to reorder "
                    "or drop runs while the process works); the first line not yet run by this process is next")
    ap.add_argument("--stop-after", help="HH:MM (UTC): start no further run after this time (finished runs are kept)")
    ap.add_argument("--legacy-windows", action="store_true",
                    help="calibration windows as bench/sparsity_data.py drew them for the 2026-11 tables")
    args = ap.parse_args()
    if args.render_only:
        d = json.loads((Path(__file__).parent / "results" / f"{args.tag}.json").read_text())
        res = list(d["results"])
        for extra in sorted((Path(__file__).parent / "results").glob(f"{args.tag}_*.json")) + [
                Path(__file__).parent / "results" / "llmc_peer.json"]:  # parallel shards of the same grid, peer
            if extra.exists():
                have = {(r["method"], r["pattern"]) for r in res}
                res += [r for r in json.loads(extra.read_text())["results"] if (r["method"], r["pattern"]) not in have]
        text = render(res, d["meta"])
        (Path(__file__).parent / "results" / f"{args.tag}.md").write_text(text + "\n")
        print(text)
        return
    torch.set_num_threads(args.threads)
    mrp_extra = json.loads(args.mrp_options)
    out_json = Path(__file__).parent / "results" / f"{args.tag}.json"
    out_json.parent.mkdir(exist_ok=True)
    t = time.time()
    if Path(args.model).is_dir():  # e.g. the byte-level tiny Mamba from bench/train_tiny_mamba.py
        from transformers import AutoModelForCausalLM
        model, tok = AutoModelForCausalLM.from_pretrained(args.model).eval(), ByteTokenizer(256)
    else:
        lm = load_model(args.model)
        model, tok = lm.model, lm.tokenizer
    dense_state = copy.deepcopy(model.state_dict())
    print(f"loaded {args.model} in {time.time() - t:.1f}s", flush=True)
    ids = evaluation_windows(tok, "wikitext2", args.eval_L, args.eval_windows).ids
    batch = 8
    if isinstance(tok, ByteTokenizer):  # calibrate on the C4 documents the tiny Mamba was not trained on
        from train_tiny_mamba import c4_texts
        data = torch.tensor(list("\n\n".join(c4_texts("calib")).encode()))
        calib = data[: args.calib_samples * args.calib_seqlen].view(args.calib_samples, args.calib_seqlen)
        draw = "C4 head documents 900.., bytes"
    elif args.legacy_windows:
        from sparsity_data import calibration_windows as legacy
        calib, batch = torch.cat(legacy(resolve("c4"), tok, args.calib_samples, args.calib_seqlen, seed=0)), 1
        draw = "bench/sparsity_data.py draw, one window per batch"
    else:
        calib = calibration_windows(tok, CalibrationConfig("c4", args.calib_samples, args.calib_seqlen, 0)).ids
        draw = "fxprune.data.calibration_windows, batches of 8"
    meta = {"model": args.model, "command": " ".join(sys.argv),
            "calib": f"C4 train head, {args.calib_samples} x {args.calib_seqlen} tokens (seed 0; {draw})",
            "eval": f"WikiText-2 raw test, L={args.eval_L}, first {args.eval_windows} windows, token-level PPL",
            "threads": args.threads, "torch": torch.__version__}
    prev = json.loads(out_json.read_text()) if out_json.exists() else {}
    results = prev.get("results", [])
    t = time.time()
    meta["dense_ppl"] = prev.get("meta", {}).get("dense_ppl") or perplexity(model, ids, args.eval_L, args.eval_windows)
    print(f"dense ppl {meta['dense_ppl']:.3f} ({time.time() - t:.0f}s)", flush=True)
    runs = [r.split("@") for r in args.runs] if args.runs else [(m, p) for p in args.patterns for m in args.methods]
    if args.queue:
        def queued():
            done = set()
            while True:
                todo = [ln.strip() for ln in Path(args.queue).read_text().splitlines()
                        if ln.strip() and not ln.startswith("#") and ln.strip() not in done]
                if not todo:
                    return
                done.add(todo[0])
                yield todo[0].split("@")
        runs = queued()
    for m, spec in runs:
        if args.stop_after and time.strftime("%H:%M", time.gmtime()) >= args.stop_after:
            print(f"--stop-after {args.stop_after}: not starting {m}@{spec} or later runs", flush=True)
            break
        model.load_state_dict(dense_state)
        recipe = fxprune.load_recipe({"name": f"{m}-{spec}", "calibration": {"samples": args.calib_samples,
                                      "seq_len": args.calib_seqlen, "batch_size": batch},
                                      "steps": [step_for(m, spec, mrp_extra if m.startswith("mrp") else None)]})
        t, c = time.time(), time.process_time()
        out = fxprune.prune(model, recipe, calib)
        secs, cpu = time.time() - t, time.process_time() - c
        step = out.report["steps"][0]
        summary = step["passes"][-1]
        ppl = perplexity(model, ids, args.eval_L, args.eval_windows)
        label = recipe.steps[0].pattern.label
        row = {"method": m, "pattern": label, "ppl": ppl, "seconds": secs, "cpu_seconds": cpu,
               "sparsity": summary["sparsity_selected_linears"], "config": repr(recipe.steps[0].method),
               "granularity": getattr(recipe.steps[0].pattern, "granularity", None),
               "sum_output_error": sum(l["output_error"] or 0 for l in step["layers"])}
        results = [r for r in results if not (r["method"] == m and r["pattern"] == label)] + [row]
        print(json.dumps(row), flush=True)
        out_json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        (out_json.with_suffix(".md")).write_text(render(results, meta) + "\n")
    print(render(results, meta))


if __name__ == "__main__":
    main()
