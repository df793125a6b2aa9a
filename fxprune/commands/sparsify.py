"""``fxprune sparsify MODEL --recipe R --calib C4.jsonl --out DIR``: unstructured / N:M sparsity.

Runs ``fxprune.sparsity.run_sparsity_recipe`` on calibration windows from a jsonl file (one
``{"text": ...}`` per line), writes the dense-with-zeros model with ``save_pretrained`` (atomically)
plus ``sparsity_report.json``/``.md``. ``--semi-structured`` additionally converts 2:4 layers with
``torch.sparse.to_sparse_semi_structured`` and reports the measured speedup (CUDA only; skipped otherwise).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from ..errors import DataError

NAME = "sparsify"
HELP = "Unstructured or N:M sparsity (magnitude, Wanda, SparseGPT, multiple-removal) from a recipe."


def add_arguments(p) -> None:
    p.add_argument("model", help="model spec: smollm2, tiny:<family>, a .gguf file or a model directory")
    p.add_argument("--recipe", required=True, help="recipe file (.yaml/.json) or built-in name, e.g. mrp-2of4")
    p.add_argument("--calib", help="calibration jsonl with a 'text' field (C4 train head); not needed for magnitude")
    p.add_argument("--out", required=True, help="output directory (replaced atomically)")
    p.add_argument("--samples", type=int, help="calibration windows (default: the recipe's)")
    p.add_argument("--seqlen", type=int, help="tokens per window (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--semi-structured", action="store_true", help="CUDA only: convert 2:4 layers and time them")


def calibration_windows(path: str | Path, tokenizer, n: int, seqlen: int, seed: int = 0,
                        vocab_size: int | None = None) -> list[torch.Tensor]:
    """``n`` windows of ``seqlen`` tokens: a random document with more than ``seqlen`` tokens and a random
    window in it (GPTQ/SparseGPT style); if too few documents are long enough, windows are cut from the
    concatenation of the shuffled documents instead. Without a tokenizer (tiny models) the UTF-8 bytes
    modulo ``vocab_size`` are the tokens. Temporary helper until the shared calibration module lands."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"calibration file {str(path)!r} does not exist")
    texts = []
    with open(path) as f:
        for i, line in enumerate(f):
            try:
                texts.append(json.loads(line)["text"])
            except (ValueError, KeyError) as e:
                raise DataError(f"{path}:{i + 1}: not a jsonl row with a 'text' field ({e})") from e

    def enc(t):
        if tokenizer is None:
            return [b % (vocab_size or 256) for b in t.encode()]
        return tokenizer(t, add_special_tokens=False)["input_ids"]

    rng = random.Random(seed)
    rng.shuffle(texts)
    toks = [enc(t) for t in texts]
    long = [t for t in toks if len(t) > seqlen]
    out = []
    if len(long) >= n:
        for t in long[:n]:
            s = rng.randint(0, len(t) - seqlen - 1)
            out.append(torch.tensor(t[s:s + seqlen]).unsqueeze(0))
    else:
        flat = [x for t in toks for x in t]
        if len(flat) < n * seqlen:
            raise DataError(f"calibration file {str(path)!r} holds {len(flat)} tokens, fewer than {n}×{seqlen}")
        out = [torch.tensor(flat[i * seqlen:(i + 1) * seqlen]).unsqueeze(0) for i in range(n)]
    return out


def run(args) -> int:
    from ..loading import load_model
    from ..sparsity import convert_2to4_and_time, load_recipe, run_sparsity_recipe, save_sparse_model
    recipe = load_recipe(args.recipe)
    lm = load_model(args.model)
    batches = None
    if getattr(recipe.method, "needs_calibration", True):
        if not args.calib:
            raise DataError(f"recipe {recipe.name!r} needs --calib (a jsonl with a 'text' field)")
        batches = calibration_windows(args.calib, lm.tokenizer, args.samples or recipe.calib_samples,
                                      args.seqlen or recipe.calib_seqlen, args.seed,
                                      getattr(lm.model.config, "vocab_size", None))
    res = run_sparsity_recipe(lm.model, recipe, batches, log=print)
    out = save_sparse_model(lm.model, args.out, lm.tokenizer, res)
    print(res.to_markdown())
    print(f"saved {out}")
    if args.semi_structured:
        ids = batches[0] if batches else torch.randint(0, lm.model.config.vocab_size, (1, 128))
        info = convert_2to4_and_time(lm.model, ids)
        print(json.dumps({k: v for k, v in info.items() if k != "converted"}))
    return 0
