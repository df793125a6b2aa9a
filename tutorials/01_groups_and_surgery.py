"""Tutorial 1: find a model's prune groups, prune some units, check, save and reload.

    .venv/bin/python tutorials/01_groups_and_surgery.py                 # tiny random LLaMA (seconds)
    .venv/bin/python tutorials/01_groups_and_surgery.py --model smollm2  # the real SmolLM2-135M

Nothing here scores channels: we keep the first units of a few groups to show the mechanics.
Scoring, budgets and reconstruction are later passes.
"""
import argparse
import copy
import tempfile

import torch

from fxprune.analysis.analyser import analyse
from fxprune.checkpoint import load_pruned, save_pruned
from fxprune.loading import load_model
from fxprune.surgery import apply_mask, prune


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny:llama")
    args = ap.parse_args(argv)

    loaded = load_model(args.model)
    model = loaded.model

    # 1. Capture with torch.export and analyse channel dependencies: no per-model code.
    analysis = analyse(model)
    for g in analysis.prunable()[:6]:
        print(f"{g.id:40s} {g.kind:16s} {g.units:5d} units x {g.unit_size} channels")

    # 2. A plan keeps unit indices per group: here, half of every FFN and one q head per KV group.
    plan = {}
    for g in analysis.prunable():
        if g.kind == "ffn_channels":
            plan[g.id] = list(range(g.units // 2))
        elif g.kind == "attn_q_per_kv":
            plan[g.id] = list(range(g.units - 1))

    # 3. Masking the removed units where they are consumed is the reference semantics...
    reference = apply_mask(copy.deepcopy(model), analysis, plan)
    # 4. ...and physical surgery must compute the same function with fewer parameters.
    result = prune(model, plan, analysis, verify=True)
    ids = torch.randint(5, 100, (1, 12))
    with torch.no_grad():
        err = (model(input_ids=ids).logits - reference(input_ids=ids).logits).abs().max().item()
    print(f"parameters {result.params_before:,} -> {result.params_after:,}; max |pruned - masked| = {err:.2e}")
    assert err < 1e-4

    # 5. Save atomically and reload.
    with tempfile.TemporaryDirectory() as d:
        out = save_pruned(model, f"{d}/pruned", tokenizer=loaded.tokenizer)
        again = load_pruned(out)
        with torch.no_grad():
            same = torch.allclose(again(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
        print(f"saved to {out.name}: reload reproduces outputs: {same}")
        assert same
    return result


if __name__ == "__main__":
    main()
