"""Tutorial 2: prune a model end to end with a recipe, calibration data and reconstruction.

    .venv/bin/python tutorials/02_prune_end_to_end.py                  # tiny LLaMA, seconds
    .venv/bin/python tutorials/02_prune_end_to_end.py --model smollm2  # real SmolLM2-135M, minutes

The command-line equivalent is
    fxprune prune smollm2 --recipe flap-liar-20 --out out/smollm2-20 --eval-ppl wikitext2
"""
import argparse
import tempfile

import torch

import fxprune
from fxprune.calibration import Engine
from fxprune.data import calibration_windows, evaluation_windows, tokenizer_for


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny:llama")
    ap.add_argument("--target", type=float, default=0.2)
    args = ap.parse_args(argv)
    real = not args.model.startswith("tiny:")

    loaded = fxprune.load(args.model)
    tok = tokenizer_for(loaded)  # a byte tokenizer stands in for tiny models
    # 1. A recipe: a calibration block and one step (FLAP scores, uniform widths, LIAR least squares).
    recipe = fxprune.load_recipe({
        "calibration": {"source": "c4", "samples": 128 if real else 8, "seq_len": 128 if real else 32},
        "steps": [{"structured": {"criterion": "flap", "reconstruction": "liar", "allocation": "uniform",
                                  "target": args.target}}]})
    # 2. Calibration windows from the C4 head (never from the evaluation split).
    calib = calibration_windows(tok, recipe.calibration)
    evalw = evaluation_windows(tok, "wikitext2", 128, 32 if real else 4)
    engine = Engine()  # Lightning Fabric: CPU here; EngineConfig(accelerator="gpu", devices=2) for DDP
    dense_ppl = engine.perplexity(loaded.model, evalw.ids).ppl
    # 3. One verb: analyse -> allocate -> (block by block) score, fold, remove -> verify.
    out = fxprune.prune(loaded.model, recipe, calib.ids, engine)
    pruned_ppl = engine.perplexity(loaded.model, evalw.ids).ppl
    r = out.report
    print(f"parameters {r['params_before']:,} -> {r['params_after']:,} in {r['seconds']}s; "
          f"WikiText-2 ppl (L=128, {evalw.ids.shape[0]} windows) {dense_ppl:.2f} -> {pruned_ppl:.2f}")
    # 4. Save atomically (LIAR added biases to o_proj/down_proj: recorded as structure) and reload.
    with tempfile.TemporaryDirectory() as d:
        path = fxprune.save(loaded.model, f"{d}/pruned", tokenizer=loaded.tokenizer, report=r)
        again = fxprune.load_pruned(path)
        with torch.no_grad():
            ids = evalw.ids[:1]
            same = torch.allclose(again(input_ids=ids).logits, loaded.model(input_ids=ids).logits, atol=1e-4)
        print(f"reload reproduces outputs: {same}")
        assert same
    return out


if __name__ == "__main__":
    main()
