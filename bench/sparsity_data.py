"""Calibration windows exactly as the sparsity benchmark drew them for the 2026-11 tables (kept to
reproduce bench/results/sparsity*.json with ``bench/sparsity.py --legacy-windows``; everything else
uses ``fxprune.data.calibration_windows``)."""
import json
import random
from pathlib import Path

import torch

from fxprune.data import tokenize
from fxprune.errors import DataError


def calibration_windows(path: str | Path, tokenizer, n: int, seqlen: int, seed: int = 0,
                        vocab_size: int | None = None) -> list[torch.Tensor]:
    """``n`` windows of ``seqlen`` tokens: a random document with more than ``seqlen`` tokens and a random
    window in it (GPTQ/SparseGPT style); if too few documents are long enough, windows are cut from the
    concatenation of the shuffled documents instead. Without a tokenizer (tiny models) the UTF-8 bytes
    modulo ``vocab_size`` are the tokens. """
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
        return tokenize(tokenizer, t, add_special_tokens=False)

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


