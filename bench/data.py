"""Temporary data/eval helpers for the sparsity benchmark (to be replaced by the shared calibration/eval
engine). WikiText-2 raw test joined as HF rows, non-overlapping windows, token-level perplexity."""
from __future__ import annotations

import math

import torch

DATA = "/work/shared/data"
WIKI = f"{DATA}/wikitext-2-raw/wiki.test.raw"
C4 = f"{DATA}/c4/c4-train.00000-of-01024.first1000.jsonl"


def wikitext_ids(tokenizer) -> torch.Tensor:
    rows = ["" if l.strip() == "" else l + "\n" for l in open(WIKI).read().split("\n")[:-1]]
    return torch.tensor(tokenizer("\n\n".join(rows), add_special_tokens=False)["input_ids"])


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, L: int = 512, windows: int = 64, batch: int = 4) -> float:
    """exp(sum NLL / count) over the first ``windows`` non-overlapping windows of ``L`` tokens
    (each window predicts its L-1 next tokens)."""
    n = min(windows, ids.numel() // L)
    x = ids[: n * L].view(n, L)
    nll, count = 0.0, 0
    for i in range(0, n, batch):
        xb = x[i:i + batch]
        logits = model(input_ids=xb, use_cache=False).logits[:, :-1].float()
        nll += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), xb[:, 1:].reshape(-1),
                                                       reduction="sum"))
        count += xb[:, 1:].numel()
    return math.exp(nll / count)


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocab 256), for the tiny Mamba trained by ``bench/train_tiny_mamba.py``."""

    vocab_size = 256

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(text.encode())}
