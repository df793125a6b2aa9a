"""Writing the sparse model through the one atomic writer (``fxprune.output``), in the stock
``save_pretrained`` layout.
Also the optional 2:4 semi-structured conversion on CUDA (``torch.sparse.to_sparse_semi_structured``)."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn



def save_sparse_model(model, out_dir: str | Path, tokenizer=None, result=None, *, overwrite: bool = False) -> Path:
    """Save ``model`` (dense tensors with zeros) + tokenizer + ``sparsity_report.{json,md}`` (from the run
    report ``result``, ``fxprune.report``) to ``out_dir`` in the stock ``save_pretrained`` layout, through
    ``fxprune.checkpoint.save_pruned`` (the one atomic writer: files fxprune did not write are never removed)."""
    import json

    from ..checkpoint import save_pruned
    from ..report import markdown
    files = {} if result is None else {"sparsity_report.json": json.dumps(result, indent=1, default=str),
                                       "sparsity_report.md": markdown(result) + "\n"}
    return save_pruned(model, out_dir, tokenizer, overwrite=overwrite, structure=False, files=files)


def semi_structured_available() -> bool:
    """2:4 kernels need CUDA with compute capability ≥ 8.0."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


@torch.no_grad()
def convert_2to4_and_time(model: nn.Module, example_ids: torch.Tensor, repeats: int = 20) -> dict:
    """Convert every 2:4-sparse linear to ``to_sparse_semi_structured`` (fp16, CUDA) and time a forward
    pass before and after. Returns ``{"skipped": reason}`` where no suitable device is present."""
    if not semi_structured_available():
        return {"skipped": "no CUDA device with compute capability >= 8.0"}
    from torch.sparse import to_sparse_semi_structured

    model = model.half().cuda().eval()
    ids = example_ids.cuda()

    def bench():
        for _ in range(3):
            model(input_ids=ids)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(repeats):
            model(input_ids=ids)
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / repeats

    dense_s = bench()
    converted = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            W = mod.weight
            if W.shape[1] % 4 == 0 and bool((W.reshape(W.shape[0], -1, 4) == 0).sum(-1).ge(2).all()):
                try:
                    mod.weight = nn.Parameter(to_sparse_semi_structured(W), requires_grad=False)
                    converted.append(name)
                except Exception as e:  # shape constraints of the kernels
                    print(f"2:4 conversion skipped for {name}: {e}")
    sparse_s = bench()
    return {"dense_s": dense_s, "sparse_s": sparse_s, "speedup": dense_s / sparse_s, "converted": converted}
