"""Check (issue 13) on a second real model: does Olica attention + global FFN allocation keep its
standing beside the FFN-only recipe on the all-MiniLM-L6-v2 BERT encoder (no LM head: quality is the
agreement of the pruned encoder's outputs with the dense ones on held-out text)?

    OMP_NUM_THREADS=1 .venv/bin/python bench/quality2_minilm.py [--targets 0.2 0.3]

Calibration: C4 train head, 128 x 128 tokens, seed 0 (the recipes' own). Held out: WikiText-2 raw test,
first 64 windows of 128 tokens. Metrics per configuration and target (share of decoder linear parameters): relative
output error ``||H - H_dense||^2 / ||H_dense||^2`` of the last hidden states, and the mean cosine
similarity of mean-pooled sentence embeddings (what sentence-transformers uses) with the dense ones.
Writes bench/results/quality2_minilm.json and .md.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = {
    "goa-liar-ffn-global (FFN only)": {"allocation": "global", "kinds": ["ffn"]},
    "goa-liar-ffn-global, linear z-scores (FFN only)": {"allocation": "global", "kinds": ["ffn"], "global_scale": "linear"},
    "goa-liar-ffn uniform (FFN only)": {"allocation": "uniform", "kinds": ["ffn"]},
    "olica attention + uniform FFN": {"allocation": "uniform", "attention": "olica", "kinds": ["attention", "ffn"]},
    "olica attention + global FFN": {"allocation": "global", "attention": "olica", "kinds": ["attention", "ffn"]},
    "olica attention + global FFN, linear z-scores": {"allocation": "global", "attention": "olica",
                                                      "kinds": ["attention", "ffn"], "global_scale": "linear"},
}


def hidden(model, ids):
    with torch.no_grad():
        out = []
        for i in range(0, len(ids), 8):
            out.append(model(input_ids=ids[i:i + 8]).last_hidden_state)
        return torch.cat(out).double()


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=float, nargs="+", default=[0.2])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from fxprune.data import CalibrationConfig, calibration_windows, evaluation_windows, tokenizer_for
    from fxprune.loading import load_model
    from fxprune.pipeline import prune_model
    from fxprune.recipe import load_recipe
    from fxprune.report import find_pass
    loaded = load_model("minilm")
    tok = tokenizer_for(loaded)
    dense = loaded.model.eval()
    calib = calibration_windows(tok, CalibrationConfig("c4", 128, 128, 0))
    held = evaluation_windows(tok, "wikitext2", 128, 64).ids
    ref = hidden(dense, held)
    rows = []
    for target, (name, extra) in ((t, c) for t in args.targets for c in CONFIGS.items()):
        m = copy.deepcopy(dense)
        recipe = load_recipe({"name": name, "calibration": {"source": "c4", "samples": 128, "seq_len": 128, "seed": 0},
                              "steps": [{"structured": {"criterion": "goa", "reconstruction": "liar", "target": target,
                                                        "scope": "decoder_linear", **extra}}]})
        t0 = time.perf_counter()
        out = prune_model(m, recipe, calib.ids)
        secs = time.perf_counter() - t0
        try:
            alloc = find_pass(out.report, "olica_split")
        except KeyError:
            alloc = find_pass(out.report, "allocate")
        h = hidden(m.eval(), held)
        err = float(((h - ref) ** 2).sum() / (ref ** 2).sum())
        cos = float(torch.nn.functional.cosine_similarity(h.mean(1), ref.mean(1), dim=-1).mean())
        rows.append({"config": name, "target": target, "recipe_step": extra, "achieved": alloc["achieved"],
                     "params_before": out.report["params_before"], "params_after": out.report["params_after"],
                     "relative_output_error": err, "mean_pooled_cosine": cos, "prune_seconds": round(secs, 1)})
        print(json.dumps(rows[-1]), flush=True)
    (RESULTS / "quality2_minilm.json").write_text(json.dumps(rows, indent=1))
    lines = ["| configuration (goa/liar) | target (decoder linear) | achieved | params after | rel. output error | "
             "mean-pooled cosine | prune s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['target']} | {r['achieved']:.3f} | {r['params_after'] / 1e6:.2f}M | "
                     f"{r['relative_output_error']:.4f} | {r['mean_pooled_cosine']:.4f} | {r['prune_seconds']} |")
    (RESULTS / "quality2_minilm.md").write_text(
        "# all-MiniLM-L6-v2: attention pruned too, second real model\n\n"
        f"`OMP_NUM_THREADS=1 .venv/bin/python bench/quality2_minilm.py --targets {' '.join(map(str, args.targets))}` (C4 128 x 128 calibration; held out: "
        "WikiText-2 test, 64 windows of 128 tokens; errors against the dense encoder's last hidden states).\n\n"
        + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
