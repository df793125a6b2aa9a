"""Sparsity benchmark: magnitude / Wanda / SparseGPT / multiple-removal on one model, side by side.

    PYTHONPATH=$PWD python bench/sparsity.py --model smollm2 --calib-samples 128 --calib-seqlen 512 \
        --patterns 2:4 4:8 0.5 0.6 --methods magnitude wanda sparsegpt mrp

Calibration: C4 train head (random windows of docs longer than the window). Evaluation: WikiText-2 raw
test, L=512, first 64 non-overlapping windows, token-level perplexity. Results are appended to
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.data import C4, ByteTokenizer, perplexity, wikitext_ids  # noqa: E402
from sparsity_data import calibration_windows  # noqa: E402
from fxprune.loading import load_model  # noqa: E402
from fxprune.sparsity import (MagnitudeConfig, MRPConfig, SparseGPTConfig, SparsityRecipe, WandaConfig,  # noqa: E402
                              run_sparsity_recipe)
from fxprune.sparsity.recipe import _parse_pattern  # noqa: E402

METHODS = {"magnitude": MagnitudeConfig(), "wanda": WandaConfig(), "sparsegpt": SparseGPTConfig(), "mrp": MRPConfig(),
           "mrp-sweep": MRPConfig(update="sweep")}
GRAN = {"magnitude": "layer", "sparsegpt": "layer", "wanda": "row", "mrp": "row", "mrp-sweep": "row"}


def pattern_for(method, spec):
    p = _parse_pattern(float(spec) if ":" not in spec else spec)
    if hasattr(p, "granularity"):
        p = type(p)(p.ratio, GRAN[method])
    return p


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
    METHODS["mrp"] = MRPConfig(**json.loads(args.mrp_options))
    METHODS["mrp-sweep"] = MRPConfig(**{**json.loads(args.mrp_options), "update": "sweep"})
    out_json = Path(__file__).parent / "results" / f"{args.tag}.json"
    out_json.parent.mkdir(exist_ok=True)
    t = time.time()
    if Path(args.model).is_dir():  # e.g. the byte-level tiny Mamba from bench/train_tiny_mamba.py
        from transformers import AutoModelForCausalLM
        model, tok = AutoModelForCausalLM.from_pretrained(args.model).eval(), ByteTokenizer()
    else:
        lm = load_model(args.model)
        model, tok = lm.model, lm.tokenizer
    dense_state = copy.deepcopy(model.state_dict())
    print(f"loaded {args.model} in {time.time() - t:.1f}s", flush=True)
    ids = wikitext_ids(tok)
    if isinstance(tok, ByteTokenizer):  # calibrate on the C4 documents the tiny Mamba was not trained on
        from bench.train_tiny_mamba import c4_texts
        data = torch.tensor(list("\n\n".join(c4_texts("calib")).encode()))
        calib = [data[i * args.calib_seqlen:(i + 1) * args.calib_seqlen].unsqueeze(0) for i in range(args.calib_samples)]
    else:
        calib = calibration_windows(C4, tok, args.calib_samples, args.calib_seqlen, seed=0)
    meta = {"model": args.model, "command": " ".join(sys.argv),
            "calib": f"C4 train head, {args.calib_samples} x {args.calib_seqlen} tokens (seed 0)",
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
        if True:
            model.load_state_dict(dense_state)
            pat = pattern_for(m, spec)
            recipe = SparsityRecipe(METHODS[m], pat, name=f"{m}-{spec}")
            t, c = time.time(), time.process_time()
            res = run_sparsity_recipe(model, recipe, calib, log=lambda s: print(s, flush=True) if s.startswith('block') and s.split()[1].rstrip(':') in ('0', '15', '29') else None)
            secs, cpu = time.time() - t, time.process_time() - c
            ppl = perplexity(model, ids, args.eval_L, args.eval_windows)
            row = {"method": m, "pattern": pat.label, "ppl": ppl, "seconds": secs, "cpu_seconds": cpu,
                   "sparsity": res.sparsity,
                   "config": repr(METHODS[m]), "granularity": getattr(pat, "granularity", None),
                   "sum_output_error": sum(l.output_error or 0 for l in res.layers)}
            results = [r for r in results if not (r["method"] == m and r["pattern"] == pat.label)] + [row]
            print(json.dumps(row), flush=True)
            out_json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
            (out_json.with_suffix(".md")).write_text(render(results, meta) + "\n")
    print(render(results, meta))


if __name__ == "__main__":
    main()
