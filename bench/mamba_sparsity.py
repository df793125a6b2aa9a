"""Method ordering on a tiny Mamba (hidden 128, 4 layers, byte vocab; HF pure-torch path).

    PYTHONPATH=$PWD python bench/mamba_sparsity.py --model /tmp/fxprune_tiny_mamba

Metrics (the model is close to random, see the notes: training it on this CPU did not get past a few
steps, so perplexity means little): the sum over sparsified layers of the layer-wise output error
``mean_t ||(W−Ŵ)x_t||²`` on the calibration stream, and the mean KL(dense ‖ sparse) of next-byte
distributions on 8 × 256 bytes of WikiText-2 test, plus that text's perplexity.
Calibration: 16 × 256 bytes of C4-head documents 900..999 (not the training split).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fxprune  # noqa: E402
from fxprune.data import ByteTokenizer, evaluation_windows  # noqa: E402
from sparsity import GRAN, step_for  # noqa: E402
from train_tiny_mamba import c4_texts  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/tmp/fxprune_tiny_mamba")
    ap.add_argument("--patterns", nargs="+", default=["2:4", "4:8", "0.5", "0.6"])
    ap.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt", "mrp-sweep", "mrp"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    model.config.use_mambapy = False
    dense = copy.deepcopy(model.state_dict())
    data = torch.tensor(list("\n\n".join(c4_texts("calib")).encode()))
    calib = data[: 16 * 256].view(16, 256)
    ev = evaluation_windows(ByteTokenizer(256), "wikitext2", 256, 8).ids
    with torch.no_grad():
        ref = torch.log_softmax(model(input_ids=ev).logits.float(), -1)

    def metrics():
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ev).logits.float(), -1)
        kl = float((ref.exp() * (ref - lp)).sum(-1).mean())
        nll = -float(lp[:, :-1].gather(-1, ev[:, 1:].unsqueeze(-1)).mean())
        return kl, math.exp(nll)

    rows = [{"method": "dense", "pattern": "-", "kl": 0.0, "ppl": metrics()[1]}]
    for spec in args.patterns:
        for m in args.methods:
            model.load_state_dict(dense)
            recipe = fxprune.load_recipe({"calibration": {"samples": 16, "seq_len": 256, "batch_size": 1},
                                          "steps": [step_for(m, spec)]})
            t = time.time()
            step = fxprune.prune(model, recipe, calib).report["steps"][0]
            kl, ppl = metrics()
            rows.append({"method": m, "pattern": recipe.steps[0].pattern.label, "granularity": GRAN[m], "kl": kl,
                         "ppl": ppl, "sum_output_error": sum(l["output_error"] or 0 for l in step["layers"]),
                         "sparsity": step["passes"][-1]["sparsity_selected_linears"], "seconds": time.time() - t,
                         "skipped": step["passes"][-1]["skipped"]})
            print(json.dumps(rows[-1]), flush=True)
    out = Path(__file__).parent / "results" / "mamba_sparsity.json"
    out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    lines = ["| pattern | method | Σ layer output error | KL(dense‖sparse) | byte PPL | sparsity |", "|---|---|---|---|---|---|"]
    for r in rows[1:]:
        lines.append(f"| {r['pattern']} | {r['method']} | {r['sum_output_error']:.4g} | {r['kl']:.4f} | {r['ppl']:.3f} | {r['sparsity']:.2%} |")
    out.with_suffix(".md").write_text(f"Dense byte PPL {rows[0]['ppl']:.3f}.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
