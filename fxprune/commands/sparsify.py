"""``fxprune sparsify MODEL --recipe R --calib C4.jsonl --out DIR``: unstructured / N:M sparsity.

Runs ``fxprune.sparsity.run_sparsity_recipe`` on calibration windows from a jsonl file (one
``{"text": ...}`` per line), writes the dense-with-zeros model with ``save_pretrained`` (atomically)
plus ``sparsity_report.json``/``.md``. ``--semi-structured`` additionally converts 2:4 layers with
``torch.sparse.to_sparse_semi_structured`` and reports the measured speedup (CUDA only; skipped otherwise).
"""
from __future__ import annotations

import json

import torch

from ..arguments import positive_int, seq_len


NAME = "sparsify"
HELP = "Unstructured or N:M sparsity (magnitude, Wanda, SparseGPT, multiple-removal) from a recipe."


def add_arguments(p) -> None:
    p.add_argument("model", help="model spec: smollm2, tiny:<family>, a .gguf file or a model directory")
    p.add_argument("--recipe", required=True, help="recipe file (.yaml/.json) or built-in name, e.g. mrp-2of4")
    p.add_argument("--calib", help="calibration data: c4 (default), a text/jsonl file, hf:<name> or generated")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an fxprune checkpoint at --out "
                                                            "(files fxprune did not write are kept)")
    p.add_argument("--samples", type=positive_int, help="calibration windows (default: the recipe's)")
    p.add_argument("--seqlen", type=seq_len, help="tokens per window (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--semi-structured", action="store_true", help="CUDA only: convert 2:4 layers and time them")


def run(args) -> int:
    from ..loading import load_model
    from ..sparsity import convert_2to4_and_time, load_recipe, run_sparsity_recipe, save_sparse_model
    from ..preflight import JobSizes, check_job
    recipe = load_recipe(args.recipe)
    calibrate = getattr(recipe.method, "needs_calibration", True)
    job = check_job(args.model, out=args.out, overwrite=args.overwrite, samples_field="--samples", sizes=JobSizes(
        "sparsity", (args.samples or recipe.calib_samples) if calibrate else 0, args.seqlen or recipe.calib_seqlen,
        generated=args.calib == "generated"))  # output, memory, savable: before the expensive work
    lm = load_model(args.model)
    job.check_model(lm.model)
    batches = None
    if calibrate:
        from ..data import CalibrationConfig, calibration_windows, tokenizer_for
        cfg = CalibrationConfig(args.calib or "c4", args.samples or recipe.calib_samples,
                                args.seqlen or recipe.calib_seqlen, args.seed)
        windows = calibration_windows(tokenizer_for(lm), cfg, model=lm.model, root=getattr(args, "data_root", None))
        batches = [w.unsqueeze(0) for w in windows.ids]
    res = run_sparsity_recipe(lm.model, recipe, batches, log=print)
    out = save_sparse_model(lm.model, args.out, lm.tokenizer, res, overwrite=args.overwrite)
    print(res.to_markdown())
    print(f"saved {out}")
    if args.semi_structured:
        ids = batches[0] if batches else torch.randint(0, lm.model.config.vocab_size, (1, 128))
        info = convert_2to4_and_time(lm.model, ids)
        print(json.dumps({k: v for k, v in info.items() if k != "converted"}))
    return 0
