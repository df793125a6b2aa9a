"""Writing the sparse model through the one atomic writer (``fxprune.output``), in the stock
``save_pretrained`` layout.
Also the optional 2:4 semi-structured conversion on CUDA (``torch.sparse.to_sparse_semi_structured``)."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError


def save_sparse_model(model, out_dir: str | Path, tokenizer=None, result=None, *, overwrite: bool = False) -> Path:
    """Save ``model`` (dense tensors with zeros) + tokenizer + ``sparsity_report.{json,md}`` to ``out_dir``
    through the one atomic writer (``fxprune.output.checkpoint_dir``: a new or empty directory, or an
    fxprune checkpoint with ``overwrite``; files fxprune did not write are never removed). Stock
    ``save_pretrained`` layout; a GGUF quantizer marker is hidden while saving."""
    from ..checkpoint import run_environment, write_checkpoint
    from ..output import checkpoint_dir
    out = Path(out_dir)
    try:
        with checkpoint_dir(out, overwrite=overwrite, manifest={"environment": run_environment()}) as tmp:
            write_checkpoint(model, tmp, tokenizer=tokenizer, structure=False)
            if result is not None:
                result.to_json(tmp / "sparsity_report.json")
                (tmp / "sparsity_report.md").write_text(result.to_markdown() + "\n")
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"cannot save sparse model to {str(out)!r}: {type(e).__name__}: {e}") from e
    return out


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
