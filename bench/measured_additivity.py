"""Benchmark (diagnostic): do the ``measured`` allocation's per-layer costs add up, and do they transfer?

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python bench/measured_additivity.py --kinds ffn
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python bench/measured_additivity.py --kinds attention ffn

Prunes SmolLM2-135M (``bench/results/tmp/smollm2-fp32``, made by ``bench/structured.py``) with the measured
recipe (GOA + LIAR, KL probes on the first 8 calibration windows, C4 128 x 128, seed 0) and compares:

* ``predicted``: the sum over pruned groups of the measured cost curve at the allocated width
  (what the allocator minimised, in nats of KL(dense || pruned) per token);
* ``actual``: the KL increase of the pruned model on those same 8 probe windows;
* ``heldout``: the KL increase on 32 fresh C4 windows (seed 1, never seen by the prune) and on the first
  32 WikiText-2 test windows of 128 tokens (diagnostic only: nothing is chosen on them).

One line per run is appended to ``bench/results/measured_additivity.jsonl`` with the widths of the plan.
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MODEL_DIR = RESULTS / "tmp" / "smollm2-fp32"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kinds", nargs="+", default=["ffn"])
    ap.add_argument("--target", type=float, default=0.2)
    ap.add_argument("--probe-samples", type=int, default=8)
    ap.add_argument("--heldout", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="measured_additivity")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE.parent))
    from bench.structured import prepare_model
    from fxprune.data import calibration_windows, evaluation_windows, tokenizer_for
    from fxprune.evaluation.divergence import reference_probs, soft_nll
    from fxprune.loading import load_model
    from fxprune.passes.allocate_pooled import measured_costs
    from fxprune.analysis.analyser import analyse
    from fxprune.pipeline import prune_model
    from fxprune.recipe import load_recipe
    from fxprune.report import find_pass

    prepare_model()
    loaded = load_model(str(MODEL_DIR))
    tok = tokenizer_for(loaded)
    step = {"criterion": "goa", "reconstruction": "liar", "allocation": "measured", "kinds": list(args.kinds),
            "target": args.target, "probe_samples": args.probe_samples, "probe_metric": "kl"}
    recipe = load_recipe({"calibration": {"source": "c4", "samples": 128, "seq_len": 128, "seed": 0},
                          "steps": [{"structured": step}]})
    calib = calibration_windows(tok, recipe.calibration)
    dense = loaded.model
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731 (the probes' precision)

    def kl_increase(model, windows) -> float:
        ref = reference_probs(dense, windows, batch_size=8, autocast=bf16)
        return (soft_nll(model, windows, ref, batch_size=8, autocast=bf16)
                - soft_nll(dense, windows, ref, batch_size=8, autocast=bf16))

    pruned = copy.deepcopy(dense)
    t0 = time.perf_counter()
    res = prune_model(pruned, recipe, calib.ids)
    seconds = time.perf_counter() - t0
    curves = find_pass(res.report, "measure_loss")["curves"]
    if isinstance(curves, str):  # a report may carry it as its repr
        curves = ast.literal_eval(curves)
    units = {g.id: g.units for g in analyse(dense).prunable()}
    predicted, by_kind, widths = 0.0, {}, {}
    for gid, kept in res.plan.items():
        k = units[gid] - len(kept)
        widths[gid] = len(kept)
        if gid not in curves or k == 0:
            continue
        cost = float(measured_costs([tuple(p) for p in curves[gid]], units[gid])[k - 1])
        predicted += cost
        kind = "attention" if "attn" in gid else "ffn"
        by_kind[kind] = by_kind.get(kind, 0.0) + cost
    fresh = calibration_windows(tok, replace(recipe.calibration, samples=args.heldout, seed=1)).ids
    wiki = evaluation_windows(tok, "wikitext2", 128, args.heldout)
    wiki = getattr(wiki, "ids", wiki)
    row = {"command": " ".join(["bench/measured_additivity.py", *(argv if argv is not None else sys.argv[1:])]),
           "step": step, "calibration": "c4 128 x 128 seed 0", "prune_seconds": round(seconds, 1),
           "predicted": predicted, "predicted_by_kind": by_kind,
           "actual_probe_windows": kl_increase(pruned, calib.ids[: args.probe_samples]),
           f"heldout_c4_seed1_{args.heldout}x128": kl_increase(pruned, fresh),
           f"wikitext2_first_{args.heldout}x128": kl_increase(pruned, wiki),
           "widths": widths}
    with open(RESULTS / f"{args.tag}.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "widths"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
